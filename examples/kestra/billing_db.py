"""A stand-in for the billing database the flows record charges in, over
HTTP, with the failures that make Kestra retry a task after its charge.

    GET  /customers_due?period=2026-06   the customers to bill: [{"id", "amount_cents"}]
    POST /charges                        record a charge (JSON); fails while failures are configured
    GET  /charges                        what was recorded
    GET  /stats                          write attempts per customer

    python examples/kestra/billing_db.py --port 8900 --customers '[{"id": "cus_1", "amount_cents": 2999}]' \\
        --fail-first 2        # the first two writes fail with 503, as during a connection-pool outage
"""
from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlparse


class BillingDB:
    """The database's state. ``fail_first`` write attempts fail overall, and
    ``fail_writes_for[customer]`` attempts fail for that customer."""

    def __init__(self, customers_due: Optional[list[dict]] = None, *, fail_first: int = 0,
                 fail_writes_for: Optional[dict[str, int]] = None) -> None:
        self.customers_due = list(customers_due or [])
        self.fail_first = fail_first
        self.fail_writes_for = dict(fail_writes_for or {})
        self.rows: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.total_attempts = 0
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    def write(self, row: dict) -> bool:
        with self._lock:
            self.total_attempts += 1
            customer = str(row.get("customer"))
            self.attempts[customer] += 1
            if self.total_attempts <= self.fail_first or self.attempts[customer] <= self.fail_writes_for.get(customer, 0):
                return False
            self.rows.append(row)
            return True

    # ---------- serving ----------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        db = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def reply(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/customers_due":
                    period = parse_qs(url.query).get("period", [""])[0]
                    self.reply(200, [c for c in db.customers_due if c.get("period", period) == period])
                elif url.path == "/charges":
                    self.reply(200, db.rows)
                elif url.path == "/stats":
                    self.reply(200, {"attempts": dict(db.attempts), "total_attempts": db.total_attempts})
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                if urlparse(self.path).path != "/charges":
                    return self.reply(404, {"error": "not found"})
                row = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if db.write(row):
                    self.reply(201, {"recorded": True})
                else:
                    self.reply(503, {"error": "connection pool timeout"})

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://{host}:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main() -> None:
    parser = argparse.ArgumentParser(description="A stand-in billing database for the Kestra examples.")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--customers", default="[]", help="JSON list of {id, amount_cents} due for billing")
    parser.add_argument("--fail-first", type=int, default=0, help="the first N writes fail with 503")
    args = parser.parse_args()
    db = BillingDB(json.loads(args.customers), fail_first=args.fail_first)
    url = db.start(port=args.port)
    print(f"billing database on {url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
