"""What one request costs the stack itself, next to the full mint and the peer token issuer.

    .venv/bin/python bench/floor.py [--duration 8] [--warmup 3] [--port 39800]

Each target is served on 127.0.0.1 and driven by wrk (2 threads, 32 connections, the mint's
``POST /v1/credentials`` script; the peer gets its own ``client_credentials`` script); the
served process's CPU time (utime + stime of every thread, ``/proc/<pid>/stat``) over the
measured run is divided by the requests wrk counted:

- ``raw ASGI``: a bare ASGI app under uvicorn (httptools, uvloop) — the server alone;
- ``litestar``: one litestar route taking the mint's body as a msgspec struct and the bearer
  token through a dependency (``bench/support/floor_apps.py``) — any litestar route's floor;
- ``jit serve mint``: the full mint (real Redis, the JWT issuer, the audit chain);
- ``peer``: node oidc-provider issuing an EdDSA JWT (``../shared/peer-bench``), when its
  modules are installed (``bash ../shared/peer-bench/run.sh`` installs them once).

Also the CPU of one EdDSA JWT signature through joserfc, in this process. "cores" is the
served process's CPU seconds per wall second: above 1.0 the process runs on more than one core
at once (node's garbage collector and compiler threads do; a Python process's request work
holds one lock). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis  # noqa: E402
from bench._serve import LoopbackIdP, serve, stop, wait_ready, write_config  # noqa: E402

PEER = ROOT.parent / "shared" / "peer-bench"
PEER_MODULES = Path(os.environ.get("TMPDIR", "/tmp")) / "peer-oidc-modules"
MINT_LUA = ROOT / "bench" / "support" / "mint.lua"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(url: str, script: Path, seconds: float, env: dict[str, str]) -> str:
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout


def measure(
    label: str, pid: int, url: str, script: Path, env: dict[str, str], a: argparse.Namespace
) -> dict[str, float | str]:
    wrk(url, script, a.warmup, env)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    out = wrk(url, script, a.duration, env)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not requests or non2xx:
        raise SystemExit(f"{label}: {requests} requests, non-2xx: {non2xx and non2xx.group(1)}")
    cpu_ms = (c1 - c0) * 1000 / requests
    return {
        "target": label,
        "rps": requests / a.duration,
        "cpu_ms": cpu_ms,
        "cores": (c1 - c0) / (t1 - t0),
        "ceiling": 1000 / cpu_ms,
    }


def start(cmd: list[str], url_ready: Callable[[], bool], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        if url_ready():
            return proc
        time.sleep(0.05)
    raise SystemExit(f"{cmd} did not answer")


def answers(url: str) -> bool:
    import httpx

    try:
        httpx.get(url, timeout=0.5)
        return True
    except httpx.HTTPError:
        return False


def uvicorn_app(app: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn; uvicorn.run("
        f"'bench.support.floor_apps:{app}', host='127.0.0.1', port={port}, "
        "log_level='warning', access_log=False, lifespan='on')"
    )
    return start([sys.executable, "-c", code], lambda: answers(f"http://127.0.0.1:{port}/"), log)


def sign_us() -> float:
    """CPU µs per EdDSA JWT signed with joserfc, claims shaped like the JWT issuer's."""
    from joserfc import jwt
    from joserfc.jwk import OKPKey
    from joserfc.jws import JWSRegistry

    key = OKPKey.generate_key("Ed25519")
    registry = JWSRegistry(algorithms=["EdDSA"])
    header = {"alg": "EdDSA", "kid": "k" * 43, "typ": "at+jwt"}
    claims = {
        "iss": "http://127.0.0.1:8200",
        "sub": "bench:bench-workload",
        "aud": "https://demo.local",
        "iat": 1,
        "nbf": 1,
        "exp": 2,
        "jti": "915e5ad6e3192e01.37ebf3d3",
        "task_id": "bench-1-2-3",
        "scope": "read",
    }
    n = 3000
    c0 = time.process_time()
    for _ in range(n):
        jwt.encode(header, claims, key, registry=registry)
    return (time.process_time() - c0) * 1e6 / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--port", type=int, default=39800, help="ports PORT … PORT+4 on 127.0.0.1")
    a = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="jit-floor-"))
    rows: list[dict[str, float | str]] = []
    env = dict(os.environ)
    try:
        for app, label in (("raw", "raw ASGI (uvicorn)"), ("litestar", "litestar route")):
            port = a.port + (0 if app == "raw" else 1)
            proc = uvicorn_app(app, port, work / f"{app}.log")
            try:
                url = f"http://127.0.0.1:{port}"
                rows.append(measure(label, proc.pid, url, MINT_LUA, {**env, "JIT_TOKEN": "x"}, a))
            finally:
                stop(proc)
        with private_redis(a.port + 2) as redis_url:
            idp = LoopbackIdP(a.port + 3)
            port = a.port + 4
            config = write_config(work / "jit", port=port, redis_url=redis_url, idp_url=idp.url)
            proc = serve(config, work / "jit.log")
            try:
                wait_ready(port, proc)
                mint_env = {**env, "JIT_TOKEN": idp.token()}
                url = f"http://127.0.0.1:{port}"
                rows.append(measure("jit serve mint", proc.pid, url, MINT_LUA, mint_env, a))
            finally:
                stop(proc)
                idp.close()
        if (PEER_MODULES / "node_modules" / "oidc-provider").is_dir() and shutil.which("node"):
            port = a.port + 1
            peer_env = {
                **env,
                "MODE": "oidc",
                "PORT": str(port),
                "ALG": "EdDSA",
                "PEER_OIDC_MODULES": str(PEER_MODULES),
                "BASIC_AUTH": base64.b64encode(
                    b"bench-client:bench-secret-0123456789abcdef0123456789abcdef"
                ).decode(),
            }
            log = work / "peer.log"
            proc = subprocess.Popen(
                ["node", str(PEER / "server.mjs")],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env=peer_env,
            )
            try:
                for _ in range(200):
                    if answers(f"http://127.0.0.1:{port}/jwks"):
                        break
                    time.sleep(0.05)
                url = f"http://127.0.0.1:{port}"
                script = PEER / "token.lua"
                rows.append(measure("peer (oidc-provider)", proc.pid, url, script, peer_env, a))
            finally:
                stop(proc)
        else:
            print(f"(peer skipped: no {PEER_MODULES}/node_modules/oidc-provider or no node)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    head = f"{'target':24s} {'req/s':>8s} {'CPU ms/req':>11s} {'cores':>6s}"
    print(f"\n{head} {'1-core ceiling/s':>17s}")
    for r in rows:
        print(
            f"{r['target']!s:24s} {r['rps']:8.0f} {r['cpu_ms']:11.3f} {r['cores']:6.2f} "
            f"{r['ceiling']:17.0f}"
        )
    print(f"\nEdDSA JWT signed by joserfc: {sign_us():.1f} CPU µs")
    by = {str(r["target"]): r for r in rows}
    if "peer (oidc-provider)" in by and "litestar route" in by:
        peer, ls = by["peer (oidc-provider)"], by["litestar route"]
        mint = by["jit serve mint"]
        print(
            f"peer: {peer['rps']:.0f}/s on {peer['cores']:.2f} cores; one Python process at the "
            f"peer's rate must spend <= {1000 / float(peer['rps']):.3f} CPU ms per mint; the "
            f"litestar route alone spends {ls['cpu_ms']:.3f} ms, the full mint "
            f"{mint['cpu_ms']:.3f} ms"
        )


if __name__ == "__main__":
    main()
