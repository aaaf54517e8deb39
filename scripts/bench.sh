#!/usr/bin/env bash
# Keybrake's benchmark harness (issue 8): bare Envoy against Keybrake on loopback.
#   scripts/bench.sh                       build, run, print the table
#   KEYBRAKE_BENCH_ROUNDS=3 scripts/bench.sh
#   KEYBRAKE_BENCH_DATABASE_URL=postgres://... scripts/bench.sh   (D on PostgreSQL too)
#   KEYBRAKE_BENCH_SKIP_BUILD=1 scripts/bench.sh                  (use the binaries already built)
#   KEYBRAKE_BIN=/path/keybrake KEYBRAKE_WASM=/path/filter.wasm scripts/bench.sh   (measure other builds)
# More settings (rounds, durations, levels): see scripts/bench_run.py.
#
# Installs wrk and h2load (Debian) if missing, builds the release binaries
# (control service, bench tools) and the filter, then runs scripts/bench_run.py,
# which starts the bench upstream, the control service and two Envoys on free
# loopback ports, measures A, B, C and D in alternating rounds, and writes
# target/bench/results.json and target/bench/results.md. Everything it started
# is stopped on exit. Not part of the test suite: no timed assertion anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bench] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

missing=()
for p in wrk nghttp2-client; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/setup.sh python   # the venv with the stock Envoy

if [ "${KEYBRAKE_BENCH_SKIP_BUILD:-}" != 1 ]; then
  # KEYBRAKE_BIN / KEYBRAKE_WASM measure binaries built elsewhere (say, of another commit).
  if [ -n "${KEYBRAKE_BIN:-}" ]; then
    log "building the bench tools (control service: $KEYBRAKE_BIN)"
    cargo build --release --quiet -p keybrake-bench
  else
    log "building the control service and the bench tools (release)"
    cargo build --release --quiet -p keybrake-control -p keybrake-bench
  fi
  if [ -z "${KEYBRAKE_WASM:-}" ]; then
    log "building the filter"
    scripts/build-filter.sh >/dev/null
  fi
fi

out=${KEYBRAKE_BENCH_OUT:-target/bench}
mkdir -p "$out/run"
runner=
cleanup() {
  local rc=$?
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  # Whatever the runner started and could not stop (pids it recorded).
  if [ -f "$out/run/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done < "$out/run/pids"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

.venv/bin/python scripts/bench_run.py "$@" &
runner=$!
wait "$runner"
