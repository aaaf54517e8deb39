#!/usr/bin/env bash
# A chaos run of the real stack (tests/chaos/chaos.py): two Envoys, two control
# replicas on a PostgreSQL of its own, the Stripe stand-in without dedup, and
# SDK clients with Ray-like retries, while a nemesis kills and pauses replicas,
# restarts PostgreSQL and Envoy, fills PostgreSQL's disk (as root) and makes the
# upstream lose answers; then a checker verifies the invariants (SECURITY.md).
#   scripts/chaos.sh [MINUTES] [--seed N]     (default: 2 minutes; what scripts/test.sh runs)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-2}
shift || true
scripts/setup.sh python postgres >&2
[ -x target/wasm/keybrake_filter.wasm ] || [ -f target/wasm/keybrake_filter.wasm ] || scripts/build-filter.sh >&2
[ -x target/debug/keybrake ] || cargo build --quiet -p keybrake-control
exec .venv/bin/python tests/chaos/chaos.py --minutes "$minutes" "$@"
