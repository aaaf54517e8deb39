#!/bin/bash
# preStop hook of the keybrake-egress Envoy (gateway.yaml): the in-pod twin of
# scripts/envoy_drain.py. Envoy runs the filter's shutdown only after its
# workers stopped, when no callout can be sent any more; so before the kubelet
# sends SIGTERM we
#   1. drain the listeners gracefully (POST /drain_listeners?graceful): for
#      --drain-time-s Envoy still serves while the Service drops this pod, and
#      closes connections as they finish;
#   2. wait until the filter's outboxes (audit records, settlements) have
#      delivered what they queued: outbox_queued == outbox_delivered + audit_records_dropped.
# The envoyproxy/envoy image has bash but no curl, hence /dev/tcp.
# Env: ENVOY_ADMIN_PORT (9901), DRAIN_SECONDS (15, = --drain-time-s), OUTBOX_TIMEOUT_SECONDS (10).
set -u
port=${ENVOY_ADMIN_PORT:-9901}
drain_seconds=${DRAIN_SECONDS:-15}
outbox_timeout=${OUTBOX_TIMEOUT_SECONDS:-10}

# admin METHOD PATH: prints the response (headers and body, CRs removed).
# HTTP/1.1 because Envoy refuses 1.0; the body may be chunked, which is fine
# for the few short lines read here.
admin() {
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n' "$1" "$2" >&3
  local line
  while IFS= read -r line <&3 || [ -n "$line" ]; do
    printf '%s\n' "${line%$'\r'}"
  done
  exec 3<&-
}

# counter NAME TEXT: the value of wasmcustom.keybrake.NAME in a /stats dump (0 if absent).
counter() {
  if [[ $2 =~ wasmcustom\.keybrake\.$1:\ ([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}

pending() {
  local stats
  stats=$(admin GET '/stats?filter=^wasmcustom\.keybrake\.' ) || return 1
  echo $(( $(counter outbox_queued "$stats") - $(counter outbox_delivered "$stats") - $(counter audit_records_dropped "$stats") ))
}

admin POST '/drain_listeners?graceful' >/dev/null || { echo "drain.sh: Envoy admin unreachable" >&2; exit 1; }
sleep "$drain_seconds"
deadline=$(( SECONDS + outbox_timeout ))
while [ "$SECONDS" -lt "$deadline" ]; do
  n=$(pending) || break
  [ "$n" -le 0 ] && exit 0
  sleep 0.2
done
echo "drain.sh: outbox not empty after ${outbox_timeout}s (is the control service down?)" >&2
exit 1
