"""The fault suite (issue 9; run as the second pytest step of tests/run.sh, `-m faults`):
replicas killed with -9 during mints, the state Redis restarted under load and restarted empty,
issuer backends refusing and frozen — against real processes: `jit serve` replicas, a private
state redis-server and private backend redis-servers whose ACL users are the credentials of the
`redis` issuer. Figures (lag percentiles, outage answers) are printed for docs/revocation.md;
nothing here asserts a duration beyond a liveness deadline."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import JIT
from tests.e2e.replica_support import (
    RedisServer,
    Replica,
    audit_records,
    free_port,
    leases_in_store,
)
from tests.e2e.serve_support import IdP, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

REAPER = {
    "issuer_timeout": "1s",
    "visibility_timeout": "2s",
    "mint_grace": "2s",
    "poll_interval": "100ms",
    "backoff_base": "200ms",
    "backoff_cap": "2s",
    "health_interval": "1s",
    "health_retry_interval": "300ms",
    "state_check_interval": "200ms",
}
USER_PREFIX = "jitf_"


def policy(caches: list[str]) -> str:
    grants = "".join(
        f"""
  - name: {name}-read
    issuer: {name}
    resource: "redis://{name}/0#orders"
    actions: [read]
    max_ttl: 10m
    approval: none
"""
        for name in caches
    )
    return f"""
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {{glob: "repo:acme/*"}}
permissions: [introspect]
grants:
  - name: deploy-read
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
{grants}"""


def cache_issuer(name: str, backend: RedisServer) -> dict[str, Any]:
    return {
        "type": "redis",
        "config": {
            "url": backend.url,
            "user_prefix": USER_PREFIX,
            "resources": {
                f"redis://{name}/0#orders": {
                    "keys": ["orders:*"],
                    "actions": {"read": ["+@read", "+ping"]},
                }
            },
        },
    }


class Farm:
    """Private servers and replicas, all stopped at the end of the test."""

    def __init__(self, tmp: Path, idp: IdP) -> None:
        self.tmp = tmp
        self.idp = idp
        self.ports: set[int] = set()
        self.stack = ExitStack()
        self.prefix = f"jit-faults-{uuid.uuid4().hex[:8]}"
        self.config: Path | None = None

    def redis(self, name: str, **kw: Any) -> RedisServer:
        server = RedisServer(self.tmp / name, free_port(self.ports), **kw).start()
        self.stack.callback(server.stop)
        return server

    def configure(self, state: RedisServer, caches: dict[str, RedisServer]) -> Path:
        issuers: dict[str, Any] = {
            "jwt": {"type": "jwt", "config": {"keys_dir": str(self.tmp / "keys")}}
        }
        issuers.update({n: cache_issuer(n, b) for n, b in caches.items()})
        self.config = write_config(
            self.tmp,
            self.idp,
            free_port(self.ports),
            self.prefix,
            redis_url=state.url,
            issuers=issuers,
            reaper=REAPER,
        )
        (self.tmp / "policies" / "platform.yaml").write_text(policy(list(caches)))
        return self.config

    def replica(self, name: str, wait: bool = True) -> Replica:
        assert self.config is not None
        r = Replica(self.config, free_port(self.ports), name)
        self.stack.callback(r.close)
        return r.start(wait=wait)

    def jit(self, *args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
        return subprocess.run(
            [JIT, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def farm(tmp_path: Path, idp: IdP) -> Iterator[Farm]:
    f = Farm(tmp_path, idp)
    with f.stack:
        yield f


def mint(url: str, token: str, issuer: str, ttl: str = "3s", timeout: float = 10) -> httpx.Response:
    resource = "https://orders.internal" if issuer == "jwt" else f"redis://{issuer}/0#orders"
    return httpx.post(
        f"{url}/v1/credentials",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "task": {"id": f"t-{uuid.uuid4().hex[:12]}", "purpose": "faults"},
            "issuer": issuer,
            "resource": resource,
            "actions": ["read"],
            "ttl": ttl,
        },
        timeout=timeout,
    )


class Load:
    """``threads`` clients minting in a loop against ``urls`` (round robin) until stopped:
    the lease ids a client received a credential for, and every answer's status."""

    def __init__(self, urls: list[str], token: str, issuer: str, threads: int, ttl: str) -> None:
        self.urls, self.token, self.issuer, self.ttl = urls, token, issuer, ttl
        self.got: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.unavailable_without_retry_after = 0
        self.transport_errors = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            n += 1
            try:
                r = mint(self.urls[n % len(self.urls)], self.token, self.issuer, self.ttl)
            except httpx.HTTPError:
                self.transport_errors += 1
                time.sleep(0.05)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 201:
                self.got.append(r.json()["lease_id"])
            elif r.status_code == 503:
                if not r.headers.get("retry-after"):
                    self.unavailable_without_retry_after += 1
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def until(condition: Callable[[], bool], what: str, seconds: float = 45) -> float:
    """Liveness only: wait until ``condition()`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"timed out waiting for: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def percentiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"n={len(values)} p50={statistics.median(ordered):.0f}ms p99={p99:.0f}ms "
        f"max={ordered[-1]:.0f}ms"
    )


def final(states: dict[str, str]) -> bool:
    return all(s in "RF" for s in states.values())


def test_kill_9_a_replica_during_mints(farm: Farm) -> None:
    state = farm.redis("state")
    backend = farm.redis("backend")
    farm.configure(state, {"cache": backend})
    a = farm.replica("a")
    farm.replica("b")
    token = farm.idp.token("repo:acme/app")
    with Load([a.url], token, "cache", threads=6, ttl="4s") as load:
        until(lambda: len(load.got) >= 20, "mints under way")
        # Hold the backend for a moment so that mints are in flight (their leases written
        # ahead, `minting`) when A dies; the ACL SETUSERs already sent still run afterwards:
        # users that no activation will ever record, found by B through the lease ids.
        backend.signal(signal.SIGSTOP)
        time.sleep(0.3)
        a.kill9()
        backend.signal(signal.SIGCONT)
    leases = leases_in_store(state, farm.prefix)
    minting = sum(1 for s in leases.values() if s == "m")
    took = until(
        lambda: final(leases_in_store(state, farm.prefix)) and not backend.users(USER_PREFIX),
        "B reaps every lease of A and no ACL user is left",
    )
    leases = leases_in_store(state, farm.prefix)
    assert set(load.got) <= set(leases)
    # Each lease revoked exactly once: one ACL DELUSER per lease (at most one per lease when a
    # mint died before its user existed — that DELUSER is still sent, by name).
    deletes = backend.deluser_calls()
    assert deletes == len(leases), (deletes, len(leases))
    records = audit_records(farm.config, state.url, farm.prefix)  # the chain verifies
    ends: Counter[str] = Counter(
        r["lease_id"] for r in records if r["type"] in ("lease.revoked", "lease.mint_cleaned")
    )
    assert set(ends) == set(leases)
    assert set(ends.values()) == {1}
    minted = {r["lease_id"] for r in records if r["type"] == "lease.minted"}
    assert set(load.got) <= minted  # no audit gap for a credential a client received
    print(
        f"\nkill -9 during mints: {len(leases)} leases ({len(load.got)} delivered, "
        f"{minting} still minting at the kill); all revoked by B {took:.1f}s later; "
        f"ACL DELUSER calls {deletes}; orphans 0"
    )


def test_the_state_redis_restarts_with_aof_under_load(farm: Farm) -> None:
    state = farm.redis("state", aof=True)
    farm.configure(state, {})
    a, b = farm.replica("a"), farm.replica("b")
    token = farm.idp.token("repo:acme/app")
    with Load([a.url, b.url], token, "jwt", threads=6, ttl="10m") as load:
        until(lambda: len(load.got) >= 30, "mints under way")
        state.stop()  # SHUTDOWN: the AOF is written out (appendfsync everysec)
        before = sum(load.statuses.values())
        until(lambda: load.statuses[503] >= 5, "503s during the outage")
        # Every other route that needs the state answers 503 with Retry-After too, never 500.
        auth = {"Authorization": f"Bearer {token}"}
        lease = load.got[0]
        for answer in (
            httpx.get(f"{a.url}/v1/leases", headers=auth),
            httpx.get(f"{b.url}/v1/leases/{lease}", headers=auth),
            httpx.delete(f"{a.url}/v1/leases/{lease}", headers=auth),
            httpx.post(f"{b.url}/v1/tasks/some-task/complete", headers=auth),
            httpx.get(f"{a.url}/readyz"),
        ):
            assert answer.status_code == 503, (answer.request.url, answer.text)
            if "readyz" not in str(answer.request.url):
                assert answer.headers["retry-after"], answer.request.url
        state.start()
        until(lambda: len(load.got) >= 60 and load.statuses[201] > before, "mints again")
    for r in (a, b):
        r.wait_ready()
    leases = leases_in_store(state, farm.prefix)
    lost = set(load.got) - set(leases)
    assert lost == set(), f"{len(lost)} leases lost that a client had a credential for"
    assert load.statuses[500] == 0
    assert set(load.statuses) <= {201, 503}, load.statuses
    assert load.unavailable_without_retry_after == 0
    print(
        f"\nstate Redis restart under load: {len(load.got)} credentials delivered, 0 lost; "
        f"answers {dict(load.statuses)}; transport errors {load.transport_errors}"
    )


def jwt_lags(records: list[dict[str, Any]], ids: set[str]) -> list[float]:
    return [
        float(r["detail"]["lag_ms"])
        for r in records
        if r["type"] == "lease.revoked" and r["lease_id"] in ids and "lag_ms" in r["detail"]
    ]


def test_backends_refusing_and_frozen_hold_back_no_other_issuer(farm: Farm) -> None:
    state = farm.redis("state")
    refusing = farm.redis("refusing", acl=True)
    frozen = farm.redis("frozen")
    farm.configure(state, {"refusing": refusing, "frozen": frozen})
    a, b = farm.replica("a"), farm.replica("b")
    token = farm.idp.token("repo:acme/app")
    urls = [a.url, b.url]

    def mint_many(issuer: str, n: int, ttl: str) -> set[str]:
        out = set()
        for i in range(n):
            r = mint(urls[i % 2], token, issuer, ttl)
            assert r.status_code == 201, r.text
            out.add(r.json()["lease_id"])
        return out

    def revoked(ids: set[str]) -> bool:
        states = leases_in_store(state, farm.prefix)
        return all(states.get(i) == "R" for i in ids)

    before = mint_many("jwt", 40, "2s")
    until(lambda: revoked(before), "the jwt leases revoked (healthy backends)")
    # Due a few seconds from now, when both backends are out: none may be revoked before the
    # ACL SAVE below, or the restarted backend would bring back a user already deleted.
    stuck = mint_many("refusing", 20, "6s") | mint_many("frozen", 20, "6s")
    at_save = leases_in_store(state, farm.prefix)
    assert {at_save[i] for i in stuck} == {"a"}, "minting took longer than the leases' TTL"
    refusing.client().acl_save()  # its users survive its restart (an outage, not a reset)
    refusing.stop()
    frozen.signal(signal.SIGSTOP)
    during = mint_many("jwt", 40, "2s")
    until(lambda: revoked(during), "the jwt leases revoked while two backends are out")
    assert refusing.proc is not None
    assert refusing.proc.poll() is not None  # still out, and the other one still frozen
    c = farm.replica("c")  # a replica starts meanwhile
    ready = httpx.get(f"{c.url}/readyz").json()["checks"]
    assert ready["issuer:jwt"] == "ok"
    # The out backends' leases fall due and their revocations fail meanwhile.
    until(
        lambda: {leases_in_store(state, farm.prefix)[i] for i in stuck} == {"r"},
        "every lease of the two backends tried while they are out",
    )
    refusing.start()
    frozen.signal(signal.SIGCONT)
    recovered = until(
        lambda: (
            revoked(stuck) and not refusing.users(USER_PREFIX) and not frozen.users(USER_PREFIX)
        ),
        "every credential of the two backends revoked after recovery",
    )
    records = audit_records(farm.config, state.url, farm.prefix)
    print(
        f"\njwt revocation lag, backends healthy: {percentiles(jwt_lags(records, before))}; "
        f"one refusing and one frozen: {percentiles(jwt_lags(records, during))}; "
        f"their 40 credentials all revoked {recovered:.1f}s after recovery; "
        f"replica c started meanwhile: {ready}"
    )


def test_the_state_redis_restarted_empty_stops_every_replica_until_accepted(farm: Farm) -> None:
    state = farm.redis("state")
    backend = farm.redis("backend")
    farm.configure(state, {"cache": backend})
    a, b = farm.replica("a"), farm.replica("b")
    token = farm.idp.token("repo:acme/app")
    for url in (a.url, b.url):
        assert mint(url, token, "cache", "5m").status_code == 201
    assert len(backend.users(USER_PREFIX)) == 2
    state.kill()
    state.start()  # no persistence: it comes back empty
    for r in (a, b):
        until(lambda r=r: httpx.get(f"{r.url}/readyz").status_code == 503, f"{r.name} notices")
        refused = mint(r.url, token, "jwt")
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("state-lost")
        assert refused.headers["retry-after"]
    out = farm.jit("reconcile")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["revoked"] == {"cache": 2}, out.stdout
    assert backend.users(USER_PREFIX) == []  # the orphans are gone
    accepted = farm.jit("state", "accept")
    assert accepted.returncode == 0, accepted.stderr
    for r in (a, b):
        until(lambda r=r: httpx.get(f"{r.url}/readyz").status_code == 200, f"{r.name} serves")
        assert mint(r.url, token, "jwt").status_code == 201
