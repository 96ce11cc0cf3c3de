#!/usr/bin/env bash
# Mutation testing (cosmic-ray, ADR 0020) over the security-critical modules. NOT in CI: it runs
# the chosen tests once per mutant, which takes tens of minutes per subset.
#
#   bash tests/mutation/run.sh                 every subset, one after the other
#   bash tests/mutation/run.sh identity auth   only these subsets
#   bash tests/mutation/run.sh --recheck identity
#                                              run only the survivors of the last run again,
#                                              with the tests as they are now
#
# Subsets: identity (verifier + presets), auth (api/auth), policy (decide), compile (policy
# compile), leases (manager), approvals (service + people). Each runs in its own copy of the work tree (cosmic-ray
# edits the module files in place) at the lowest CPU priority; the report of each lands in
# build/mutation/<subset>.txt (survivors with their diffs, and the score) and <subset>.html.
# docs/testing.md says what survived and why.
#
# Redis must answer on 127.0.0.1:6379 (the lease, API and approval tests use it); run
# `bash tests/run.sh` once first (it creates .venv and installs cosmic-ray with the test extras).
set -euo pipefail

# All in one function, so that bash has read the whole script before it runs any of it (the
# script may be edited while a long run is under way).
main() {
  cd "$(dirname "$0")/../.."
  ROOT=$PWD
  PY="$ROOT/.venv/bin/python"
  BIN="$ROOT/.venv/bin"
  OUT="$ROOT/build/mutation"
  WORK="${JIT_MUTATION_DIR:-${TMPDIR:-/tmp}/jit-mutation}"
  mkdir -p "$OUT" "$WORK"

  "$PY" -c "import cosmic_ray" 2>/dev/null || "$PY" -m pip install -q 'cosmic-ray>=8.4'

  declare -A MODULES TESTS TIMEOUT
  MODULES[identity]='"broker/identity/verifier.py", "broker/identity/presets.py"'
  TESTS[identity]="tests/unit/test_identity_verifier.py tests/unit/test_identity_presets.py tests/unit/test_identity_dev.py"
  TIMEOUT[identity]=60
  MODULES[auth]='"broker/api/auth.py"'
  TESTS[auth]="tests/integration/test_api.py tests/security/test_authz_matrix.py"
  TIMEOUT[auth]=180
  MODULES[policy]='"broker/policy/decide.py"'
  TESTS[policy]="tests/unit/test_policy_decide.py tests/unit/test_policy_approval.py tests/unit/test_policy_properties.py"
  TIMEOUT[policy]=90
  MODULES[compile]='"broker/policy/compile.py"'
  TESTS[compile]="tests/unit/test_policy_decide.py tests/unit/test_policy_approval.py tests/unit/test_policy_lint.py"
  TIMEOUT[compile]=90
  MODULES[leases]='"broker/leases/manager.py"'
  TESTS[leases]="tests/unit/test_leases.py tests/integration/test_leases_redis.py"
  TIMEOUT[leases]=90
  MODULES[approvals]='"broker/approvals/service.py", "broker/approvals/people.py"'
  TESTS[approvals]="tests/integration/test_approvals.py tests/unit/test_policy_approval.py"
  TIMEOUT[approvals]=120

  # The mutants worth a test run: negations, boolean flips, and/or, boundaries (< vs <=),
  # equality and identity flips, exceptions swallowed, loops skipped, break/continue. Arithmetic
  # swaps (+ to **, << ...), number and variable replacement and decorator removal are left out:
  # they multiply the run time for mutants that are mostly equivalent or crash at import.
  KEEP='Gt_GtE|GtE_Gt|Lt_LtE|LtE_Lt|Eq_NotEq|NotEq_Eq|Is_IsNot|IsNot_Is'
  EXCLUDE='"core/ReplaceBinaryOperator_.*", "core/ReplaceUnaryOperator_(?!Delete_Not$).*",
    "core/ReplaceComparisonOperator_(?!('"$KEEP"')$).*", "core/NumberReplacer",
    "core/VariableReplacer", "core/VariableInserter", "core/RemoveDecorator"'

  recheck=""
  if [ "${1:-}" = "--recheck" ]; then recheck=1; shift; fi
  subsets=("$@")
  [ ${#subsets[@]} -gt 0 ] || subsets=(identity auth policy compile leases approvals)

  for subset in "${subsets[@]}"; do
    [ -n "${MODULES[$subset]:-}" ] || { echo "unknown subset $subset"; exit 2; }
    dir="$WORK/$subset"
    if [ -n "$recheck" ]; then
      [ -f "$dir/session.sqlite" ] || { echo "no session for $subset to recheck"; exit 2; }
      echo "== mutation testing: the survivors of $subset, against the tests as they are now"
      rm -rf "$dir/tests"
      git ls-files -z -co --exclude-standard tests | tar --null -T - -cf - | tar -xf - -C "$dir"
      (
        cd "$dir"
        "$PY" -c "import sqlite3; c = sqlite3.connect('session.sqlite'); c.execute(\"delete from work_results where test_outcome = 'SURVIVED'\"); c.commit()"
        nice -n 19 "$BIN/cosmic-ray" exec mutation.toml session.sqlite
        "$PY" "$ROOT/tests/mutation/survivors.py" session.sqlite > "$OUT/$subset.txt"
      )
      tail -n 1 "$OUT/$subset.txt"
      continue
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    # A copy of the tracked and new (not ignored) files: cosmic-ray rewrites modules in place.
    git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$dir"
    cat > "$dir/mutation.toml" <<EOF
[cosmic-ray]
module-path = [${MODULES[$subset]}]
timeout = ${TIMEOUT[$subset]}
excluded-modules = []
test-command = "$PY -m pytest -x -q -p no:cacheprovider ${TESTS[$subset]}"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = [$EXCLUDE]
EOF
    echo "== mutation testing: $subset (${MODULES[$subset]})"
    (
      cd "$dir"
      # The copy's broker/ must be the one imported (the current directory comes first).
      "$PY" -c "import broker, sys; sys.exit(not broker.__file__.startswith('$dir'))"
      "$BIN/cosmic-ray" init mutation.toml session.sqlite
      "$BIN/cr-filter-operators" session.sqlite mutation.toml
      start=$(date +%s)
      if [ -n "${JIT_MUTATION_DRY:-}" ]; then  # only count the mutants that would run
        "$PY" -c "import sqlite3; c = sqlite3.connect('session.sqlite'); print('$subset:', c.execute('select count(*) from work_items where job_id not in (select job_id from work_results)').fetchone()[0], 'mutants')"
        exit 0
      fi
      nice -n 19 "$BIN/cosmic-ray" exec mutation.toml session.sqlite
      echo "$subset: $(( $(date +%s) - start )) s" > "$OUT/$subset.time"
      "$PY" "$ROOT/tests/mutation/survivors.py" session.sqlite > "$OUT/$subset.txt"
      "$BIN/cr-html" session.sqlite > "$OUT/$subset.html"
    )
    [ -n "${JIT_MUTATION_DRY:-}" ] || tail -n 4 "$OUT/$subset.txt"
  done
}

main "$@"
