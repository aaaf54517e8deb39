#!/usr/bin/env bash
# Keybrake's test command (what CI runs): set-up, formatting, lints (native and
# wasm), the built filter in an in-process proxy-wasm host and the shared crate's
# tests on wasm32, unit and property tests, a short fuzzing run, then the
# end-to-end tests against a real Envoy, the real control service and a Stripe
# stand-in, all on loopback.
#   scripts/test.sh              everything
#   scripts/test.sh -k charge    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's duration is printed when it ends, and all of them with the total
# at exit, passed or failed (the budget is in DEVELOPERS.md).
steps=() current="" step_started=$SECONDS
end_step() {
  [ -n "$current" ] || return 0
  local took=$((SECONDS - step_started))
  steps+=("$(printf '%6ss  %s' "$took" "$current")")
  printf '=== %s: %ss\n' "$current" "$took"
  current=""
}
step() { end_step; current="$*"; step_started=$SECONDS; printf '\n=== %s\n' "$*"; }
summary() {
  local status=$?
  end_step
  printf '\n=== durations\n'
  printf '%s\n' "${steps[@]}"
  printf '%6ss  total (%s)\n' "$SECONDS" "$([ "$status" = 0 ] && echo passed || echo "FAILED, exit $status")"
}
cleanup() { summary; [ -z "${pg_started:-}" ] || scripts/pg-cluster.sh stop; }
trap cleanup EXIT

step "set-up"
scripts/setup.sh
step "format"
cargo fmt --all --check
step "clippy (native)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "clippy (wasm32)"
scripts/build-filter.sh --clippy
step "the filter built, and keybrake-core's tests on wasm32 under Node"
# The .wasm Envoy loads: the unit tests below drive it in an in-process proxy-wasm host (filter-host, wasmi).
scripts/build-filter.sh >/dev/null
scripts/build-filter.sh --core-tests
step "PostgreSQL (a throwaway cluster on loopback)"
pg_url=$(scripts/pg-cluster.sh start)
pg_started=1
# Every storage test runs against SQLite and this server; missing it is an error, not a skip.
export KEYBRAKE_TEST_DATABASE_URL=$pg_url KEYBRAKE_REQUIRE_POSTGRES=1
step "unit and property tests"
cargo test --workspace --quiet
step "deterministic simulation (10,000 seeds and the regression seeds; scripts/sim.sh runs more)"
# The real filter flow and control-service code over a simulated network, clock and upstream (SECURITY.md).
cargo run --quiet -p keybrake-sim -- --seeds 0..10000 --regressions sim/regressions.txt --threads "$(nproc)"
step "build"
scripts/build-filter.sh
cargo build --quiet -p keybrake-control
step "fuzzing (known reproducers, then 20 s per parser)"
scripts/fuzz.sh 20
step "end-to-end tests"
.venv/bin/pytest "$@"
if [ $# -eq 0 ]; then
  step "chaos run of the real stack (2 minutes; scripts/chaos.sh)"
  scripts/chaos.sh 2
  step "end-to-end tests of the control service on PostgreSQL (API, caps, dedup, audit, MCP)"
  KEYBRAKE_E2E_BACKEND=postgres .venv/bin/pytest tests/e2e/test_gateway.py tests/e2e/test_caps.py \
    tests/e2e/test_dedup.py tests/e2e/test_operate.py tests/e2e/test_mcp.py
fi
