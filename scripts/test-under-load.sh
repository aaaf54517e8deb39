#!/usr/bin/env bash
# Runs the whole suite (scripts/test.sh) from fresh clones of a commit while
# stress-ng keeps the CPUs busy, as CI's machine may be when other work runs
# beside it: a test that needs a quiet machine fails here first. Run it before
# you stop (DEVELOPERS.md, "Tests under load").
#   scripts/test-under-load.sh [RUNS] [REV]     RUNS loaded runs (3) of REV (HEAD), then one quiet run
# Environment: KEYBRAKE_LOAD_CPUS (busy workers, default: one per CPU),
# KEYBRAKE_LOAD_DIR (where the clones and logs go, default: a new /tmp dir),
# KEYBRAKE_LOAD_QUIET=0 (skip the quiet run) or =first (run it before the loaded ones).
# Only committed work is tested: each run is a fresh clone, as CI's is.
# A loaded run whose load ended before its tests did (stress-ng died) counts as
# failed: it did not show what it claims to. Every run's result and step
# durations (test.sh's own table) go to summary.md beside the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3} rev=${2:-HEAD}
cpus=${KEYBRAKE_LOAD_CPUS:-$(nproc)}
sha=$(git rev-parse "$rev")
base=${KEYBRAKE_LOAD_DIR:-$(mktemp -d /tmp/keybrake-load.XXXXXX)}
mkdir -p "$base"
command -v stress-ng >/dev/null || scripts/setup.sh load

stress=""
# A dead stress-ng stays a zombie until waited for, and kill -0 finds a zombie.
load_alive() { case $(ps -o stat= -p "$stress" 2>/dev/null) in '' | Z*) return 1 ;; esac; }
stop_load() { [ -z "$stress" ] || { kill "$stress" 2>/dev/null || true; wait "$stress" 2>/dev/null || true; stress=""; }; }
trap stop_load EXIT

results=() failed=0
summary="$base/summary.md"
printf '# scripts/test-under-load.sh: %s on %s, %s CPUs\n' "${sha:0:10}" "$(date -u '+%F %H:%M UTC')" "$(nproc)" >"$summary"
one_run() {  # name, loaded (1/0)
  local name=$1 loaded=$2 dir="$base/$1" started status load_note
  rm -rf "$dir"
  git clone -q "$PWD" "$dir"
  git -C "$dir" checkout -q "$sha"
  if [ "$loaded" = 1 ]; then
    stress-ng --cpu "$cpus" --quiet >/dev/null 2>&1 &
    stress=$!
  fi
  printf '[load] %s: %s of %s in %s (log: %s/test.log)\n' "$name" \
    "$([ "$loaded" = 1 ] && echo "loaded by $cpus busy CPU workers" || echo quiet)" "${sha:0:10}" "$dir" "$dir" >&2
  started=$SECONDS
  status=0
  (cd "$dir" && scripts/test.sh) >"$dir/test.log" 2>&1 || status=$?
  if [ "$loaded" = 1 ] && ! load_alive && [ "$status" = 0 ]; then status=load-lost; fi
  load_note="; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  stop_load
  # A clone's build takes some 10 GiB: keep its log, not its build, or four runs fill a small disk.
  rm -rf "$dir/target"
  results+=("$(printf '%-8s %-7s %6ss  %s' "$name" "$([ "$loaded" = 1 ] && echo loaded || echo quiet)" \
    "$((SECONDS - started))" "$(case $status in 0) echo passed ;; load-lost) echo "FAILED (the load ended first)" ;; *) echo "FAILED (exit $status)" ;; esac)")")
  if [ "$status" != 0 ]; then
    failed=$((failed + 1))
    grep -E '^(FAILED|ERROR) ' "$dir/test.log" | head -20 >&2 || true
  fi
  printf '[load] %s\n' "${results[-1]}" >&2
  {
    printf '\n## %s%s\n\n```\n%s\n' "${results[-1]}" "$load_note" "$dir/test.log"
    sed -n '/^=== durations$/,$p' "$dir/test.log"
    printf '```\n'
  } >>"$summary"
}

quiet=${KEYBRAKE_LOAD_QUIET:-1}
[ "$quiet" != first ] || one_run quiet 0
for i in $(seq 1 "$runs"); do one_run "loaded$i" 1; done
[ "$quiet" != 1 ] || one_run quiet 0
printf '\n%s\n' "runs of ${sha:0:10} (logs under $base, summary in $summary):"
printf '%s\n' "${results[@]}"
[ "$failed" = 0 ]
