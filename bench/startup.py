"""Start-up time of ``jit serve`` with 1,000,000 live leases in Redis (issue 14 goal 5).

    .venv/bin/python bench/startup.py [--live 1000000] [--runs 3] [--port 19010]

1. Starts its own empty ``redis-server`` on 127.0.0.1:``--port`` and a loopback identity issuer,
   writes a ``jit serve`` configuration (JWT issuer, audit chain, one policy).
2. Times ``jit serve`` as a real subprocess from exec to the first ``/readyz`` 200, ``--runs``
   times, on the empty Redis.
3. Writes ``--live`` live leases under the broker's key prefix in the store's real key layout,
   with the store's own ops (``LeaseStore.owner_ops``, ``due_ops``, ``create_op`` and
   ``activate_op``, ``clear_marker_op`` — the write-ahead and activation a mint sends, and the
   clearing of the "record pending" marker that follows its record), 2,000 leases per pipeline,
   four pipelines in flight: one task per lease, 1,000 workloads, 1,024 due shards.
4. Times the start-up again, and prints both medians and their ratio (target: < 2 s with the
   live leases; start-up must not grow with them).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis, used_memory  # noqa: E402
from bench._serve import LoopbackIdP, serve, stop, wait_ready, write_config  # noqa: E402
from broker.clock import SystemClock, to_ms  # noqa: E402
from broker.leases import LeaseStore  # noqa: E402
from broker.leases.keys import new_lease_id, task_key  # noqa: E402
from broker.state.scripts import run  # noqa: E402
from broker.types import Lease, LeaseState, Principal, Scope  # noqa: E402

PREFIX = "jit"  # the broker's default key_prefix


async def fill(url: str, n: int, workloads: int = 1000) -> float:
    client = aioredis.Redis.from_url(url)
    store = LeaseStore(client, PREFIX)
    now = SystemClock().now()
    not_after = now + timedelta(hours=1)
    day_ms = 24 * 3600 * 1000
    who = [
        Principal(id=f"bench:wl-{i:04d}", issuer="bench", subject=f"wl-{i:04d}")
        for i in range(workloads)
    ]
    scope = Scope.of("jwt", "https://demo.local", ["read"])
    kid = secrets.token_urlsafe(32)[:43]
    t0 = time.perf_counter()

    async def batch(start: int) -> None:
        ops = []
        for i in range(start, min(n, start + 2000)):
            p = who[i % workloads]
            task = f"task-{i}"
            lease = Lease(
                id=new_lease_id(task_key(p.id, task)),
                task_id=task,
                owner=p.id,
                principal=p,
                scope=scope,
                issued_at=now,
                not_after=not_after,
                state=LeaseState.MINTING,
                grant="bench/demo-rw",
                origin="api",
            )
            ops += [
                *store.owner_ops(lease),
                *store.due_ops(lease.id, to_ms(not_after)),
                store.create_op(
                    lease, deadline_ms=to_ms(not_after), bounded=False, retention_ms=day_ms
                ),
                store.activate_op(lease.id, {"jti": lease.id, "kid": kid}, to_ms(now)),
                # the lease.minted record is in the chain: the marker goes, as after a mint
                store.clear_marker_op(lease.id, "minted", to_ms(now)),
            ]
        await run(client, ops)

    sem = asyncio.Semaphore(4)

    async def guarded(start: int) -> None:
        async with sem:
            await batch(start)
        if (start // 2000) % 50 == 49:
            print(f"  {start + 2000:,} written", flush=True)

    await asyncio.gather(*(guarded(s) for s in range(0, n, 2000)))
    await client.aclose()
    return time.perf_counter() - t0


def time_startups(config: Path, port: int, runs: int, logdir: Path) -> list[float]:
    out = []
    for r in range(runs):
        t0 = time.monotonic()
        proc = serve(config, logdir / f"serve-{time.time_ns()}.log")
        try:
            ready = wait_ready(port, proc)
        finally:
            stop(proc)
        out.append(ready - t0)
        print(f"  run {r + 1}: {out[-1]:.3f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--live", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--port", type=int, default=19010, help="redis; the broker gets +1, the IdP +2")
    args = p.parse_args()
    with private_redis(args.port) as url, tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp:
        here = Path(tmp)
        idp = LoopbackIdP(args.port + 2)
        config = write_config(here / "conf", port=args.port + 1, redis_url=url, idp_url=idp.url)
        print("jit serve, empty Redis:")
        empty = time_startups(config, args.port + 1, args.runs, here)
        print(f"writing {args.live:,} live leases ...", flush=True)
        took = asyncio.run(fill(url, args.live))
        client = redis.Redis.from_url(url)
        print(
            f"  written in {took:.1f}s; {client.dbsize():,} keys, "
            f"used_memory {used_memory(client) / 2**20:,.0f} MiB"
        )
        print(f"jit serve, {args.live:,} live leases:")
        full = time_startups(config, args.port + 1, args.runs, here)
        due = client.zcard(f"{PREFIX}:{{due}}")
        client.close()
        idp.close()
    a, b = statistics.median(empty), statistics.median(full)
    print(f"\nexec → /readyz 200, median of {args.runs}:")
    print(f"  empty Redis: {a:.3f} s   {args.live:,} live leases: {b:.3f} s   ratio {b / a:.2f}")
    print(f"  (target < 2 s; the due index listed {due} shards)")


if __name__ == "__main__":
    main()
