#!/usr/bin/env bash
# Runs Keybrake on this machine: the control service and Envoy with the
# filter, listening on 127.0.0.1:10000 (admin API at /admin/, Stripe at /stripe/).
#
# Envoy reaches the control service over its Unix sockets (mode 0600 in a 0700
# directory under the data directory): only this user can open them, so a job
# holding a vault key cannot ask the control service for the real key itself.
# A job running as this same user could still read Envoy's memory (which holds
# the real key while it forwards a call): run jobs as another user or in a
# container.
#
# Environment:
#   KEYBRAKE_STRIPE_SECRET_KEY  the real Stripe key (or ..._FILE); a placeholder test key if unset
#   KEYBRAKE_ADMIN_KEY          the admin key (or ..._FILE); generated and printed if unset
#   KEYBRAKE_STRIPE_URL         Stripe upstream, default https://api.stripe.com
#                               (e.g. http://127.0.0.1:12111 for a local stand-in)
#   KEYBRAKE_LISTEN             default 127.0.0.1:10000
#   KEYBRAKE_DATA_DIR           default ./keybrake-data
#   KEYBRAKE_GRPC_LISTEN        the control service's gRPC socket (Envoy's filter calls it),
#                               default unix:$KEYBRAKE_DATA_DIR/run/grpc.sock (a unix: path here:
#                               TCP needs mutual TLS, for gateways on other hosts)
#   KEYBRAKE_HTTP_SOCKET        the admin API's socket that Envoy routes /admin/ to (its
#                               X-Forwarded-For is believed), default $KEYBRAKE_DATA_DIR/run/http.sock
#   KEYBRAKE_HTTP_LISTEN        the admin API on TCP for health, metrics and direct calls,
#                               default 127.0.0.1:8081 (X-Forwarded-For ignored there)
#   KEYBRAKE_ENVOY_ADMIN_PORT   Envoy's admin port on 127.0.0.1, default 9901
#   KEYBRAKE_GATEWAY_URL        where the MCP endpoint (/mcp) sends tool calls: this gateway,
#                               default http://$KEYBRAKE_LISTEN (127.0.0.1 for a wildcard address)
#   KEYBRAKE_FX_RATES_FILE      JSON FX rates loaded at start (see README)
#   KEYBRAKE_BIN                a control service binary to run instead of building one
# Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2

wasm=$(scripts/build-filter.sh)
if [ -z "${KEYBRAKE_BIN:-}" ]; then
  cargo build --release --quiet -p keybrake-control
  KEYBRAKE_BIN=target/release/keybrake
fi
run_dir=$(mktemp -d -t keybrake.XXXXXX)

if [ -z "${KEYBRAKE_ADMIN_KEY:-}" ] && [ -z "${KEYBRAKE_ADMIN_KEY_FILE:-}" ]; then
  KEYBRAKE_ADMIN_KEY="kb_admin_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export KEYBRAKE_ADMIN_KEY
  generated_admin=1
fi
if [ -z "${KEYBRAKE_STRIPE_SECRET_KEY:-}" ] && [ -z "${KEYBRAKE_STRIPE_SECRET_KEY_FILE:-}" ]; then
  echo "KEYBRAKE_STRIPE_SECRET_KEY is not set: using a placeholder test key (Stripe will refuse it)." >&2
  export KEYBRAKE_STRIPE_SECRET_KEY=sk_test_placeholder_set_KEYBRAKE_STRIPE_SECRET_KEY
fi
KEYBRAKE_DATA_DIR=$(realpath -m "${KEYBRAKE_DATA_DIR:-$PWD/keybrake-data}")
export KEYBRAKE_DATA_DIR
export KEYBRAKE_GRPC_LISTEN=${KEYBRAKE_GRPC_LISTEN:-unix:$KEYBRAKE_DATA_DIR/run/grpc.sock}
export KEYBRAKE_HTTP_SOCKET=${KEYBRAKE_HTTP_SOCKET:-$KEYBRAKE_DATA_DIR/run/http.sock}
export KEYBRAKE_HTTP_LISTEN=${KEYBRAKE_HTTP_LISTEN:-127.0.0.1:8081}
case $KEYBRAKE_GRPC_LISTEN in
  unix:/*) ;;
  *) echo "KEYBRAKE_GRPC_LISTEN must be unix:/absolute/path here (Envoy runs on this host); got $KEYBRAKE_GRPC_LISTEN" >&2
     exit 2 ;;
esac
case $KEYBRAKE_HTTP_SOCKET in
  /*) ;;
  *) echo "KEYBRAKE_HTTP_SOCKET must be an absolute path; got $KEYBRAKE_HTTP_SOCKET" >&2; exit 2 ;;
esac
listen=${KEYBRAKE_LISTEN:-127.0.0.1:10000}
envoy_admin_port=${KEYBRAKE_ENVOY_ADMIN_PORT:-9901}
# The MCP endpoint's tool calls go through this gateway, with the agent's vault key.
case $listen in
  0.0.0.0:*|\[::\]:*) gateway_address=127.0.0.1:${listen##*:} ;;
  *) gateway_address=$listen ;;
esac
export KEYBRAKE_GATEWAY_URL=${KEYBRAKE_GATEWAY_URL:-http://$gateway_address}

pids=()
envoy_pid=
cleanup() {
  # Drain Envoy first so the filter delivers the audit records it queued.
  if [ -n "$envoy_pid" ]; then .venv/bin/python scripts/envoy_drain.py "$envoy_admin_port" --timeout 10 || true; fi
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

KEYBRAKE_ENVOY_ADMIN_URL=${KEYBRAKE_ENVOY_ADMIN_URL:-http://127.0.0.1:$envoy_admin_port} \
  "$KEYBRAKE_BIN" serve > "$run_dir/control.ready" &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$run_dir/control.ready" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$run_dir/control.ready" || { echo "control service did not start" >&2; exit 1; }

.venv/bin/python scripts/envoy_config.py --wasm "$wasm" --out "$run_dir/envoy.yaml" --listen "$listen" \
  --admin-port "$envoy_admin_port" \
  --control-grpc "$KEYBRAKE_GRPC_LISTEN" --control-http "unix:$KEYBRAKE_HTTP_SOCKET" \
  --stripe-url "${KEYBRAKE_STRIPE_URL:-https://api.stripe.com}"
envoy=$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
"$envoy" -c "$run_dir/envoy.yaml" --disable-hot-restart -l warning &
envoy_pid=$!
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$envoy_admin_port/ready" >/dev/null 2>&1 && break; sleep 0.1; done

cat <<MSG
Keybrake is running on http://$listen
  console:    http://$listen/admin/ui/   (log in with the admin key)
  admin API:  http://$listen/admin/vault_keys
  Stripe:     http://$listen/stripe   (base address for stripe.StripeClient)
              http://$listen/v1/...   (the root, for SDKs that take a host and a port: stripe-node)
  MCP:        http://$listen/mcp   (streamable HTTP for agents; Authorization: Bearer vk_...)
  data:       $KEYBRAKE_DATA_DIR
  control:    $KEYBRAKE_GRPC_LISTEN, unix:$KEYBRAKE_HTTP_SOCKET (user $(id -un) only)

  Run jobs as another user or in a container, never as $(id -un): a process
  of this user can open the control service's sockets and read Envoy's memory,
  which holds the real Stripe key while a call is forwarded.
MSG
if [ -n "${generated_admin:-}" ]; then echo "  admin key:  $KEYBRAKE_ADMIN_KEY"; fi
echo "Ctrl-C stops both."
wait -n "${pids[@]}"
