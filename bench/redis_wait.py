"""What ``redis.wait_replicas`` costs a mint: a real ``jit serve`` on tests/redisfarm.py's
Sentinel topology (master, one replica, three sentinels, AOF everysec, all on loopback), with
``wait_replicas: 0`` and then ``1``; ``--clients`` workers mint (each into a task of its own)
for ``--seconds``; prints p50/p99 per mint and mints/s for each.

    .venv/bin/python -m bench.redis_wait [--clients 1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench._serve import LoopbackIdP, serve, stop, wait_ready, write_config
from tests.redisfarm import Farm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(farm: Farm, where: Path, idp: LoopbackIdP, wait: int, clients: int, seconds: float) -> str:
    r = farm.settings("sentinel")
    block = (
        "redis:\n  mode: sentinel\n"
        f"  sentinels: [{', '.join(r.sentinels or [])}]\n  master_name: {r.master_name}\n"
        f"  username: {r.username}\n  password_file: {r.password_file}\n"
        f"  sentinel_password_file: {r.sentinel_password_file}\n"
        f"  wait_replicas: {wait}\n  wait_timeout: 1s\n"
    )
    port = free_port()
    config = write_config(
        where, port=port, redis_url="redis://127.0.0.1:6379/0", idp_url=idp.url, extra=block
    )
    proc = serve(config, where / "serve.log")
    try:
        wait_ready(port, proc)
        token = idp.token()
        latencies: list[float] = []
        errors = 0
        lock = threading.Lock()
        end = time.monotonic() + seconds

        def worker(n: int) -> None:
            nonlocal errors
            i = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                while time.monotonic() < end:
                    i += 1
                    body = {
                        "task": {"id": f"w{wait}-{n}-{i}"},
                        "issuer": "jwt",
                        "resource": "https://demo.local",
                        "actions": ["read"],
                    }
                    t0 = time.perf_counter()
                    resp = http.post(
                        "/v1/credentials", json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    dt = time.perf_counter() - t0
                    with lock:
                        if resp.status_code == 201:
                            latencies.append(dt)
                        else:
                            errors += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        q = statistics.quantiles(latencies, n=100)
        return (
            f"wait_replicas={wait} clients={clients}: {len(latencies)} mints, "
            f"{len(latencies) / seconds:.0f}/s, p50 {q[49] * 1000:.2f} ms, "
            f"p99 {q[98] * 1000:.2f} ms, errors {errors}"
        )
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        farm = Farm(Path(tmp))
        idp = LoopbackIdP(free_port())
        try:
            for wait in (0, 1):
                where = Path(tmp) / f"w{wait}"
                where.mkdir()
                print(run(farm, where, idp, wait, args.clients, args.seconds), flush=True)
        finally:
            idp.close()
            farm.stop()


if __name__ == "__main__":
    main()
