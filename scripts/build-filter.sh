#!/usr/bin/env bash
# Builds the Keybrake filter for wasm32-unknown-unknown and prints the .wasm path.
#   scripts/build-filter.sh              release build, copied to target/wasm/keybrake_filter.wasm
#   scripts/build-filter.sh --clippy     clippy on the wasm target, warnings denied
#   scripts/build-filter.sh --core-tests keybrake-core's tests compiled to wasm32 and run under
#                                        Node (wasm-bindgen-test-runner: scripts/setup.sh wasmtest)
#
# The compiler is the Rust that rust-toolchain.toml pins, through rustup, when
# rustup has it with the wasm32 target or can add them. Otherwise (offline
# machines) Debian's rustc-web builds std for wasm32 from its library sources
# and wasm-ld links. Either way the script says which compiler it used.
set -euo pipefail
cd "$(dirname "$0")/.."

channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)

# Whether rustup has (or can install) the pinned channel with the wasm32 target.
pinned_toolchain() {
  command -v rustup >/dev/null || return 1
  rustup run "$channel" rustc -V >/dev/null 2>&1 \
    || rustup toolchain install "$channel" --profile minimal -c clippy -c rustfmt -t wasm32-unknown-unknown \
      >/dev/null 2>&1 \
    || return 1
  rustup target list --installed --toolchain "$channel" 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add --toolchain "$channel" wasm32-unknown-unknown >/dev/null 2>&1
}

# wasm_cargo SUBCOMMAND ARGS...: runs cargo for wasm32 with whichever toolchain is
# there; prints the target directory (the build's output is under it).
wasm_cargo() {
  local sub=$1; shift
  if pinned_toolchain; then
    echo "[build-filter] $(rustup run "$channel" rustc -V) (rustup, pinned in rust-toolchain.toml)" >&2
    rustup run "$channel" cargo "$sub" --target wasm32-unknown-unknown "$@" >&2
    echo target/wasm32-unknown-unknown
    return
  fi
  scripts/setup.sh wasm >&2
  echo "[build-filter] $(/usr/bin/rustc -V) (Debian's rustc-web: rustup has no Rust $channel" \
       "with the wasm32 target here)" >&2
  local wrapper=() std=std,panic_abort args=() lints=""
  if [ "$sub" = clippy ]; then
    # Debian's clippy-driver, called directly: rustup's cargo-clippy would pick rustup's
    # sysroot. What follows `--` goes to it through CLIPPY_ARGS (cargo check takes none).
    sub=check
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    for a in "$@"; do lints+="$a"__CLIPPY_HACKERY__; done
    set -- "${args[@]}"
    wrapper=(RUSTC_WORKSPACE_WRAPPER=/usr/bin/clippy-driver CLIPPY_ARGS="$lints")
  fi
  # A test binary links libtest as well.
  [ "$sub" = test ] && std=std,panic_abort,test
  env PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 "${wrapper[@]}" \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld CARGO_TARGET_DIR=target/debian-wasm \
      /usr/bin/cargo "$sub" --target wasm32-unknown-unknown -Zbuild-std="$std" "$@" >&2
  echo target/debian-wasm/wasm32-unknown-unknown
}

case "${1:-}" in
  --clippy)
    wasm_cargo clippy --release -p keybrake-filter -- -D warnings >/dev/null
    exit 0 ;;
  --core-tests)
    runner=${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen-test-runner
    [ -x "$runner" ] || { echo "[build-filter] $runner is missing: run scripts/setup.sh wasmtest" >&2; exit 1; }
    # Example-based tests only: proptest's properties are native (cargo test runs them).
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$runner wasm_cargo test -p keybrake-core --lib >/dev/null
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--clippy | --core-tests]" >&2; exit 2 ;;
esac
out=$(wasm_cargo build --release -p keybrake-filter | tail -n 1)
mkdir -p target/wasm
cp "$out/release/keybrake_filter.wasm" target/wasm/keybrake_filter.wasm
echo "$PWD/target/wasm/keybrake_filter.wasm"
