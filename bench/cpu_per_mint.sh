#!/usr/bin/env bash
# CPU milliseconds per mint of one `jit serve` process (utime+stime from /proc/<pid>/stat over
# an 8 s wrk run, divided by the mints wrk counted in those 8 s), three fresh starts. On a shared, noisy
# machine throughput swings by ±20 % between runs; CPU per mint moves by a few percent, so it is
# the figure to compare when changing the mint path.  Usage: bash bench/cpu_per_mint.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
P_IDP=${P_IDP:-39522}; P_JIT=${P_JIT:-39523}; P_REDIS=${P_REDIS:-39524}
OUT=$(mktemp -d)
for p in $P_IDP $P_JIT $P_REDIS; do  # a server left on a port would answer for this run's
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "port $p is in use" >&2; exit 1; fi
done
redis-server --port $P_REDIS --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile $OUT/redis.log
.venv/bin/python bench/support/idp.py $P_IDP $OUT/id-token & IDP=$!
sleep 1.5
mkdir -p $OUT/policies $OUT/keys
.venv/bin/jit keys rotate --dir $OUT/keys >/dev/null 2>&1
.venv/bin/jit audit keygen $OUT/audit.pem >/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $OUT/hmac
cat > $OUT/policies/b.yaml <<YAML
owner: bench
workloads:
  - issuer: bench
    claims: {sub: bench-workload}
grants:
  - {name: demo, issuer: jwt, resource: https://demo.local, actions: [read], max_ttl: 1h, approval: none}
YAML
cat > $OUT/jit.yaml <<YAML
public_url: http://127.0.0.1:$P_JIT
port: $P_JIT
redis_url: redis://127.0.0.1:$P_REDIS/0
policy_dir: $OUT/policies
identity:
  - {name: bench, issuer: "http://127.0.0.1:$P_IDP", audiences: [jit-broker], preset: generic, algorithms: [RS256]}
issuers:
  jwt: {type: jwt, config: {keys_dir: $OUT/keys, algorithm: EdDSA}}
audit: {signing_key_file: $OUT/audit.pem, hmac_key_file: $OUT/hmac}
logging: {format: json, level: WARNING}
YAML
export JIT_TOKEN=$(cat $OUT/id-token)
for r in 1 2 3; do
  .venv/bin/jit serve --config $OUT/jit.yaml > $OUT/jit.log 2>&1 & J=$!
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$P_JIT/readyz && break; sleep 0.1; done
  wrk -t2 -c32 -d3s -s bench/support/mint.lua http://127.0.0.1:$P_JIT >/dev/null
  t0=$(awk '{print $14+$15}' /proc/$J/stat)
  line=$(wrk -t2 -c32 -d8s -s bench/support/mint.lua http://127.0.0.1:$P_JIT | grep WRKRESULT)
  t1=$(awk '{print $14+$15}' /proc/$J/stat)
  rps=$(echo "$line" | sed 's/.*rps=\([0-9.]*\).*/\1/')
  bad=$(echo "$line" | sed 's/.*non2xx=\([0-9]*\).*/\1/')
  # a refused mint is cheap: a run with any non-2xx answer measures the wrong thing
  if [ "$bad" != 0 ]; then echo "$bad answers were not 2xx: $line" >&2; kill $J; exit 1; fi
  python3 -c "print(f'mints/s {$rps:.0f}  CPU ms per mint {($t1-$t0)*1000/$(getconf CLK_TCK)/($rps*8):.3f}')"
  kill $J; wait $J 2>/dev/null || true
done
kill $IDP; redis-cli -p $P_REDIS shutdown nosave >/dev/null; rm -rf $OUT
