#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run):
#   system deps → cargo fmt --check → cargo clippy -D warnings → cargo test (unit + integration,
#   the integration tests start their own PowerDNS) → scripts/check-deploy.sh → a 5-second
#   smoke run of scripts/demo.sh.
# Every step runs even after a failure, so one run reports everything; the exit status is
# non-zero if any step failed. Ends with cargo's test summary totals as `N passed, N failed`.
#
# Env: SKIP_DEPS=1 (skip install-deps), SKIP_DEMO=1 (skip the demo smoke run).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

failed_steps=()
step() {  # step NAME CMD...
  local name="$1" start=$SECONDS rc
  shift
  printf '\n==== %s\n' "$name"
  "$@"
  rc=$?
  printf '==== %s: %s (%ss)\n' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - start))
  ((rc == 0)) || failed_steps+=("$name")
  return 0
}

if [[ ${SKIP_DEPS:-0} != 1 ]]; then
  step "install deps" bash scripts/install-deps.sh
  # Without PowerDNS the integration tests cannot run at all: stop here.
  if [[ ${#failed_steps[@]} -gt 0 ]]; then
    echo "install-deps failed; not running the tests" >&2
    exit 1
  fi
fi

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets -- -D warnings

TEST_LOG="$ROOT/target/test-output.log"
mkdir -p "$ROOT/target"
TEST_RC=1
run_tests() {
  # --no-fail-fast: every test binary runs and reports, so the totals below cover all of them.
  # tee keeps the full output visible; the log is read back for the totals.
  cargo test --all-targets --no-fail-fast 2>&1 | tee "$TEST_LOG"
  TEST_RC=${PIPESTATUS[0]}
  return "$TEST_RC"
}
step "cargo test" run_tests

step "check-deploy" bash scripts/check-deploy.sh

if [[ ${SKIP_DEMO:-0} != 1 ]]; then
  # The debug binary cargo test just built: a release build would add minutes for a smoke test.
  step "demo smoke (5 s)" env DEMO_SECONDS=5 DEMO_PROFILE=debug SKIP_DEPS=1 bash scripts/demo.sh
fi

printf '\n==== summary\n'
# cargo prints one `test result:` line per test binary; add them up. The total is only printed
# when it explains cargo's exit status: cargo passed, or failed with at least one failed test
# (not a compile error or a test binary that crashed before its summary).
passed=0 failed=0 results=0
while read -r p f; do
  passed=$((passed + p)) failed=$((failed + f)) results=$((results + 1))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p' "$TEST_LOG" 2>/dev/null)
grep '^test result:' "$TEST_LOG" 2>/dev/null || true
if ((${#failed_steps[@]})); then
  echo "failed steps: ${failed_steps[*]}"
fi
if ((results > 0)) && { ((TEST_RC == 0)) || ((failed > 0)); } &&
  ! grep -q '^error: could not compile' "$TEST_LOG" &&
  ! grep -q "process didn't exit successfully.*signal" "$TEST_LOG"; then
  echo "${passed} passed, ${failed} failed"
fi
((${#failed_steps[@]} == 0))
