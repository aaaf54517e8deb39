#!/usr/bin/env bash
# Keybrake's deterministic simulator, for a long run (sim/README.md, SECURITY.md
# "Deterministic simulation"):
#   scripts/sim.sh [SEEDS] [sim options]    SEEDS: a count (0..N) or A..B; default 100000
#   scripts/sim.sh 0..20000 --no-shrink
# Builds the simulator optimized (a profile of its own, without LTO, in
# target/sim/), runs the seeds over $SIM_THREADS threads (default: twice the
# CPUs: a run waits on its store's threads half the time), prints seeds run,
# simulated calls per second, faults injected and violations found, and shrinks
# the first failing seed. Exit status 1 when an invariant did not hold.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100000}
shift || true
threads=${SIM_THREADS:-$(( $(nproc) * 2 ))}
cargo build --quiet -p keybrake-sim --profile sim \
  --config 'profile.sim.inherits="release"' --config 'profile.sim.lto=false' \
  --config 'profile.sim.codegen-units=16' --config 'profile.sim.panic="unwind"' \
  --config 'profile.sim.incremental=false'
echo "=== sim: seeds $seeds, $threads threads ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
exec target/sim/sim --seeds "$seeds" --threads "$threads" "$@"
