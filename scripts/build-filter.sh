#!/usr/bin/env bash
# Builds the Keybrake filter for wasm32-unknown-unknown and prints the .wasm path.
#   scripts/build-filter.sh          release build, copied to target/wasm/keybrake_filter.wasm
#   scripts/build-filter.sh --clippy clippy on the wasm target, warnings denied
#
# Where the rustup toolchain has (or can add) the wasm32 standard library, the
# plain cargo build is used. Otherwise (offline machines) Debian's rustc-web
# builds std for wasm32 from its library sources and wasm-ld links.
set -euo pipefail
cd "$(dirname "$0")/.."

wasm_cargo() {
  local sub=$1; shift
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
     || rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    cargo "$sub" --release --target wasm32-unknown-unknown -p keybrake-filter "$@"
    echo target/wasm32-unknown-unknown/release
    return
  fi
  scripts/setup.sh wasm >&2
  local wrapper=()
  if [ "$sub" = clippy ]; then
    # Debian's clippy-driver, called directly: rustup's cargo-clippy would pick rustup's sysroot.
    sub=check
    wrapper=(RUSTC_WORKSPACE_WRAPPER=/usr/bin/clippy-driver
             CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
  fi
  env PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 "${wrapper[@]}" \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld CARGO_TARGET_DIR=target/debian-wasm \
      /usr/bin/cargo "$sub" --release --target wasm32-unknown-unknown -p keybrake-filter \
      -Zbuild-std=std,panic_abort "$@" >&2
  echo target/debian-wasm/wasm32-unknown-unknown/release
}

if [ "${1:-}" = --clippy ]; then
  wasm_cargo clippy -- -D warnings >/dev/null
  exit 0
fi
out=$(wasm_cargo build | tail -n 1)
mkdir -p target/wasm
cp "$out/keybrake_filter.wasm" target/wasm/keybrake_filter.wasm
echo "$PWD/target/wasm/keybrake_filter.wasm"
