"""The Redis topologies and the drain as the chart renders them, one ci values file each:
ci/sentinel-values.yaml, ci/cluster-values.yaml, ci/tls-values.yaml (standalone over TLS),
ci/production-values.yaml (standalone, TLS, CA from a ConfigMap, WAIT) and the others."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import ReaperSettings, RedisSettings, settings_from_mapping
from tests.charts.chartkit import CHART, Manifests, helm, render

CI = CHART / "ci"


def loaded(m: Manifests) -> RedisSettings:
    """The redis: block as the broker's own loader reads it from the rendered config."""
    redis = settings_from_mapping(m.broker_config, source="config.yaml").redis
    assert redis is not None
    return redis


def secret_volumes(m: Manifests) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume's source, for the container's Redis mounts."""
    volumes = {v["name"]: v for v in m.pod["volumes"]}
    return {
        mount["mountPath"]: volumes[mount["name"]]
        for mount in m.container["volumeMounts"]
        if mount["name"].startswith("redis")
    }


def redis_mounts(m: Manifests) -> dict[str, dict[str, Any]]:
    return {
        mount["mountPath"]: mount
        for mount in m.container["volumeMounts"]
        if mount["name"].startswith("redis")
    }


def test_sentinel_values_render_the_sentinel_block_and_both_password_files() -> None:
    m = render(CI / "sentinel-values.yaml")
    redis = m.broker_config["redis"]
    assert redis == {
        "mode": "sentinel",
        "sentinels": [
            "redis-sentinel-0.redis-sentinel.redis.svc:26379",
            "redis-sentinel-1.redis-sentinel.redis.svc:26379",
            "redis-sentinel-2.redis-sentinel.redis.svc:26379",
        ],
        "master_name": "jit",
        "db": 1,
        "username": "jit-broker",
        "password_file": "/etc/jit/secrets/redis/password",
        "sentinel_password_file": "/etc/jit/secrets/redis-sentinel/password",
        "tls": False,
        "max_connections": 64,
        "timeout": "5s",
        "wait_replicas": 1,
        "wait_timeout": "100ms",
    }
    assert loaded(m).sentinel_password_file == "/etc/jit/secrets/redis-sentinel/password"
    volumes = secret_volumes(m)
    assert volumes["/etc/jit/secrets/redis"]["secret"] == {
        "secretName": "jit-redis",
        "defaultMode": 0o440,
        "items": [{"key": "redis-password", "path": "password"}],
    }
    assert volumes["/etc/jit/secrets/redis-sentinel"]["secret"] == {
        "secretName": "jit-redis-sentinel",
        "defaultMode": 0o440,
        "items": [{"key": "sentinel-password", "path": "password"}],
    }
    assert all(mount["readOnly"] for mount in redis_mounts(m).values())


def test_cluster_values_render_the_seed_nodes_and_no_database() -> None:
    m = render(CI / "cluster-values.yaml")
    redis = m.broker_config["redis"]
    assert redis["mode"] == "cluster"
    assert redis["nodes"] == [
        f"redis-cluster-{i}.redis-cluster-headless.redis.svc:6379" for i in range(3)
    ]
    assert set(redis) & {"url", "sentinels", "master_name", "db", "sentinel_password_file"} == set()
    assert redis["password_file"] == "/etc/jit/secrets/redis/password"
    assert (redis["max_connections"], redis["timeout"]) == (32, "2s")
    assert loaded(m).nodes == redis["nodes"]
    volumes = secret_volumes(m)
    assert set(volumes) == {"/etc/jit/secrets/redis"}
    assert volumes["/etc/jit/secrets/redis"]["secret"]["items"] == [
        {"key": "password", "path": "password"}
    ]


def test_tls_values_render_rediss_and_the_ca_from_a_secret() -> None:
    m = render(CI / "tls-values.yaml")
    redis = m.broker_config["redis"]
    assert redis["mode"] == "standalone"
    assert redis["url"] == "rediss://redis.example.internal:6380/0"
    assert redis["tls"] is True
    assert redis["ca_file"] == "/etc/jit/redis-ca/ca.crt"
    assert loaded(m).ca_file == "/etc/jit/redis-ca/ca.crt"
    volumes = secret_volumes(m)
    assert volumes["/etc/jit/redis-ca"]["secret"] == {
        "secretName": "jit-redis-ca",
        "defaultMode": 0o440,
        "items": [{"key": "ca.pem", "path": "ca.crt"}],
    }
    assert redis_mounts(m)["/etc/jit/redis-ca"]["readOnly"] is True


def test_standalone_host_and_port_make_the_url_and_tls_its_scheme() -> None:
    plain = render(CI / "minimal-values.yaml").broker_config["redis"]
    assert plain["url"] == "redis://redis.jit.svc:6379/0"
    assert plain["tls"] is False
    assert "password_file" not in plain
    assert "ca_file" not in plain
    prod = render(CI / "production-values.yaml")
    redis = prod.broker_config["redis"]
    assert redis["url"] == "rediss://redis-master.redis.svc:6380/2"
    assert (redis["wait_replicas"], redis["wait_timeout"]) == (1, "200ms")
    assert secret_volumes(prod)["/etc/jit/redis-ca"]["configMap"] == {
        "name": "corporate-ca-bundle",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_no_redis_setting_reaches_the_environment_or_argv() -> None:
    for values in sorted(CI.glob("*-values.yaml")):
        m = render(values)
        for var in m.container.get("env", []):
            assert "REDIS" not in var["name"].upper(), values.name
        assert "redis" not in " ".join(m.container["args"]), values.name


@pytest.mark.parametrize(
    ("values", "ports"),
    [
        ("minimal", [6379]),
        ("production", [6380]),
        ("tls", [6380]),
        ("sentinel", [6379, 26379]),
        ("cluster", [6379]),
    ],
)
def test_network_policy_opens_the_topologys_ports(values: str, ports: list[int]) -> None:
    m = render(CI / f"{values}-values.yaml")
    (rule,) = [
        r
        for r in m.one("NetworkPolicy")["spec"]["egress"]
        if {p["port"] for p in r["ports"]} & {6379, 6380, 26379}
    ]
    assert sorted(p["port"] for p in rule["ports"]) == ports
    assert {p["protocol"] for p in rule["ports"]} == {"TCP"}


def test_network_policy_adds_the_ports_an_operator_names() -> None:
    m = render(CI / "cluster-values.yaml", sets=["networkPolicy.egress.redis.ports={7000,6379}"])
    ports = {p["port"] for r in m.one("NetworkPolicy")["spec"]["egress"] for p in r["ports"]}
    assert {6379, 7000} <= ports


# -- the drain ----------------------------------------------------------------------------------


def drain_of(m: Manifests) -> tuple[int, int, float, float]:
    """preStop sleep, grace period, and the broker's drain_delay and drain_timeout (seconds)."""
    settings = settings_from_mapping(m.broker_config)
    sleep = int(m.container["lifecycle"]["preStop"]["exec"]["command"][1])
    return (
        sleep,
        m.pod["terminationGracePeriodSeconds"],
        settings.shutdown.drain_delay.total_seconds(),
        settings.shutdown.drain_timeout.total_seconds(),
    )


def test_the_grace_period_is_derived_from_the_drain() -> None:
    """preStop sleep + drain_delay + drain_timeout + reaper.issuer_timeout (revocations in
    flight finish) + 5 s (closing)."""
    assert drain_of(render(CI / "minimal-values.yaml")) == (5, 85, 0, 65)
    longer = render(
        CI / "minimal-values.yaml",
        sets=["preStopSleepSeconds=15", "drain.delaySeconds=3", "drain.timeoutSeconds=120"],
    )
    assert drain_of(longer) == (15, 153, 3, 120)


@pytest.mark.parametrize(
    ("issuer_timeout", "grace"),
    [("1m30s", 165), ("1500ms", 77), ("12", 87), ("2m", 195)],
)
def test_the_grace_period_follows_the_reapers_issuer_timeout(
    issuer_timeout: str, grace: int
) -> None:
    m = render(
        CI / "minimal-values.yaml",
        sets=[
            f"config.reaper.issuer_timeout={issuer_timeout}",
            "config.reaper.visibility_timeout=5m",
        ],
    )
    settings = settings_from_mapping(m.broker_config)
    assert math.ceil(settings.reaper.issuer_timeout.total_seconds()) + 5 + 65 + 5 == grace
    assert m.pod["terminationGracePeriodSeconds"] == grace


def test_the_charts_default_issuer_timeout_is_the_brokers() -> None:
    """The chart assumes 10 s when config.reaper.issuer_timeout is not set."""
    assert ReaperSettings().issuer_timeout.total_seconds() == 10


def test_a_grace_period_set_by_hand_is_kept_when_it_covers_the_drain() -> None:
    assert drain_of(render(CI / "production-values.yaml")) == (10, 120, 0, 90)


def test_no_pre_stop_sleep_turns_the_hook_off_and_the_broker_delays_instead() -> None:
    m = render(CI / "minimal-values.yaml", sets=["preStopSleepSeconds=0", "drain.delaySeconds=5"])
    assert "lifecycle" not in m.container
    settings = settings_from_mapping(m.broker_config)
    assert settings.shutdown.drain_delay.total_seconds() == 5
    assert m.pod["terminationGracePeriodSeconds"] == 85


# -- NOTES.txt ----------------------------------------------------------------------------------


def notes(tmp_path: Path, values: Path) -> str:
    """NOTES.txt is not rendered by `helm template`: render it from a copy of the chart."""
    chart = tmp_path / "jit-broker"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    out = helm(
        "template",
        "jit-broker",
        str(chart),
        "--namespace",
        "jit",
        "-f",
        str(values),
        "--show-only",
        "templates/zz-notes.yaml",
    ).stdout
    text: str = yaml.safe_load(out)["data"]["notes"]
    return text


def test_notes_name_the_topology(tmp_path: Path) -> None:
    sentinel = notes(tmp_path / "s", CI / "sentinel-values.yaml")
    assert 'Topology: sentinel, the master "jit" (db 1) named by the sentinels' in sentinel
    assert "\n     redis-sentinel-0.redis-sentinel.redis.svc:26379\n" in sentinel
    assert "sentinel password: jit-redis-sentinel (key sentinel-password)" in sentinel
    cluster = notes(tmp_path / "c", CI / "cluster-values.yaml")
    assert "Topology: cluster, discovered from the seed nodes" in cluster
    assert "redis-cluster-2.redis-cluster-headless.redis.svc:6379" in cluster
    tls = notes(tmp_path / "t", CI / "tls-values.yaml")
    assert "Topology: standalone, TLS, at rediss://redis.example.internal:6380/0" in tls
    assert "redis CA: jit-redis-ca (key ca.pem)" in tls
    assert "terminationGracePeriodSeconds is 85" in tls
