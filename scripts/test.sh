#!/usr/bin/env bash
# Keybrake's test command (what CI runs): set-up, formatting, lints (native and
# wasm), unit and property tests, then the end-to-end tests against a real
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
step "unit and property tests"
cargo test --workspace --quiet
step "build"
scripts/build-filter.sh
cargo build --quiet -p keybrake-control
step "end-to-end tests"
.venv/bin/pytest "$@"
