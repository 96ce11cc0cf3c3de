"""`jit serve` on each Redis topology (tests/redisfarm.py), configured with a ``redis:`` block
and credentials from files: mint, introspect, complete the task, TTL reaping, an approval, and
the audit chain exported (``jit audit export --config``) and verified. On Sentinel, the master
is SIGKILLed during a mint load: the broker follows the failover without a restart, clients
see only 201s and 503s with Retry-After, and with ``wait_replicas: 1`` every lease a client
received a credential for is still in Redis afterwards. Moving from standalone to Cluster the
way docs/deploy.md says (stop, copy the keys under the prefix, start on the new block) keeps
every lease, its revocation and the audit chain."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from broker.config import RedisSettings
from tests.e2e.conftest import JIT, free_port
from tests.e2e.serve_support import IdP, write_config
from tests.redisfarm import CLUSTER, SENTINEL_MASTER, SENTINEL_REPLICA, STANDALONE, Farm

pytestmark = pytest.mark.e2e

POLICY = """
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {glob: "repo:acme/*"}
permissions: [introspect]
grants:
  - name: orders
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
  - name: prod-deploy
    issuer: jwt
    resource: https://prod.internal
    actions: [deploy]
    max_ttl: 30m
    approval:
      approvers: [alice]
"""


def redis_block(settings: RedisSettings) -> dict[str, Any]:
    block = {k: v for k, v in msgspec.to_builtins(settings).items() if v is not None}
    for key in ("timeout", "wait_timeout"):
        block[key] = f"{int(getattr(settings, key).total_seconds() * 1000)}ms"
    return block


@contextmanager
def jit_serve(
    tmp: Path,
    idp: IdP,
    settings: RedisSettings,
    farm: Farm,
    prefix: str | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, Path]]:
    port = port or free_port()
    prefix = prefix or f"jittest-topo-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp,
        idp,
        port,
        prefix,
        redis=redis_block(settings),
        approvals={"people": {"alice": {"identities": ["ci:human-alice"]}}},
        reaper={"poll_interval": "100ms"},
    )
    (tmp / "policies" / "platform.yaml").write_text(POLICY)
    log = tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [JIT, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield url, config
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = log.read_text()
    assert "Traceback" not in text, text
    for secret in (farm.password, farm.sentinel_password, farm.admin_password):
        assert secret not in text


def exported_chain(tmp: Path, config: Path) -> list[str]:
    """The audit chain exported with the broker's config (``jit audit export --config``),
    verified with ``jit audit verify``; the records' types in order."""
    chain = tmp / "chain.jsonl"
    subprocess.run(
        [JIT, "audit", "export", "--config", str(config), "--out", str(chain)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    ok = subprocess.run(
        [JIT, "audit", "verify", str(chain), "--key", str(tmp / "audit-jwks.json")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    return [json.loads(line)["type"] for line in chain.read_text().splitlines()]


def until(what: str, ok: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ok()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["standalone", "sentinel", "cluster"])
def test_jit_serve_runs_the_whole_lifecycle_on_each_topology(
    tmp_path: Path, idp: IdP, redis_farm: Farm, mode: str
) -> None:
    settings = redis_farm.settings(mode)
    with jit_serve(tmp_path, idp, settings, redis_farm) as (url, config):
        wl = {"Authorization": f"Bearer {idp.token('repo:acme/app')}"}
        human = {"Authorization": f"Bearer {idp.token('human-alice')}"}
        body = {
            "task": {"id": "deploy-1"},
            "issuer": "jwt",
            "resource": "https://orders.internal",
            "actions": ["read"],
        }
        minted = httpx.post(f"{url}/v1/credentials", json=body, headers=wl)
        assert minted.status_code == 201, minted.text
        token = minted.json()["credential"]["secret"]

        def active(tok: str) -> bool:
            r = httpx.post(f"{url}/oauth/introspect", data={"token": tok}, headers=wl)
            assert r.status_code == 200, r.text
            return bool(r.json()["active"])

        assert active(token)
        done = httpx.post(f"{url}/v1/tasks/deploy-1/complete", headers=wl)
        assert done.status_code == 200, done.text
        assert not active(token)

        # TTL reaping: a 1 s credential is revoked by the reaper (real time).
        short = {**body, "task": {"id": "deploy-2"}, "ttl": 1}
        r = httpx.post(f"{url}/v1/credentials", json=short, headers=wl)
        assert r.status_code == 201, r.text
        lease = r.json()["lease_id"]

        def reaped() -> bool:
            got = httpx.get(f"{url}/v1/leases/{lease}", headers=wl).json()
            return bool(got["state"] == "revoked" and got["revoke_trigger"] == "ttl")

        until("the reaper revokes the lease at its TTL", reaped)

        # An approval: pending, approved by alice, then the credential.
        ask = {**body, "task": {"id": "deploy-3"}, "resource": "https://prod.internal"}
        ask["actions"] = ["deploy"]
        pending = httpx.post(f"{url}/v1/credentials", json=ask, headers=wl)
        assert pending.status_code == 202, pending.text
        aid = pending.json()["approval_id"]
        approved = httpx.post(f"{url}/v1/approvals/{aid}/approve", json={}, headers=human)
        assert approved.status_code == 200, approved.text
        state = httpx.get(f"{url}/v1/approvals/{aid}", headers=wl).json()
        assert state["credential"] is not None
        assert active(state["credential"]["credential"]["secret"])

        # The audit chain, exported with the same config, verifies.
        types = exported_chain(tmp_path, config)
        assert types.count("lease.minted") == 3
        assert types.count("lease.revoked") >= 2


def test_a_sentinel_failover_under_mint_load_loses_no_credential_and_never_answers_500(
    tmp_path: Path, idp: IdP, redis_farm: Farm
) -> None:
    settings = redis_farm.settings(
        "sentinel", wait_replicas=1, wait_timeout=timedelta(milliseconds=200)
    )
    with jit_serve(tmp_path, idp, settings, redis_farm) as (url, _):
        wl = {"Authorization": f"Bearer {idp.token('repo:acme/app')}"}
        stop = threading.Event()
        results: list[tuple[float, int, str | None, str | None]] = []  # t, status, after, lease
        lock = threading.Lock()

        def client(n: int) -> None:
            i = 0
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    i += 1
                    body = {
                        "task": {"id": f"load-{n}-{i}"},
                        "issuer": "jwt",
                        "resource": "https://orders.internal",
                        "actions": ["read"],
                    }
                    r = http.post(f"{url}/v1/credentials", json=body, headers=wl)
                    lease = r.json().get("lease_id") if r.status_code == 201 else None
                    with lock:
                        results.append(
                            (time.monotonic(), r.status_code, r.headers.get("retry-after"), lease)
                        )

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        until("mints before the failover", lambda: len(results) > 20)
        master = redis_farm.sentinel_master()
        replica = SENTINEL_REPLICA if master == SENTINEL_MASTER else SENTINEL_MASTER
        killed_at = time.monotonic()
        redis_farm.kill(master)
        # The sentinels promote the replica; the killed node comes back (as an orchestrator
        # would restart it) as a replica of the new master, so WAIT 1 can be answered again.
        until("the sentinels promote the replica", lambda: redis_farm.sentinel_master() == replica)
        redis_farm.restart(master, replicaof=replica)
        time.sleep(max(0.0, 8 - (time.monotonic() - started)))  # the load runs ~8 s
        stop.set()
        for t in threads:
            t.join(timeout=60)
        redis_farm.sentinel_ready()

        statuses = sorted({status for _, status, _, _ in results})
        assert set(statuses) <= {201, 503}, statuses
        assert all(after for _, status, after, _ in results if status == 503)
        granted = [lease for _, status, _, lease in results if status == 201]
        after_kill = [s for t, s, _, _ in results if t > killed_at]
        assert 201 in after_kill  # the broker follows the new master without a restart
        lost = []
        with httpx.Client(timeout=30) as http:
            for lease in granted:
                got = http.get(f"{url}/v1/leases/{lease}", headers=wl)
                if got.status_code != 200 or got.json()["state"] != "active":
                    lost.append((lease, got.status_code, got.text[:200]))
        unavailable = [t for t, s, _, _ in results if s == 503]
        window = (max(unavailable) - min(unavailable)) if unavailable else 0.0
        print(
            f"failover: {len(granted)} credentials, {len(unavailable)} 503s over "
            f"{window:.2f} s, lost {len(lost)}"
        )
        assert lost == []


def test_moving_from_standalone_to_cluster_keeps_leases_revocation_and_the_chain(
    tmp_path: Path, idp: IdP, redis_farm: Farm
) -> None:
    """docs/deploy.md "Moving between topologies": every replica stopped, the keys under the
    prefix copied (DUMP and RESTORE with their TTL), then `jit serve` on the cluster."""
    from redis.cluster import RedisCluster

    prefix = f"jittest-move-{uuid.uuid4().hex[:8]}"
    wl = {"Authorization": f"Bearer {idp.token('repo:acme/app')}"}
    body = {"issuer": "jwt", "resource": "https://orders.internal", "actions": ["read"]}
    port = free_port()  # the same public URL (the tokens' issuer) before and after the move
    with jit_serve(tmp_path, idp, redis_farm.settings("standalone"), redis_farm, prefix, port) as (
        url,
        _,
    ):
        long = httpx.post(
            f"{url}/v1/credentials", json={**body, "task": {"id": "move-1"}}, headers=wl
        )
        assert long.status_code == 201, long.text
        short = httpx.post(
            f"{url}/v1/credentials", json={**body, "task": {"id": "move-2"}, "ttl": 4}, headers=wl
        )
        assert short.status_code == 201, short.text
    token, short_lease = long.json()["credential"]["secret"], short.json()["lease_id"]

    cluster = redis_farm.settings("cluster")  # started by the farm on first use
    source = redis_farm.admin(STANDALONE)
    target = RedisCluster(
        host="127.0.0.1", port=CLUSTER[0], password=redis_farm.admin_password, socket_timeout=5
    )
    copied = 0
    try:
        for key in source.scan_iter(match=f"{prefix}:*", count=1000):
            dump, ttl = source.dump(key), source.pttl(key)
            assert isinstance(dump, bytes)
            target.restore(key, max(int(ttl), 0), dump, replace=True)
            copied += 1
    finally:
        source.close()
        target.close()
    assert copied > 0

    with jit_serve(tmp_path, idp, cluster, redis_farm, prefix, port) as (url, config):
        # Ready at once: the {epoch} key came with the data, so the state guard accepts it.
        def active(tok: str) -> bool:
            r = httpx.post(f"{url}/oauth/introspect", data={"token": tok}, headers=wl)
            assert r.status_code == 200, r.text
            return bool(r.json()["active"])

        lease = httpx.get(f"{url}/v1/leases/{long.json()['lease_id']}", headers=wl)
        assert lease.json()["state"] == "active", lease.text
        assert active(token)

        def reaped() -> bool:
            got = httpx.get(f"{url}/v1/leases/{short_lease}", headers=wl).json()
            return bool(got["state"] == "revoked" and got["revoke_trigger"] == "ttl")

        until("the cluster's reaper revokes the copied short lease at its TTL", reaped)
        done = httpx.post(f"{url}/v1/tasks/move-1/complete", headers=wl)
        assert done.status_code == 200, done.text
        assert not active(token)

        types = exported_chain(tmp_path, config)
        assert types.count("lease.minted") == 2  # both minted before the move
        assert types.count("lease.revoked") == 2  # both revoked after it
