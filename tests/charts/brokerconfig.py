"""The rendered config file, read by the broker's own loader.

The chart renders the broker's ``redis:`` block (mode standalone, sentinel or cluster). Where
broker/config.py already has that block, the broker's loader reads the whole file. Until it has
(it lands with the Redis topologies, branch redis-topo), ``redis:`` is checked here against the
agreed shape instead (:class:`RedisShape`: the same keys, types and mode rules) and the rest of
the file goes through the broker's loader. :data:`BROKER_HAS_REDIS` says which; the smoke tests,
which start the real broker, need the real block and skip without it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import msgspec

from broker.clock import parse_duration
from broker.config import Settings, settings_from_mapping

BROKER_HAS_REDIS = "redis" in Settings.__struct_fields__


class RedisShape(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``redis:`` block as agreed with branch redis-topo."""

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    url: str | None = None
    sentinels: list[str] = msgspec.field(default_factory=list)
    master_name: str | None = None
    nodes: list[str] = msgspec.field(default_factory=list)
    db: int = 0
    username: str | None = None
    password_file: str | None = None
    sentinel_username: str | None = None
    sentinel_password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    max_connections: int = 64
    timeout: str | float = "5s"
    wait_replicas: int = 0
    wait_timeout: str | float = "100ms"


def check_redis_shape(data: Any) -> RedisShape:
    """The block as the broker will read it; ValueError (naming the key) if it would refuse it."""
    r = msgspec.convert(data, RedisShape)
    problems: list[str] = []
    if r.max_connections < 1 or r.wait_replicas < 0 or r.db < 0:
        problems.append("max_connections >= 1, wait_replicas >= 0, db >= 0")
    if parse_duration(r.timeout) <= timedelta(0):
        problems.append("timeout must be positive")
    parse_duration(r.wait_timeout)
    seeds = {"sentinels": r.sentinels, "master_name": r.master_name, "nodes": r.nodes}
    if r.mode == "standalone":
        url = r.url or ""
        if not url.startswith(("redis://", "rediss://")) or "@" in url:
            problems.append(f"url {url!r}: redis:// or rediss://, no user or password")
        if r.tls != url.startswith("rediss://"):
            problems.append("tls must match the url's scheme")
        problems += [f"{k} is not for standalone" for k, v in seeds.items() if v]
    elif r.mode == "sentinel":
        if not (r.sentinels and r.master_name):
            problems.append("sentinel needs sentinels and master_name")
        if r.url or r.nodes:
            problems.append("url and nodes are not for sentinel")
    else:
        if not r.nodes or r.db != 0:
            problems.append("cluster needs nodes, and db 0")
        if r.url or r.sentinels or r.master_name:
            problems.append("url, sentinels and master_name are not for cluster")
    if r.mode != "sentinel" and (r.sentinel_username or r.sentinel_password_file):
        problems.append("sentinel_* keys are for sentinel")
    for host_port in r.sentinels + r.nodes:
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            problems.append(f"{host_port!r} is not host:port")
    if problems:
        raise ValueError(f"redis: {'; '.join(problems)}")
    return r


def load(config: dict[str, Any]) -> Settings:
    """The broker's settings from a rendered config (ConfigError if the broker refuses it)."""
    if BROKER_HAS_REDIS:
        return settings_from_mapping(config, source="config.yaml")
    check_redis_shape(config["redis"])
    rest = {k: v for k, v in config.items() if k != "redis"}
    return settings_from_mapping(rest, source="config.yaml")
