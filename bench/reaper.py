"""Reaper lag and start-up cost, on the real Redis with real time.

    .venv/bin/python bench/reaper.py [--leases 5000] [--spread 5] [--replicas 2] [--live 100000]
    .venv/bin/python bench/reaper.py --processes --leases 100000 --spread 60 [--port 19030]

1. Lag: issues N leases (FakeIssuer backend, so the issuer costs ~nothing and what is measured is
   the broker) whose TTLs end spread over ``--spread`` seconds, runs ``--replicas`` reapers
   (separate Redis connections, one process), and prints revoked_at - not_after: p50, p90, p99,
   max (target: p99 < 1 s), and how many revocations each replica did.
2. Start-up: times ``build_broker`` + the first reaper round with no leases and with ``--live``
   live leases in Redis, and prints both and their ratio (target: ~1.0, i.e. constant).

With ``--processes`` (issue 14 goal 7) the lag is measured at scale instead, on a private
``redis-server`` (127.0.0.1:``--port``): ``--leases`` active leases written with the store's own
ops (write-ahead, activation, due entry; one task each) whose ``not_after`` are spread evenly over
``--spread`` seconds starting ``--start-after`` seconds later, then ``--replicas`` reaper
*processes*, each a replica as ``jit serve`` builds it (its own Redis client, the shared audit
chain with group commit, ``LeaseManager``, ``Reaper`` with the default settings) and the fake
issuer. Lag is each ``lease.revoked`` record's ``lag_ms`` (revoked_at - not_after); "revoked
twice" counts leases whose issuer revoke was called more than once across all replicas. Start-up
is skipped in this mode.

Writes only under a random key prefix, which it deletes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.audit import AuditLog  # noqa: E402
from broker.cli.server import dev_policy_dir  # noqa: E402
from broker.clock import SystemClock  # noqa: E402
from broker.config import (  # noqa: E402
    ApprovalSettings,
    IssuerInstanceSettings,
    PersonSettings,
    ReaperSettings,
    Settings,
)
from broker.identity import DevIdentityIssuer  # noqa: E402
from broker.leases import LeaseManager, LeaseStore, Reaper  # noqa: E402
from broker.service import build_broker  # noqa: E402
from broker.testing import FakeIssuer  # noqa: E402
from broker.types import Principal, Scope, Task  # noqa: E402
from issuers.jwt.keys import generate_key  # noqa: E402
from tests.auditkeys import audit_settings  # noqa: E402
from tests.integration.test_leases_redis import _fill  # noqa: E402

WHO = Principal(id="bench:ci", issuer="bench", subject="ci")
SCOPE = Scope.of("fake", "https://demo.local", ["read"])


async def lag(redis_url: str, n: int, spread: float, replicas: int) -> None:
    prefix = f"jitbench-{secrets.token_hex(4)}"
    clock = SystemClock()
    settings = ReaperSettings()
    issuer = FakeIssuer("fake", clock=clock)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(replicas)]
    lag_sinks = [LagSink() for _ in clients]
    managers = [
        LeaseManager(
            LeaseStore(c, prefix),
            {"fake": issuer},
            AuditLog(clock, [lag_sinks[i]]),
            clock,
            settings,
            replica_id=f"r{i}",
        )
        for i, c in enumerate(clients)
    ]
    try:
        print(f"issuing {n} leases ending over {spread:.0f}s ...", flush=True)
        t0 = time.perf_counter()
        base = 3.0 + n / 2000  # leave time to issue them all before the first expires
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            ttl = timedelta(seconds=base + spread * i / n) - (time.perf_counter() - t0) * (
                timedelta(seconds=1)
            )
            async with sem:
                await managers[0].issue(WHO, Task(f"t{i % 100}"), SCOPE, ttl)

        await asyncio.gather(*(one(i) for i in range(n)))
        print(f"  issued in {time.perf_counter() - t0:.2f}s", flush=True)
        stop = asyncio.Event()
        reapers = [Reaper(m, settings, clock) for m in managers]
        tasks = [asyncio.create_task(r.run(stop)) for r in reapers]
        deadline = time.monotonic() + base + spread + 30
        while sum(len(ls.lags) for ls in lag_sinks) < n and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a counter)
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        lags = sorted(x for ls in lag_sinks for x in ls.lags)
        per = Counter(
            {m.replica_id: len(ls.lags) for m, ls in zip(managers, lag_sinks, strict=True)}
        )
        revokes = Counter(c.lease_id for c in issuer.calls_to("revoke"))
        q = statistics.quantiles(lags, n=100, method="inclusive")
        print(f"reaper lag over {len(lags)} leases, {replicas} replicas (poll 200ms):")
        print(
            f"  p50 {q[49] * 1000:.0f} ms   p90 {q[89] * 1000:.0f} ms   "
            f"p99 {q[98] * 1000:.0f} ms   max {lags[-1] * 1000:.0f} ms   (target p99 < 1000 ms)"
        )
        print(
            f"  revocations per replica: {dict(per)}; revoked twice: "
            f"{sum(1 for v in revokes.values() if v > 1)}"
        )
    finally:
        await _cleanup(clients[0], prefix)
        for c in clients:
            await c.aclose()


class LagSink:
    """Collects the reaper lag (``lag_ms``) from this replica's ``lease.revoked`` records."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def write(self, events: Any) -> None:
        for e in events:
            if e.type == "lease.revoked" and "lag_ms" in e.detail:
                self.lags.append(e.detail["lag_ms"] / 1000)

    async def aclose(self) -> None:
        return None


async def startup(redis_url: str, live: int) -> None:
    from broker.testing import FakeClock

    keys = Path(tempfile.mkdtemp(prefix="jit-bench-keys-"))
    clock = FakeClock()
    generate_key(keys, "EdDSA", clock.now())
    admin = aioredis.Redis.from_url(redis_url)
    results: dict[int, float] = {}
    for count in (0, live):
        prefix = f"jitbench-{secrets.token_hex(4)}"
        if count:
            print(f"writing {count} live leases ...", flush=True)
            await _fill(admin, prefix, count, clock)
        settings = Settings(
            key_prefix=prefix,
            redis_url=redis_url,
            policy_dir=str(dev_policy_dir()),
            issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
            approvals=ApprovalSettings(people={"ops": PersonSettings()}, default_approvers=["ops"]),
            audit=audit_settings(keys / "audit"),
        )
        times = []
        for _ in range(5):
            t = time.perf_counter()
            broker = await build_broker(
                settings,
                clock=clock,
                dev_identity=DevIdentityIssuer("http://127.0.0.1:8200/dev/oidc", clock),
            )
            await broker.reaper.run_once()
            times.append(time.perf_counter() - t)
            await broker.aclose()
        results[count] = statistics.median(times)
        await _cleanup(admin, prefix)
    await admin.aclose()
    a, b = results[0], results[live]
    print("start-up (build_broker + first reaper round, median of 5):")
    print(f"  0 leases: {a * 1000:.1f} ms   {live} leases: {b * 1000:.1f} ms   ratio {b / a:.2f}")


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


# -- at scale: two reaper processes ------------------------------------------------------------


def _fill_due(url: str, prefix: str, n: int, first_ms: int, spread_ms: int) -> float:
    """``n`` active leases, not_after spread evenly from ``first_ms`` over ``spread_ms``."""
    from broker.clock import from_ms, to_ms
    from broker.leases.keys import new_lease_id, task_key
    from broker.state.scripts import run
    from broker.types import Lease, LeaseState

    async def go() -> float:
        client = aioredis.Redis.from_url(url)
        store = LeaseStore(client, prefix)
        issued = SystemClock().now()
        scope = Scope.of("jwt", "https://demo.local", ["read"])
        t0 = time.perf_counter()
        for start in range(0, n, 2000):
            ops = []
            for i in range(start, min(n, start + 2000)):
                not_after_ms = first_ms + spread_ms * i // n
                task = f"reap-{i}"
                owner = WHO.id if i % 2 else "bench:cd"
                lease = Lease(
                    id=new_lease_id(task_key(owner, task)),
                    task_id=task,
                    owner=owner,
                    principal=WHO,
                    scope=scope,
                    issued_at=issued,
                    not_after=from_ms(not_after_ms),
                    state=LeaseState.MINTING,
                    grant="bench/demo",
                )
                ops += [
                    *store.owner_ops(lease),
                    *store.due_ops(lease.id, not_after_ms),
                    store.create_op(
                        lease,
                        deadline_ms=not_after_ms + 3_600_000,
                        bounded=False,
                        retention_ms=3_600_000,
                    ),
                    store.activate_op(lease.id, {"jti": lease.id}, to_ms(issued)),
                    # the lease.minted record is in the chain: the marker goes, as after a mint
                    store.clear_marker_op(lease.id, "minted", to_ms(issued)),
                ]
            await run(client, ops)
        await client.aclose()
        return time.perf_counter() - t0

    return asyncio.run(go())


def _replica(url: str, prefix: str, name: str, until: float, out: Any) -> None:
    """One reaper process: reap until no lease is live (or ``until``, monotonic), then put
    (name, lags in ms, ids revoked at the issuer) on ``out``."""
    from broker.audit import AuditChain, CheckpointSigner
    from broker.state.connect import redis_client

    async def go() -> None:
        clock = SystemClock()
        client = redis_client(url)  # the broker's client: a blocking pool of 64 connections
        lags = LagSink()
        chain = AuditChain(client, prefix, clock, CheckpointSigner.generate())
        audit = AuditLog(clock, [lags], chain=chain)
        issuer = FakeIssuer("jwt", clock=clock)
        settings = ReaperSettings()
        store = LeaseStore(client, prefix, send=audit.sender(client))
        manager = LeaseManager(store, {"jwt": issuer}, audit, clock, settings, replica_id=name)
        stop = asyncio.Event()
        task = asyncio.create_task(Reaper(manager, settings, clock).run(stop))
        while time.monotonic() < until:
            await asyncio.sleep(0.5)
            if await store.live_count() == 0:
                break
        stop.set()
        await task
        await audit.aclose()
        await client.aclose()
        out.put(
            (name, [x * 1000 for x in lags.lags], [c.lease_id for c in issuer.calls_to("revoke")])
        )

    try:  # the event loop `jit serve` runs on (ADR 0061)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(go())


def lag_processes(port: int, n: int, spread: float, replicas: int, start_after: float) -> None:
    import multiprocessing as mp

    from bench._common import pct, private_redis

    with private_redis(port) as url:
        prefix = "jit"
        first_ms = int((time.time() + start_after) * 1000)
        print(
            f"writing {n:,} active leases, not_after over {spread:.0f}s "
            f"from +{start_after:.0f}s ..."
        )
        took = _fill_due(url, prefix, n, first_ms, int(spread * 1000))
        late = time.time() * 1000 - first_ms
        print(
            f"  written in {took:.1f}s"
            + (
                f" (the first were due {late / 1000:.1f}s ago: raise --start-after)"
                if late > 0
                else ""
            )
        )
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        until = time.monotonic() + start_after + spread + 120
        procs = [
            ctx.Process(target=_replica, args=(url, prefix, f"r{i}", until, out))
            for i in range(replicas)
        ]
        for proc in procs:
            proc.start()
        results = []
        for _ in procs:
            try:
                results.append(out.get(timeout=max(1.0, until - time.monotonic()) + 60))
            except queue.Empty:
                raise SystemExit("a replica process did not report (see its traceback)") from None
        for proc in procs:
            proc.join()
        lags = sorted(x for _, ls, _ in results for x in ls)
        revokes = Counter(i for _, _, ids in results for i in ids)
        left = redis_sync_live(url, prefix)
    per = {name: len(ls) for name, ls, _ in sorted(results)}
    print(f"reaper lag over {len(lags):,} leases, {replicas} replica processes (audit chain on):")
    print(
        f"  p50 {pct(lags, 50):.0f} ms   p90 {pct(lags, 90):.0f} ms   p99 {pct(lags, 99):.0f} ms   "
        f"max {lags[-1]:.0f} ms   (target p99 < 1000 ms)"
    )
    print(
        f"  revocations per replica: {per}; revoked twice: "
        f"{sum(1 for v in revokes.values() if v > 1)}; still live: {left}"
    )


def redis_sync_live(url: str, prefix: str) -> int:
    async def go() -> int:
        client = aioredis.Redis.from_url(url)
        count = await LeaseStore(client, prefix).live_count()
        await client.aclose()
        return count

    return asyncio.run(go())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--leases", type=int, default=5000)
    p.add_argument("--spread", type=float, default=5.0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--live", type=int, default=100_000)
    p.add_argument("--processes", action="store_true", help="the at-scale mode (see above)")
    p.add_argument("--start-after", type=float, default=90.0)
    p.add_argument("--port", type=int, default=19030)
    args = p.parse_args()
    if args.processes:
        lag_processes(args.port, args.leases, args.spread, args.replicas, args.start_after)
        return
    asyncio.run(lag(args.redis_url, args.leases, args.spread, args.replicas))
    asyncio.run(startup(args.redis_url, args.live))


if __name__ == "__main__":
    main()
