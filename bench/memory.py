"""Redis memory per live lease (issue 14 goal 4), on a private, empty redis-server.

    .venv/bin/python bench/memory.py [--leases 100000] [--workloads 100] [--port 19001]

1. Starts its own ``redis-server`` on 127.0.0.1:``--port`` (no persistence) and reads the empty
   baseline (``INFO memory`` ``used_memory``).
2. Mints ``--leases`` live leases (TTL 1 h, one task each, as ``POST /v1/credentials`` with a new
   task per request does) through the real mint path below the HTTP layer: ``Issuance``'s
   ``decision`` record + ``LeaseManager.issue`` (write-ahead lease with its quota reservations
   and due entry, mint, activation with the ``lease.minted`` record, through the audit chain's
   group commit), with an in-memory issuer whose handle is shaped like the JWT issuer's. The
   principals are ``--workloads`` GitHub-style workload ids, the grants 20 policy owners'.
3. Reports ``used_memory`` minus the baseline per live lease, and what each kind of key costs
   (``MEMORY USAGE``: every key of the small kinds, a sample of 2,000 task hashes
   extrapolated), with the audit stream on its own line. ``--listpack-value N`` starts Redis
   with ``hash-max-listpack-value N`` (a task hash with any value longer than that, 64 bytes by
   default, is stored as a hashtable, about three times the size; the JWT issuer's handle is
   52 bytes since it no longer repeats the lease id).
4. Delivers the stream to a JSON-lines file sink (``AuditDelivery``), which trims what every
   sink has (docs/audit.md), and reports both figures again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import JwtShapedIssuer, private_redis, used_memory  # noqa: E402
from broker.audit import AuditChain, AuditDelivery, AuditLog, CheckpointSigner  # noqa: E402
from broker.audit.sinks import JsonLinesFileSink  # noqa: E402
from broker.clock import SystemClock  # noqa: E402
from broker.config import ReaperSettings  # noqa: E402
from broker.leases import LeaseManager, LeaseStore  # noqa: E402
from broker.types import Principal, Scope, Task  # noqa: E402

PREFIX = "jit"
KINDS = (
    ("task hash {t:…} (task + its lease)", ":{t:"),
    ("workload index {o:…}", ":{o:"),
    ("policy-owner counter {q:…}", ":{q:"),
    ("due shards {due:n}", ":{due:"),
    ("due index {due}", ":{due}"),
    ("audit stream", ":{audit}:stream"),
    ("audit head, cursors, sinks", ":{audit}:"),
)


def kind_of(key: str) -> str:
    for name, marker in KINDS:
        if marker in key:
            return name
    return "other"


def principals(n: int) -> list[Principal]:
    out = []
    for i in range(n):
        repo = f"acme/service-{i:04d}"
        sub = f"repo:{repo}:ref:refs/heads/main"
        out.append(
            Principal(
                id=f"github:{sub}",
                issuer="github",
                subject=sub,
                claims={
                    "repository": repo,
                    "repository_id": str(100000 + i),
                    "ref": "refs/heads/main",
                },
            )
        )
    return out


async def mint_all(url: str, n: int, workloads: int) -> tuple[AuditLog, float]:
    client = aioredis.Redis.from_url(url)
    clock = SystemClock()
    chain = AuditChain(client, PREFIX, clock, CheckpointSigner.generate())
    audit = AuditLog(clock, chain=chain)
    store = LeaseStore(client, PREFIX, send=audit.sender(client))
    issuer = JwtShapedIssuer("jwt", clock=clock)
    manager = LeaseManager(store, {"jwt": issuer}, audit, clock, ReaperSettings())
    who = principals(workloads)
    rng = random.Random(7)
    sem = asyncio.Semaphore(64)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        p = who[i % workloads]
        owner = f"team-{i % 20:02d}"
        grant = f"{owner}/deploy"
        resource = f"https://api-{rng.randrange(50):02d}.internal.example"
        scope = Scope.of("jwt", resource, ["read", "write"] if i % 3 else ["read"])
        task = Task(f"run-{secrets.token_hex(6)}-{i}")
        request_id = secrets.token_hex(16)
        detail = {
            "resource": scope.resource,
            "actions": list(scope.actions),
            "policy_version": "e916b2f0c1d2a3b4",
            "grant": grant,
            "ttl_seconds": 3600,
        }
        decided = audit.record(
            "decision",
            outcome="ok",
            reasons=[f"grant {grant} allows it"],
            detail=detail,
            principal=p.id,
            task_id=task.id,
            issuer="jwt",
            request_id=request_id,
        )
        async with sem:
            await manager.issue(
                p,
                task,
                scope,
                timedelta(hours=1),
                grant=grant,
                origin="api",
                request_id=request_id,
                detail={"grant": grant, "policy_version": "e916b2f0c1d2a3b4"},
                decision=decided,
            )
        done += 1
        if done % 20000 == 0:
            print(f"  {done} minted", flush=True)

    t0 = time.perf_counter()
    for start in range(0, n, 10_000):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))
    elapsed = time.perf_counter() - t0
    await audit.aclose()
    await client.aclose()
    return audit, elapsed


def breakdown(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """kind → (keys, bytes by MEMORY USAGE; task hashes sampled and extrapolated)."""
    keys: dict[str, list[bytes]] = defaultdict(list)
    for key in client.scan_iter(count=10_000):
        keys[kind_of(key.decode())].append(key)
    out: dict[str, tuple[int, int]] = {}
    for kind, ks in keys.items():
        sample = ks if len(ks) <= 2000 else random.Random(1).sample(ks, 2000)
        pipe = client.pipeline(transaction=False)
        for k in sample:
            pipe.memory_usage(k, samples=0)
        total = sum(int(x or 0) for x in pipe.execute())
        out[kind] = (len(ks), round(total * len(ks) / len(sample)))
    return out


def report(title: str, client: redis.Redis, base: int, n: int) -> int:
    used = used_memory(client) - base
    print(f"\n{title}: used_memory - baseline = {used:,} B = {used / n:,.0f} B per live lease")
    parts = breakdown(client)
    print(f"  {'kind':<38} {'keys':>9} {'MEMORY USAGE':>14} {'B/lease':>8}")
    for kind, _ in (*KINDS, ("other", "")):
        if kind in parts:
            count, size = parts[kind]
            print(f"  {kind:<38} {count:>9,} {size:>14,} {size / n:>8.0f}")
    total = sum(size for _, size in parts.values())
    print(f"  {'sum of MEMORY USAGE':<38} {'':>9} {total:>14,} {total / n:>8.0f}")
    print(
        f"  used_memory beyond the sum: {(used - total) / n:.0f} B/lease (the keyspace's tables, "
        "the script cache, buffers; a stream's MEMORY USAGE is an estimate)"
    )
    return used


async def deliver_and_trim(url: str, path: Path) -> tuple[int, int, float]:
    client = aioredis.Redis.from_url(url)
    clock = SystemClock()
    delivery = AuditDelivery(client, PREFIX, [JsonLinesFileSink(path, batch_size=10_000)], clock)
    t0 = time.perf_counter()
    await delivery.register()
    delivered = 0
    while n := await delivery.deliver_once("file"):
        delivered += n
    trimmed = await delivery.trim()
    elapsed = time.perf_counter() - t0
    await delivery.aclose()
    await client.aclose()
    return delivered, trimmed, elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--leases", type=int, default=100_000)
    p.add_argument("--workloads", type=int, default=100)
    p.add_argument("--port", type=int, default=19001)
    p.add_argument(
        "--listpack-value",
        type=int,
        default=None,
        help="start Redis with hash-max-listpack-value N (default: Redis's, 64)",
    )
    args = p.parse_args()
    n = args.leases
    extra = ("--hash-max-listpack-value", str(args.listpack_value)) if args.listpack_value else ()
    with private_redis(args.port, *extra) as url:
        client = redis.Redis.from_url(url)
        version = client.info("server")["redis_version"]
        base = used_memory(client)
        lp = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
        print(f"redis {version} on port {args.port} (hash-max-listpack-value {lp})")
        print(f"empty: used_memory {base:,} B")
        print(f"minting {n:,} live leases ({args.workloads} workloads, 20 policy owners) ...")
        _, elapsed = asyncio.run(mint_all(url, n, args.workloads))
        print(f"  minted in {elapsed:.1f}s ({n / elapsed:,.0f}/s)")
        live = sum(1 for _ in client.scan_iter(match=f"{PREFIX}:{{t:*", count=10_000))
        entries = client.xlen(f"{PREFIX}:{{audit}}:stream")
        print(f"  task hashes in Redis: {live:,}; stream entries: {entries:,}")
        before = report("with the audit stream (no sink yet)", client, base, n)
        with tempfile.TemporaryDirectory(prefix="jit-bench-audit-") as tmp:
            path = Path(tmp) / "audit.jsonl"
            delivered, trimmed, took = asyncio.run(deliver_and_trim(url, path))
            size = path.stat().st_size
        print(
            f"\nfile sink took {delivered:,} records ({size / 1e6:.1f} MB) in {took:.1f}s; "
            f"{trimmed:,} trimmed from the stream, {client.xlen(f'{PREFIX}:{{audit}}:stream')} left"
        )
        after = report("after the sink took the stream and it was trimmed", client, base, n)
        print(
            f"\nbytes per live lease: {before / n:,.0f} with the stream, {after / n:,.0f} after "
            "trimming (target ≤ 500)"
        )
        client.close()


if __name__ == "__main__":
    main()
