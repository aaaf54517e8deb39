#!/usr/bin/env bash
# Keybrake's test command (what CI runs): set-up, formatting, lints (native and
# wasm), unit and property tests, a short fuzzing run, then the end-to-end tests against a real
# Envoy, the real control service and a Stripe stand-in, all on loopback.
#   scripts/test.sh              everything
#   scripts/test.sh -k charge    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s\n' "$*"; }

step "set-up"
scripts/setup.sh
step "format"
cargo fmt --all --check
step "clippy (native)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "clippy (wasm32)"
scripts/build-filter.sh --clippy
step "PostgreSQL (a throwaway cluster on loopback)"
pg_url=$(scripts/pg-cluster.sh start)
trap 'scripts/pg-cluster.sh stop' EXIT
# Every storage test runs against SQLite and this server; missing it is an error, not a skip.
export KEYBRAKE_TEST_DATABASE_URL=$pg_url KEYBRAKE_REQUIRE_POSTGRES=1
step "unit and property tests"
cargo test --workspace --quiet
step "build"
scripts/build-filter.sh
cargo build --quiet -p keybrake-control
step "fuzzing (known reproducers, then 20 s per parser)"
scripts/fuzz.sh 20
step "end-to-end tests"
.venv/bin/pytest "$@"
if [ $# -eq 0 ]; then
  step "end-to-end tests of the control service on PostgreSQL (API, caps, dedup, audit)"
  KEYBRAKE_E2E_BACKEND=postgres .venv/bin/pytest tests/e2e/test_gateway.py tests/e2e/test_caps.py \
    tests/e2e/test_dedup.py tests/e2e/test_operate.py
fi
