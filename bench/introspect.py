"""Introspection throughput of one ``jit serve`` process (issue 14 goal 6), driven by wrk.

    .venv/bin/python bench/introspect.py [--duration 15] [--reps 3] [--conns 32] [--port 19020]
                                         [--client] [--profile [--profile-raw FILE]]

The same harness style as ``../shared/peer-bench`` (``INTROSPECT=1``): its own empty
``redis-server`` on 127.0.0.1:``--port``, a loopback RS256 identity issuer, ``jit serve`` (a
real subprocess: JWT issuer, audit chain on) with a workload whose policy grants
``introspect``. It mints one credential (``POST /v1/credentials``), checks that introspecting
it answers ``active: true``, then runs wrk (``--conns`` connections, 2 threads, a warm-up, then
``--reps`` runs) posting ``/oauth/introspect`` of that credential with the workload's identity
token, and prints the median rps, p50 and p99 (target: ≥ 3,000/s). Every introspection of a
known token is an audited, governed use (``lease.used`` and ``lease.introspected`` records, the
use counted against the grant's ``max_uses_per_minute``, set very high here so that the one
credential stays active; the bench checks it still is at the end).
``--client`` introspects as a configured OAuth client (``client_secret_basic``) instead of
as a workload with ``introspect`` in its policy. ``--profile`` records one more run under
py-spy (``pip install py-spy``) and prints the top functions; ``--profile-raw`` keeps the
stacks. The CPU time of the served process per introspection is printed for every run.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import private_redis  # noqa: E402
from bench._serve import LoopbackIdP, serve, stop, wait_ready, write_config  # noqa: E402

LUA = r"""
local auth, cred = os.getenv("AUTH"), os.getenv("CRED")
wrk.method = "POST"; wrk.path = "/oauth/introspect"
wrk.headers["Authorization"] = auth
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "token=" .. cred
function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("WRKRESULT requests=%d rps=%.2f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f " ..
    "max_ms=%.3f non2xx=%d errors=%d\n", summary.requests, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk(
    port: int, script: Path, duration: str, conns: int, env: dict[str, str]
) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{duration}", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("WRKRESULT"))
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(pid: int, port: int, script: Path, env: dict[str, str], where: Path) -> None:
    spy = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy)")
        return
    raw = where / "profile.txt"
    rec = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", "8", "-r", "250", "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wrk(port, script, "9s", 32, env)
    rec.wait()
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    print(f"\nprofile ({total} samples): top own time")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("top inclusive time (broker, redis, litestar, uvicorn, joserfc frames)")
    keep = ("broker/", "redis/", "litestar/", "uvicorn/", "joserfc/", "issuers/", "msgspec")
    shown = 0
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1]):
        if any(k in f for k in keep):
            print(f"  {100 * n / total:5.1f}%  {f}")
            shown += 1
            if shown == 40:
                break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", default="15s")
    p.add_argument("--warmup", default="5s")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--port", type=int, default=19020, help="redis; the broker gets +1, the IdP +2")
    p.add_argument(
        "--client",
        action="store_true",
        help="introspect as a configured OAuth client (client_secret_basic), not a workload",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-raw", type=Path, help="keep py-spy's raw stacks in this file")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    port = args.port + 1
    with private_redis(args.port) as url, tempfile.TemporaryDirectory(prefix="jit-bench-") as tmp:
        here = Path(tmp)
        idp = LoopbackIdP(args.port + 2)
        secret = secrets.token_urlsafe(32)
        (here / "client.secret").write_text(secret)
        (here / "client.secret").chmod(0o600)
        clients = f"clients: [{{client_id: bench-rs, secret_file: {here / 'client.secret'}}}]\n"
        config = write_config(
            here / "conf", port=port, redis_url=url, idp_url=idp.url, extra=clients
        )
        proc = serve(config, here / "serve.log")
        try:
            wait_ready(port, proc)
            token = idp.token()
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                minted = http.post(
                    "/v1/credentials",
                    headers=auth,
                    json={"task": {"id": "introspect-bench", "purpose": "bench"}, "issuer": "jwt",
                          "resource": "https://demo.local", "actions": ["read"], "ttl": 3600},
                )  # fmt: skip
                if minted.status_code != 201:
                    raise SystemExit(f"mint: {minted.status_code} {minted.text}")
                cred = minted.json()["credential"]["secret"]
                check = http.post("/oauth/introspect", headers=auth, data={"token": cred})
                if check.status_code != 200 or check.json().get("active") is not True:
                    raise SystemExit(f"introspect: {check.status_code} {check.text}")
            script = here / "introspect.lua"
            script.write_text(LUA)
            if args.client:  # RFC 7662 §2.1: the resource server authenticates as a client
                basic = base64.b64encode(f"bench-rs:{secret}".encode()).decode()
                caller = f"Basic {basic}"
            else:
                caller = f"Bearer {token}"
            env = {**os.environ, "AUTH": caller, "CRED": cred}
            wrk(port, script, args.warmup, args.conns, env)
            runs = []
            for r in range(args.reps):
                cpu0 = cpu_seconds(proc.pid)
                runs.append(wrk(port, script, args.duration, args.conns, env))
                x = runs[-1]
                # CPU time of the server per request: noise on a shared machine moves it least.
                x["cpu_ms"] = (cpu_seconds(proc.pid) - cpu0) * 1000 / max(x["requests"], 1)
                print(
                    f"  rep {r + 1}: {x['rps']:,.0f}/s  CPU {x['cpu_ms']:.3f} ms/request  "
                    f"p50 {x['p50_ms']:.1f} ms  "
                    f"p99 {x['p99_ms']:.1f} ms  non-2xx {x['non2xx']:.0f}  "
                    f"errors {x['errors']:.0f}",
                    flush=True,
                )
            keys = ("rps", "cpu_ms", "p50_ms", "p99_ms")
            med = {k: statistics.median(x[k] for x in runs) for k in keys}
            lo, hi = min(x["cpu_ms"] for x in runs), max(x["cpu_ms"] for x in runs)
            print(
                f"\nPOST /oauth/introspect, {args.conns} connections, median of {args.reps} x "
                f"{args.duration}: {med['rps']:,.0f}/s  CPU {med['cpu_ms']:.3f} ms/request "
                f"(spread {lo:.3f}-{hi:.3f})  "
                f"p50 {med['p50_ms']:.1f} ms  "
                f"p99 {med['p99_ms']:.1f} ms  (target ≥ 3,000/s)"
            )
            if args.profile:
                profile(proc.pid, port, script, env, here)
                if args.profile_raw is not None:
                    shutil.copy(here / "profile.txt", args.profile_raw)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                after = http.post("/oauth/introspect", headers=auth, data={"token": cred})
            if after.json().get("active") is not True:  # a revoked credential is not measured
                raise SystemExit(f"the credential is no longer active after the runs: {after.text}")
        finally:
            stop(proc)
            idp.close()


if __name__ == "__main__":
    main()
