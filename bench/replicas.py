"""Mints per second of two ``jit serve`` replicas against one, on the same Redis (issue 13).

    .venv/bin/python bench/replicas.py [--duration 10s] [--reps 3] [--conns 32] [--port 7230]

Its own ``redis-server`` (AOF, appendfsync everysec, as in production) on 127.0.0.1:``--port``,
a loopback RS256 identity issuer, and one or two ``jit serve`` processes (real subprocesses:
JWT issuer, audit chain on; the same config, each replica on its own port, as two pods behind
a Service). Two wrk processes (one thread, ``--conns``/2 connections each, running at the same
time) post ``/v1/credentials`` with ``bench/support/mint.lua`` (a new task per request): with
two replicas each wrk drives one, with one replica both drive it — the client side is the same
in both cases. One warm-up, then ``--reps`` alternating runs; prints every run, the medians
and the ratio. wrk, Redis and the replicas share the machine's cores: on two cores the second
replica mostly competes with them (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis  # noqa: E402
from bench._serve import JIT, LoopbackIdP, stop, wait_ready, write_config  # noqa: E402

LUA = ROOT / "bench" / "support" / "mint.lua"
RESULT = re.compile(r"WRKRESULT rps=(\S+) p50_ms=(\S+) p99_ms=(\S+) non2xx=(\d+) errors=(\d+)")


def start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env["JIT_PORT"] = str(port)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [JIT, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    wait_ready(port, proc)
    return proc


def load(ports: list[int], duration: str, conns: int, token: str) -> dict[str, float]:
    """Two wrk processes at once, the first at ports[0], the second at ports[-1]."""
    env = {**os.environ, "JIT_TOKEN": token}
    each = max(1, conns // 2)
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{each}", f"-d{duration}", "--latency", "-s", str(LUA), url],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for url in (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[-1]}")
    ]
    rows = []
    for proc in procs:
        out, _ = proc.communicate()
        m = RESULT.search(out)
        if m is None:
            raise SystemExit(f"wrk printed no result:\n{out}")
        rows.append([float(x) for x in m.groups()])
    return {
        "rps": sum(r[0] for r in rows),
        "p50_ms": max(r[1] for r in rows),
        "p99_ms": max(r[2] for r in rows),
        "bad": sum(r[3] + r[4] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", default="10s")
    p.add_argument("--warmup", default="3s")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument(
        "--port", type=int, default=7230, help="redis; replicas get +1 and +2, the IdP +3"
    )
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    aof = ("--appendonly", "yes", "--appendfsync", "everysec")
    with (
        private_redis(args.port, *aof) as url,
        tempfile.TemporaryDirectory(prefix="jit-bench-replicas-") as tmp,
    ):
        here = Path(tmp)
        idp = LoopbackIdP(args.port + 3)
        ports = [args.port + 1, args.port + 2]
        config = write_config(here / "conf", port=ports[0], redis_url=url, idp_url=idp.url)
        token = idp.token()
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        try:
            for rep in range(args.reps + 1):
                for n in (1, 2):
                    procs = [start(config, port, here / f"serve-{port}.log") for port in ports[:n]]
                    try:
                        if rep == 0:  # warm-up (JWKS fetched, code paths hot)
                            load(ports[:n], args.warmup, args.conns, token)
                            continue
                        row = load(ports[:n], args.duration, args.conns, token)
                    finally:
                        for proc in procs:
                            stop(proc)  # type: ignore[arg-type]
                    results[n].append(row)
                    print(
                        f"replicas={n} rep={rep} {row['rps']:.0f} mints/s "
                        f"p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms "
                        f"non-2xx or errors {row['bad']:.0f}",
                        flush=True,
                    )
        finally:
            idp.close()
    med = {n: statistics.median(r["rps"] for r in rows) for n, rows in results.items()}
    for n, rows in results.items():
        p99 = statistics.median(r["p99_ms"] for r in rows)
        print(f"{n} replica(s): median {med[n]:.0f} mints/s, p99 {p99:.1f} ms")
    print(f"ratio 2 replicas / 1 replica: {med[2] / med[1]:.2f}")


if __name__ == "__main__":
    main()
