#!/usr/bin/env bash
# `jit serve --workers N` against `--workers 1`: the full mint (POST /v1/credentials, real Redis
# with AOF everysec, audit chain on, the jwt issuer), same wrk load, alternating runs.
#
#   bash bench/workers.sh        from the project root, after `bash tests/run.sh` made .venv
#   env: WORKERS="1 2" DURATION=10s REPS=3 CONNS=32 THREADS=2 WARMUP=3s
#
# Prints each run, the medians per worker count and the ratio to one worker. wrk shares the
# machine's cores with the broker and Redis: on a 2-core machine two workers compete with wrk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
WORKERS="${WORKERS:-1 2}"; DURATION="${DURATION:-10s}"; REPS="${REPS:-3}"; CONNS="${CONNS:-32}"
THREADS="${THREADS:-2}"; WARMUP="${WARMUP:-3s}"
P_IDP=39512; P_JIT=39513; P_REDIS=39514
OUT="$(mktemp -d "${TMPDIR:-/tmp}/jit-workers-XXXXXX")"
JIT=.venv/bin/jit; PY=.venv/bin/python
command -v wrk >/dev/null || { echo "wrk is needed (Debian package wrk)" >&2; exit 1; }
PIDS=(); SERVE=""
cleanup() {
  [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null && wait "$SERVE" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

redis-server --port $P_REDIS --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
  --dir "$OUT" --logfile "$OUT/redis.log" & PIDS+=($!)
"$PY" bench/support/idp.py $P_IDP "$OUT/id-token" & PIDS+=($!)
for _ in $(seq 50); do [ -s "$OUT/id-token" ] && redis-cli -p $P_REDIS ping >/dev/null 2>&1 && break; sleep 0.2; done

mkdir -p "$OUT/policies" "$OUT/keys"
"$JIT" keys rotate --dir "$OUT/keys" >/dev/null 2>&1
"$JIT" audit keygen "$OUT/audit-signing.pem" >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OUT/audit-hmac"
cat >"$OUT/policies/bench.yaml" <<YAML
owner: bench
workloads:
  - issuer: bench
    claims: {sub: bench-workload}
grants:
  - name: demo
    issuer: jwt
    resource: https://demo.local
    actions: [read]
    max_ttl: 1h
    approval: none
YAML
cat >"$OUT/jit.yaml" <<YAML
public_url: http://127.0.0.1:$P_JIT
host: 127.0.0.1
port: $P_JIT
redis_url: redis://127.0.0.1:$P_REDIS/0
policy_dir: $OUT/policies
identity:
  - {name: bench, issuer: "http://127.0.0.1:$P_IDP", audiences: [jit-broker], preset: generic, algorithms: [RS256]}
issuers:
  jwt: {type: jwt, config: {keys_dir: $OUT/keys, algorithm: EdDSA, max_ttl: 1h, default_ttl: 15m}}
audit: {signing_key_file: $OUT/audit-signing.pem, hmac_key_file: $OUT/audit-hmac}
logging: {format: json, level: WARNING}
YAML
export JIT_TOKEN; JIT_TOKEN=$(cat "$OUT/id-token")

start() {  # workers
  "$JIT" serve --config "$OUT/jit.yaml" --workers "$1" >>"$OUT/jit.log" 2>&1 & SERVE=$!
  for _ in $(seq 150); do curl -sf -o /dev/null "http://127.0.0.1:$P_JIT/readyz" && return 0; sleep 0.1; done
  echo "broker not ready:" >&2; tail -20 "$OUT/jit.log" >&2; exit 1
}
stop() { kill -TERM "$SERVE"; wait "$SERVE" || true; SERVE=""; }

for r in $(seq "$REPS"); do
  for n in $WORKERS; do
    start "$n"
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s bench/support/mint.lua "http://127.0.0.1:$P_JIT" >/dev/null
    line=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s bench/support/mint.lua \
      "http://127.0.0.1:$P_JIT" | grep '^WRKRESULT')
    echo "workers=$n rep=$r ${line#WRKRESULT }" | tee -a "$OUT/results.txt"
    stop
  done
done
"$PY" - "$OUT/results.txt" <<'PY'
import statistics, sys
rows = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1])]
med = {}
for n in sorted({r["workers"] for r in rows}, key=int):
    runs = [r for r in rows if r["workers"] == n]
    med[n] = {k: statistics.median(float(r[k]) for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
    bad = sum(int(r["non2xx"]) + int(r["errors"]) for r in runs)
    print(f"workers {n}: {med[n]['rps']:.0f} mints/s  p50 {med[n]['p50_ms']:.1f} ms  "
          f"p99 {med[n]['p99_ms']:.1f} ms  non-2xx or errors {bad}")
base = med[min(med, key=int)]["rps"]
for n in [n for n in med if n != min(med, key=int)]:
    print(f"ratio {n} workers / 1 worker: {med[n]['rps'] / base:.2f}")
PY
