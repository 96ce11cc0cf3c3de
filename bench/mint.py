"""Mint throughput: the full `POST /v1/credentials` path against a baseline in the same server.

    .venv/bin/python bench/mint.py [--duration 10] [--concurrency 16] [--redis-url URL]

Starts a broker in a subprocess on a free loopback port (real Redis, the JWT issuer, the
development identity issuer and the sample policy), with one extra route, `POST /bench/baseline`,
that does only the unavoidable work of a mint: verify the identity token, sign one JWT, one Redis
round trip. N concurrent clients drive each route for a fixed time, alternating, and the script
prints mints/s, p50 and p99 for both, and the ratio full/baseline (target: >= 0.80).

The load goes only to 127.0.0.1 and stops by itself after the fixed time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the server side uses tests/auditkeys.py


# -- server side ------------------------------------------------------------------------------


def serve(port: int, redis_url: str, prefix: str) -> None:
    import uvicorn
    from litestar import Request, post
    from litestar.datastructures import State

    from broker.api import create_app
    from broker.api.auth import bearer_token, broker_of
    from broker.cli.server import dev_policy_dir
    from broker.clock import SystemClock
    from broker.config import IssuerInstanceSettings, Settings
    from broker.identity import DevIdentityIssuer
    from broker.logsetup import setup_logging
    from broker.service import build_broker
    from broker.types import MintRequest, Scope, Secret
    from issuers.jwt.keys import generate_key
    from tests.auditkeys import audit_settings

    setup_logging("text", "WARNING")
    url = f"http://127.0.0.1:{port}"
    clock = SystemClock()
    keys = Path(tempfile.mkdtemp(prefix="jit-bench-keys-"))
    generate_key(keys, "EdDSA", clock.now())
    settings = Settings(
        public_url=url,
        port=port,
        redis_url=redis_url,
        key_prefix=prefix,
        policy_dir=str(dev_policy_dir()),
        issuers={
            "jwt": IssuerInstanceSettings(
                type="jwt", config={"keys_dir": str(keys), "max_ttl": "1h", "default_ttl": "15m"}
            )
        },
        audit=audit_settings(keys / "audit"),
    )
    admin_key = os.environ["JIT_BENCH_ADMIN_KEY"]

    @post("/bench/baseline", status_code=201)
    async def baseline(request: Request[Any, Any, State]) -> dict[str, Any]:
        broker = broker_of(request)
        principal = await broker.callers.workload(
            bearer_token(request)
        )  # verify the identity token
        now = broker.clock.now()
        lease_id = secrets.token_urlsafe(16)
        cred = await broker.issuers["jwt"].mint(  # sign one JWT
            MintRequest(
                lease_id=lease_id,
                task_id="bench",
                principal=principal,
                scope=Scope.of("jwt", "https://demo.local", ["read"]),
                issued_at=now,
                not_after=now + timedelta(minutes=5),
            )
        )
        await broker.redis.set(f"{prefix}:bench:{lease_id}", b"1", px=60_000)  # one round trip
        return {"lease_id": lease_id, "secret": cred.secret.reveal()}

    async def main() -> None:
        broker = await build_broker(
            settings,
            clock=clock,
            dev=True,
            dev_identity=DevIdentityIssuer(f"{url}/dev/oidc", clock),
            dev_admin_key=Secret(admin_key),
        )
        app = create_app(broker)
        app.register(baseline)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        await uvicorn.Server(config).serve()

    asyncio.run(main())


# -- driver -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(
    url: str, path: str, token: str, concurrency: int, duration: float
) -> dict[str, float]:
    body = {"issuer": "jwt", "resource": "https://demo.local", "actions": ["read"], "ttl": 300}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(path, json=body)
                if r.status_code == 201:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50": latencies[n // 2] * 1000 if n else float("nan"),
        "p99": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "n": n,
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs per route")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"jitbench-{secrets.token_hex(4)}")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.redis_url, args.prefix)
        return

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin_key = secrets.token_urlsafe(32)
    env = {**os.environ, "JIT_BENCH_ADMIN_KEY": admin_key}  # secrets via env, never argv
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--redis-url",
            args.redis_url,
            "--prefix",
            args.prefix,
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("the bench server did not start")
            time.sleep(0.1)
        token = httpx.post(
            f"{url}/dev/token",
            json={"sub": "bench", "ttl": 3600},
            headers={"Authorization": f"Bearer {admin_key}"},
        ).json()["token"]
        print(
            f"jit-broker mint benchmark: {args.concurrency} clients, "
            f"{args.rounds} x {args.duration:.0f}s per route"
        )
        asyncio.run(drive(url, "/v1/credentials", token, args.concurrency, 2.0))  # warm-up
        asyncio.run(drive(url, "/bench/baseline", token, args.concurrency, 2.0))
        runs: dict[str, list[dict[str, float]]] = {"full": [], "baseline": []}
        for _ in range(args.rounds):
            runs["full"].append(
                asyncio.run(drive(url, "/v1/credentials", token, args.concurrency, args.duration))
            )
            runs["baseline"].append(
                asyncio.run(drive(url, "/bench/baseline", token, args.concurrency, args.duration))
            )
        summary = {}
        print(f"{'route':<34}{'mints/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        for name, path in (("full", "POST /v1/credentials"), ("baseline", "POST /bench/baseline")):
            rs = runs[name]
            s = {k: statistics.mean(r[k] for r in rs) for k in ("rps", "p50", "p99", "errors")}
            summary[name] = s
            print(
                f"{path:<34}{s['rps']:>10.0f}{s['p50']:>10.1f}{s['p99']:>10.1f}{s['errors']:>8.0f}"
            )
        ratio = summary["full"]["rps"] / summary["baseline"]["rps"]
        print(f"ratio full/baseline throughput: {ratio:.2f} (target >= 0.80)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        cleanup(args.redis_url, args.prefix)


def cleanup(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    batch = list(r.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(batch), 5000):
        r.unlink(*batch[i : i + 5000])


if __name__ == "__main__":
    main()
