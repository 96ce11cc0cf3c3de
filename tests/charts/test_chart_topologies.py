"""The chart on Redis Sentinel, Redis Cluster and a TLS Redis, for real: ci/sentinel-values.yaml,
ci/cluster-values.yaml and ci/tls-values.yaml rendered with their Redis addresses pointed at real
servers on loopback, the pod laid out as the kubelet would (the Redis password, the sentinels'
own and the Redis CA as mounted files), and the exact rendered `jit serve` started until its
probes pass; then it issues a credential, whose lease is in that Redis, and stops on SIGTERM
within the grace period.

The servers are tests/charts/redis_topologies.py's, on this test's own ports (7300-7315), one
set for the module. (tests/redisfarm.py, the broker's session farm, uses ports 7100-7139 and
has no TLS server: sharing it would save the ~3 s of one cluster's start in CI.) Keys are
written under a prefix of this test's own and deleted after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from tests.charts import redis_topologies as topo
from tests.charts import tools
from tests.charts.chartkit import CHART, expand_env, lay_out_pod, render
from tests.charts.test_chart_smoke import (
    BIN,
    create_secrets,
    get,
    idp,  # noqa: F401  (a fixture)
    jit_cli,
    wait_for,
)
from tests.e2e.conftest import free_port
from tests.e2e.serve_support import IdP

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topo.Farm]:
    with topo.farm(tmp_path_factory.mktemp("redis")) as f:
        f.start_sentinel()
        f.start_cluster()
        f.start_tls()
        yield f


@dataclass
class Topology:
    """One Redis to run the chart on: the values that point the ci file at it (everything else
    is the ci file's), the secrets' contents, and a client for each database to look at."""

    values: dict[str, Any]
    password: str
    sentinel_password: str | None
    ca: bytes | None
    clients: Any  # db -> list of redis.Redis / RedisCluster clients

    def keys(self, prefix: str, db: int) -> list[bytes]:
        found: list[bytes] = []
        for c in self.clients(db):
            found += list(c.scan_iter(match=f"{prefix}:*"))
        return found

    def delete(self, prefix: str, db: int) -> None:
        for c in self.clients(db):
            for key in c.scan_iter(match=f"{prefix}:*"):
                c.unlink(key)


def topology(mode: str, farm: topo.Farm) -> Topology:
    if mode == "tls":
        return Topology(
            values={"url": f"rediss://127.0.0.1:{topo.TLS}/0", "username": topo.ACL_USER},
            password=farm.password,
            sentinel_password=None,
            ca=farm.ca_file.read_bytes(),
            clients=lambda db: [farm.tls_client(db)],
        )
    if mode == "sentinel":
        return Topology(
            values={
                "sentinels": [f"127.0.0.1:{p}" for p in topo.SENTINELS],
                "masterName": topo.MASTER_NAME,
                "username": topo.ACL_USER,
            },
            password=farm.password,
            sentinel_password=farm.sentinel_password,
            ca=None,
            clients=lambda db: [farm.client(topo.SENTINEL_MASTER, db=db)],
        )
    return Topology(
        values={
            "nodes": [f"127.0.0.1:{p}" for p in topo.CLUSTER],
            "username": topo.ACL_USER,
        },
        password=farm.password,
        sentinel_password=None,
        ca=None,
        clients=lambda db: [
            RedisCluster(
                startup_nodes=[ClusterNode("127.0.0.1", p) for p in topo.CLUSTER],
                password=farm.password,
            )
        ],
    )


@pytest.mark.parametrize("mode", ["sentinel", "cluster", "tls"])
def test_the_rendered_pod_runs_on_this_topology(
    mode: str,
    farm: topo.Farm,
    idp: IdP,  # noqa: F811
    tmp_path: Path,
) -> None:
    here_redis = topology(mode, farm)
    tools.ensure()
    values = CHART / "ci" / f"{mode}-values.yaml"
    ci = yaml.safe_load(values.read_text())
    port = free_port()
    prefix = f"jittest-chart-{mode}-{uuid.uuid4().hex[:8]}"
    here = {
        "containerPort": port,
        "config": {
            "public_url": f"http://127.0.0.1:{port}",
            "key_prefix": prefix,
            "identity": [
                {
                    "name": "github",
                    "issuer": idp.issuer,
                    "audiences": ["jit-broker"],
                    "algorithms": ["ES256"],
                }
            ],
        },
        "redis": here_redis.values,
    }
    override = tmp_path / "here-values.yaml"
    override.write_text(yaml.safe_dump(here))
    manifests = render(values, override)
    redis_config = manifests.broker_config["redis"]
    assert redis_config["mode"] == {"tls": "standalone"}.get(mode, mode)

    # The Secrets: docs/deploy.md's commands, then the farm's passwords under the keys and
    # names the ci file gives (what the operator's Secrets would hold).
    secret_objects = create_secrets(tmp_path)
    r = ci["redis"]
    secret_objects[r["existingSecret"]] = {
        r.get("passwordKey", "redis-password"): here_redis.password.encode() + b"\n"
    }
    if here_redis.ca is not None:  # the CA that signed the server's certificate
        ca = r["tls"]["ca"]
        secret_objects[ca["existingSecret"]] = {ca["key"]: here_redis.ca}
    if here_redis.sentinel_password is not None:
        auth = r["sentinelAuth"]
        secret_objects[auth["existingSecret"]] = {
            auth.get("passwordKey", "sentinel-password"): here_redis.sentinel_password.encode()
        }
    pod = lay_out_pod(manifests, tmp_path / "pod", secret_objects)
    config_file = pod.mounts["/etc/jit/config.yaml"]
    config_file.write_text(pod.local(config_file.read_text()))
    password_file = Path(pod.local(redis_config["password_file"]))
    assert password_file.read_text().strip() == here_redis.password
    assert password_file.stat().st_mode & 0o777 == 0o440
    if mode == "sentinel":
        sentinel_file = Path(pod.local(redis_config["sentinel_password_file"]))
        assert sentinel_file.read_text() == here_redis.sentinel_password
    container = manifests.container
    env = expand_env(container.get("env", []), secret_objects)
    argv = [str(BIN / "jit"), *(pod.local(a) for a in container["args"])]
    assert argv[1:] == ["serve", "--config", str(config_file)]

    log = tmp_path / "broker.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            argv,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env, "JIT_HOST": "127.0.0.1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    db = int(redis_config.get("db", 0))
    try:
        probes = {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
        wait_for("the startup probe", lambda: get(url + probes["startupProbe"]) == 200, proc)
        wait_for("readiness", lambda: get(url + probes["readinessProbe"]) == 200, proc)

        identity = idp.token("repo:acme/orders", repository_id="123456")
        jit_cli(
            url,
            identity,
            "request",
            "--resource",
            "https://orders.internal",
            "--action",
            "read",
            "--task",
            f"{mode}-1",
        )
        # The lease lives in this topology's Redis (on the master Sentinel names, or spread
        # over the cluster's masters), under the configured prefix, in the database the values
        # name (sentinel ci: 1), not in another.
        assert here_redis.keys(prefix, db)
        if mode == "sentinel":
            assert db == 1
            assert not here_redis.keys(prefix, 0)
        # The broker talks to Redis as the ACL user of the values.
        (first,) = here_redis.clients(0)[:1]
        users = {c.get("user") for c in first.client_list()}
        assert here_redis.values["username"] in users

        proc.send_signal(signal.SIGTERM)
        grace = manifests.pod["terminationGracePeriodSeconds"]
        assert proc.wait(timeout=grace) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        output = log.read_text()
        here_redis.delete(prefix, db)
    assert "Traceback" not in output, output
    assert here_redis.password not in output
    if here_redis.sentinel_password:
        assert here_redis.sentinel_password not in output


def test_redis_answers_only_with_the_passwords_and_over_tls_only_with_the_ca(
    farm: topo.Farm,
) -> None:
    """The smoke test above proves the mounted files work only if Redis wants them."""
    once = Retry(NoBackoff(), 0)  # an authentication error is not retried
    for port in (topo.SENTINEL_MASTER, topo.CLUSTER[0]):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username=topo.ACL_USER, password="x", retry=once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=topo.SENTINELS[0], password="x", retry=once).ping()
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis(port=topo.TLS, password=farm.password, ssl=True, retry=once).ping()
