#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on a loopback port, for tests and benchmarks.
#   scripts/pg-cluster.sh start [PORT]   prints the admin URL (postgres://keybrake@127.0.0.1:PORT/postgres);
#                                        without PORT: 55432, or a free port if another checkout holds it
#   scripts/pg-cluster.sh stop
# Installs PostgreSQL from Debian's packages if missing (scripts/setup.sh postgres).
# The cluster lives in target/pg (owned by the `postgres` system user when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/target/pg
port=${2:-}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for p in 55432 $(seq 55433 55532); do port_free "$p" && { echo "$p"; return; }; done
  echo "no free port in 55432-55532" >&2; return 1
}

pg_bin() {
  local v
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rn); do
    [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ] && { echo "/usr/lib/postgresql/$v/bin"; return; }
  done
  return 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    scripts/setup.sh postgres >&2
    bin=$(pg_bin)
    if [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      port=$(sed -n 4p "$dir/data/postmaster.pid")
    else
      [ -n "$port" ] || port=$(free_port)
      rm -rf "$dir"; mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown postgres "$dir"
      as_owner "$bin/initdb" -D "$dir/data" -U keybrake --auth=trust -E UTF8 >/dev/null
      # fsync stays on: the tests check durability. Small settings for a 2-core machine.
      as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 300 -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=64MB" start >/dev/null
    fi
    echo "postgres://keybrake@127.0.0.1:$port/postgres"
    ;;
  stop)
    bin=$(pg_bin) || exit 0
    [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac
