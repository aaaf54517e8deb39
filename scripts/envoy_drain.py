#!/usr/bin/env python3
"""Drains a Keybrake Envoy before it is stopped, so nothing queued is lost.

Envoy runs the filter's shutdown hook only after its workers stopped, when no
callout can be sent any more. So a clean stop first drains the listeners
(`POST /drain_listeners?graceful`, workers keep running), then waits until the
filter's outboxes have delivered everything they queued
(`keybrake.outbox_queued == outbox_delivered + audit_records_dropped`), and
only then may Envoy be terminated.

Usage: envoy_drain.py ADMIN_PORT [--timeout SECONDS]; exit 0 when drained.
"""
import argparse
import re
import sys
import time
import urllib.request


def counters(admin: str) -> dict[str, int]:
    text = urllib.request.urlopen(f"{admin}/stats?filter=keybrake", timeout=5).read().decode()
    return {m[1]: int(m[2]) for m in re.finditer(r"^wasmcustom\.keybrake\.([a-z_]+): (\d+)$", text, re.M)}


def pending(admin: str) -> int:
    c = counters(admin)
    return c.get("outbox_queued", 0) - c.get("outbox_delivered", 0) - c.get("audit_records_dropped", 0)


def drain(admin_port: int, timeout: float = 10.0) -> bool:
    admin = f"http://127.0.0.1:{admin_port}"
    urllib.request.urlopen(urllib.request.Request(f"{admin}/drain_listeners?graceful", method="POST"), timeout=5).read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pending(admin) <= 0:
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("admin_port", type=int)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    if drain(a.admin_port, a.timeout):
        return 0
    print("envoy_drain: outbox not empty after the timeout (is the control service down?)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
