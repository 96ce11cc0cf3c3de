"""The broker's Redis client, for standalone, Sentinel and Cluster (``redis:`` in the config).

- standalone: a blocking pool. redis-py's default pool raises ``MaxConnectionsError`` as soon
  as more commands are in flight than it has connections; a blocking pool makes a command wait
  (up to ``timeout``) for a free connection instead; ``max_connections`` bounds what one
  replica asks of Redis.
- sentinel: the master named ``master_name`` as the sentinels report it, over a
  ``SentinelConnectionPool`` (blocking too): every new connection asks the sentinels where the
  master is, so after a failover the client reconnects to the new master without a restart.
- cluster: ``RedisCluster`` from the seed ``nodes``. Its per-node pools cannot wait for a free
  connection: more than ``max_connections`` commands in flight at one node fail at once with
  ``MaxConnectionsError``, which the service answers 503 with ``Retry-After``.

Credentials come from files only (``password_file``, ``sentinel_password_file``), read here at
start; an unreadable file is a :class:`ConfigError` naming the key. Messages never carry a
password (:func:`redact_url`).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from broker.config import RedisSettings
from broker.errors import ConfigError
from broker.types import Secret

__all__ = ["describe", "read_secret_file", "redact_text", "redact_url", "redis_client"]


def redact_url(url: str) -> str:
    """``url`` without a password (and without query parameters, which may carry one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if parts.username:
            host = f"{parts.username}@{host}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]*@")


def redact_text(text: str) -> str:
    """``text`` (an exception's message) with any URL's password masked."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def describe(r: RedisSettings) -> str:
    """Where Redis is, for messages (never a credential)."""
    if r.mode == "sentinel":
        return f"Redis sentinel master {r.master_name!r} via {', '.join(r.sentinels or [])}"
    if r.mode == "cluster":
        return f"Redis cluster via {', '.join(r.nodes or [])}"
    return f"Redis at {redact_url(r.url or '')}"


def read_secret_file(path: str, key: str) -> Secret:
    """The file's text with one trailing newline stripped; unreadable or empty: ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{key}: {path} is empty")
    return Secret(text)


def _tls(r: RedisSettings) -> dict[str, Any]:
    if not r.tls:
        return {}
    # Certificate and host name both checked, whatever this redis-py's defaults are.
    out: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
    }
    if r.ca_file is not None:
        out["ssl_ca_certs"] = _ca_file(r.ca_file)
    return out


def _ca_file(path: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"redis.ca_file: cannot read {path}")
    return path


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A sentinel pool that waits for a free connection like :class:`BlockingConnectionPool`
    (its ``get_connection`` and ``release``); each new connection asks the sentinels for the
    master (``SentinelConnectionPool``)."""


def redis_client(r: RedisSettings | str) -> Any:
    """A client for ``r`` (``redis.asyncio.Redis`` or ``RedisCluster``; a string is a standalone
    URL); closing it closes its pools. Raises ConfigError for an unreadable credential file."""
    if isinstance(r, str):
        r = RedisSettings(url=r)
    password = read_secret_file(r.password_file, "redis.password_file") if r.password_file else None
    timeout = r.timeout.total_seconds()
    common: dict[str, Any] = {
        "username": r.username,
        "password": password.reveal() if password else None,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if r.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(*_addr(n)) for n in r.nodes or ()],
            max_connections=r.max_connections,
            **common,
            **_tls(r),
        )
    if r.mode == "sentinel":
        spw = (
            read_secret_file(r.sentinel_password_file, "redis.sentinel_password_file")
            if r.sentinel_password_file
            else None
        )
        sentinel_kwargs: dict[str, Any] = {
            "username": r.sentinel_username,
            "password": spw.reveal() if spw else None,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            **_tls(r),
        }
        sentinel = Sentinel([_addr(a) for a in r.sentinels or ()], sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(
            r.master_name or "",
            connection_pool_class=_BlockingSentinelPool,
            max_connections=r.max_connections,
            timeout=timeout,
            db=r.db or 0,
            **common,
            **_tls(r),
        )
    url = r.url or "redis://127.0.0.1:6379/0"
    kwargs: dict[str, Any] = {}
    if r.tls or url.startswith("rediss://"):
        # from_url picks the TLS connection class by the scheme (an ``ssl`` argument is not
        # understood there); certificates are always verified.
        url = "rediss://" + url.removeprefix("rediss://").removeprefix("redis://")
        kwargs["ssl_cert_reqs"] = "required"
        kwargs["ssl_check_hostname"] = True
        if r.ca_file is not None:
            kwargs["ssl_ca_certs"] = _ca_file(r.ca_file)
    if r.db is not None:
        kwargs["db"] = r.db
    if r.username is not None:
        kwargs["username"] = r.username
    if password is not None:
        kwargs["password"] = password.reveal()
    kwargs["socket_connect_timeout"] = timeout
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=r.max_connections,
        timeout=timeout,
        **kwargs,
    )
    return aioredis.Redis.from_pool(pool)
