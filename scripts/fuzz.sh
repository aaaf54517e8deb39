#!/usr/bin/env bash
# Fuzzes Keybrake's parsers with cargo-fuzz (libFuzzer): the form-body parser,
# path normalisation and scopes, Stripe pricing, money, the filter's plugin
# configuration and request headers, the admin API's requests. See
# docs/fuzzing.md.
#
#   scripts/fuzz.sh                      every target, 20 s each (what CI runs)
#   scripts/fuzz.sh 600                  every target, 10 minutes each
#   scripts/fuzz.sh 300 form_body money  only these targets
#
# First it replays the reproducers in fuzz/regressions/<target>/ (bugs found
# before: each must pass), then fuzzes every target for SECONDS_PER_TARGET
# seconds, starting from the seed corpus fuzz/corpus/<target>/. New inputs go
# to a temporary directory, so the committed corpus never grows. Any crash (a
# panic, a failed property, a timeout, running out of memory) fails the run;
# the input that caused it is saved in fuzz/artifacts/<target>/.
#
# Installs cargo-fuzz (pinned) if it is missing, idempotently. Environment:
#   KEYBRAKE_FUZZ_SANITIZER  none (default) or address: the code under test is
#                            safe Rust, so ASan finds nothing more; it costs a
#                            build of its own and fuzzing speed
#   KEYBRAKE_FUZZ_PARALLEL   targets fuzzed at once (default: the number of CPUs)
#   KEYBRAKE_FUZZ_CORPUS_OUT keep each target's grown corpus in DIR/<target>/
#   KEYBRAKE_FUZZ_TARGET_DIR build directory (default target/fuzz)
#   KEYBRAKE_FUZZ_CODEGEN_UNITS  16 (default): builds in about 60% of the time
#                            of cargo-fuzz's default of 1, at about the same
#                            speed of fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-20}
[ $# -gt 0 ] && shift
sanitizer=${KEYBRAKE_FUZZ_SANITIZER:-none}
parallel=${KEYBRAKE_FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 2)}
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${KEYBRAKE_FUZZ_TARGET_DIR:-target/fuzz}
codegen_units=${KEYBRAKE_FUZZ_CODEGEN_UNITS:-16}

log() { printf '[fuzz] %s\n' "$*" >&2; }

case "$seconds" in
  '' | *[!0-9]*) log "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]"; exit 2 ;;
esac

# cargo-fuzz passes -Z flags to cargo and rustc; on a stable toolchain this
# lets them through (a nightly toolchain ignores it).
export RUSTC_BOOTSTRAP=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

# libfuzzer-sys compiles libFuzzer (C++).
if ! command -v c++ >/dev/null; then
  log "installing a C++ compiler (g++)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet --force cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The fuzz crate is a workspace of its own; it uses the main workspace's
# versions of every shared dependency (its own Cargo.lock is not committed).
cp Cargo.lock fuzz/Cargo.lock

all_targets=$(cargo fuzz list)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets <<<"$all_targets"
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$all_targets" || { log "no fuzz target named $t (have: $(echo $all_targets))"; exit 2; }
done

# One target named: build only that one; otherwise all (one cargo run).
build_targets=()
[ ${#targets[@]} -eq 1 ] && build_targets=("${targets[0]}")
log "building ${#targets[@]} targets (sanitizer: $sanitizer) in $target_dir"
start=$SECONDS
cargo fuzz build -O -a -s "$sanitizer" --codegen-units "$codegen_units" --target-dir "$target_dir" \
  "${build_targets[@]}"
log "built in $((SECONDS - start)) s"
bin_dir=$target_dir/$triple/release

failed=()

# Known bugs stay fixed: every reproducer must run clean.
for t in "${targets[@]}"; do
  [ -d "fuzz/regressions/$t" ] || continue
  for input in "fuzz/regressions/$t"/*; do
    [ -f "$input" ] || continue
    if "$bin_dir/$t" -runs=1 "$input" >"$target_dir/regression.log" 2>&1; then
      log "regression ok: $input"
    else
      log "REGRESSION FAILS: $input"
      grep -E "panicked at|^assertion|^  left|^ right|SUMMARY" "$target_dir/regression.log" | head -8 >&2 || true
      failed+=("$t (regression $(basename "$input"))")
    fi
  done
done

work=$(mktemp -d "${TMPDIR:-/tmp}/keybrake-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

fuzz_one() {
  local t=$1 corpus=$work/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  local args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="fuzz/artifacts/$t/")
  [ -f "fuzz/dicts/$t.dict" ] && args+=(-dict="fuzz/dicts/$t.dict")
  # New inputs are written to the first directory only: the temporary one.
  "$bin_dir/$t" "${args[@]}" "$corpus" "fuzz/corpus/$t" >"$work/$t.log" 2>&1
}

report() {
  local t=$1 rc=$2
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
  if [ "$rc" = 0 ]; then
    log "ok: $t (${runs:-?} runs in ${seconds} s)"
  else
    log "CRASH: $t (exit $rc); the input is in fuzz/artifacts/$t/"
    grep -E "panicked at|^assertion|^  left|^ right|^SUMMARY|Test unit written to|^ERROR" "$work/$t.log" | head -12 >&2 || true
    failed+=("$t")
  fi
  if [ -n "${KEYBRAKE_FUZZ_CORPUS_OUT:-}" ]; then
    mkdir -p "$KEYBRAKE_FUZZ_CORPUS_OUT/$t"
    cp -n "$work/corpus/$t"/* "$KEYBRAKE_FUZZ_CORPUS_OUT/$t/" 2>/dev/null || true
  fi
}

log "fuzzing ${#targets[@]} targets for $seconds s each, $parallel at a time"
start=$SECONDS
pids=()
names=()
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  pids+=($!)
  names+=("$t")
  if [ ${#pids[@]} -ge "$parallel" ]; then
    rc=0; wait "${pids[0]}" || rc=$?
    report "${names[0]}" "$rc"
    pids=("${pids[@]:1}"); names=("${names[@]:1}")
  fi
done
while [ ${#pids[@]} -gt 0 ]; do
  rc=0; wait "${pids[0]}" || rc=$?
  report "${names[0]}" "$rc"
  pids=("${pids[@]:1}"); names=("${names[@]:1}")
done
log "fuzzed in $((SECONDS - start)) s"

if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  log "reproduce with $bin_dir/<target> <input>; see docs/fuzzing.md"
  exit 1
fi
log "no crash in ${#targets[@]} targets"
