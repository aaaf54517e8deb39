"""Ray failure mode 3 and gap 3: a Ray Serve billing endpoint.

* A replica can die after Stripe answered and before it replied (an OOM kill,
  a crash); the caller, or a proxy in front of it, delivers the request again
  and another replica runs it from the start. Each request derives its
  idempotency key from the request body, so the second delivery sends the same
  key (and the same content), and the gateway answers it with the first
  charge: one charge.
* Many requests run at once in one replica (``async def __call__``). Each
  gets its own vault key, labelled with its customer, and its own
  ``StripeClient``; nothing is shared, so no request can charge with another
  request's key, which the audit log shows call by call. The seed's
  anti-pattern, ``stripe.api_key = ...`` set per request in a module global,
  is here too (``unsafe_global_api_key=True``) so that the audit check can be
  seen catching it.

The replica holds the admin key to issue per-request keys (short-lived,
scoped to ``POST /v1/charges``, capped at the request's amount + 10 %).

    KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... python examples/ray/serve_billing.py
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
os.environ.setdefault("RAY_SERVE_ENABLE_TELEMETRY", "0")

import httpx  # noqa: E402
import ray  # noqa: E402
import stripe  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

import keybrake  # noqa: E402

CONTEXT = "ray-serve-billing"


def key_label(billing_period: str, customer_id: str) -> str:
    return f"serve-{billing_period}-{customer_id}"


@serve.deployment(num_replicas=2, max_ongoing_requests=64, health_check_period_s=1, health_check_timeout_s=5,
                  ray_actor_options={"num_cpus": 0.25})
class BillingService:
    def __init__(self, gateway_url: str, admin_key: str, *, crash_after_charge_marker: Optional[str] = None,
                 unsafe_global_api_key: bool = False) -> None:
        self.kb = keybrake.Keybrake(gateway_url, admin_key)
        self.crash_marker = crash_after_charge_marker
        self.unsafe_global = unsafe_global_api_key
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.bill(body["customer_id"], int(body["amount_cents"]), body["billing_period"])
        finally:
            self.in_flight -= 1

    async def bill(self, customer_id: str, amount_cents: int, billing_period: str) -> JSONResponse:
        # The same key on every delivery of this request, on any replica.
        idempotency_key = keybrake.billing_idempotency_key(customer_id, amount_cents, billing_period, context=CONTEXT)
        key = await asyncio.to_thread(self.kb.issue_vault_key, key_label(billing_period, customer_id),
                                      daily_usd_cap=keybrake.usd_cap(amount_cents), expires_in_seconds=300)
        params = {"amount": amount_cents, "currency": "usd", "customer": customer_id,
                  "description": f"Subscription {billing_period}", "metadata": {"billing_period": billing_period}}
        try:
            if self.unsafe_global:
                charge = await self._charge_with_global_key(key.vault_key, params, idempotency_key)
            else:
                client = keybrake.stripe_client(key.vault_key, url=self.kb.url)  # this request's own client
                charge = await client.v1.charges.create_async(params=params,
                                                             options={"idempotency_key": idempotency_key})
        except stripe.StripeError as e:
            error = (e.json_body or {}).get("error", {}) if isinstance(e.json_body, dict) else {}
            return JSONResponse({"customer": customer_id, "key_id": key.id, "error": error.get("code") or str(e)},
                                status_code=e.http_status or 502)
        self._maybe_crash()
        return JSONResponse({"customer": customer_id, "charge_id": charge.id, "amount": charge.amount,
                             "key_id": key.id, "replica_pid": os.getpid(), "peak_in_flight": self.peak})

    async def _charge_with_global_key(self, vault_key: str, params: dict, idempotency_key: str):
        """UNSAFE (the seed's gap 3): a module global shared by every coroutine of the replica."""
        stripe.api_key = vault_key
        stripe.api_base = keybrake.stripe_base(self.kb.url)
        await asyncio.sleep(0.05)  # any await here (a database read, a log call) lets another request run
        return await stripe.Charge.create_async(**params, idempotency_key=idempotency_key)

    def _maybe_crash(self) -> None:
        """Fault injection for the demo and the tests: the first request to get
        here dies with its replica after Stripe answered, before replying."""
        if self.crash_marker is None:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)


def app(gateway_url: Optional[str] = None, admin_key: Optional[str] = None, *, num_replicas: int = 2,
        crash_after_charge_marker: Optional[str] = None, unsafe_global_api_key: bool = False):
    """The Serve application, bound to a gateway (``KEYBRAKE_URL``/``KEYBRAKE_ADMIN_KEY`` by default)."""
    admin_key = admin_key or os.environ.get(keybrake.ADMIN_KEY_ENV)
    if not admin_key:
        raise keybrake.KeybrakeConfigError(f"set {keybrake.ADMIN_KEY_ENV} or pass admin_key=")
    return BillingService.options(num_replicas=num_replicas).bind(
        keybrake.resolve_url(gateway_url), admin_key, crash_after_charge_marker=crash_after_charge_marker,
        unsafe_global_api_key=unsafe_global_api_key)


def deliver_until_answered(endpoint: str, body: dict, *, attempts: int = 30, timeout: float = 30.0) -> list:
    """What an at-least-once caller (or a proxy re-delivering) does: send the
    same request again until a replica answers it. Returns every attempt's
    outcome, the last being the answer."""
    outcomes: list = []
    for _ in range(attempts):
        try:
            r = httpx.post(endpoint, json=body, timeout=timeout)
            outcomes.append(r)
            if r.status_code < 500:
                return outcomes
        except httpx.TransportError as e:
            outcomes.append(e)
        time.sleep(0.5)
    raise RuntimeError(f"no replica answered after {attempts} deliveries: {outcomes[-1]!r}")


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        marker = str(Path(tempfile.mkdtemp()) / "crashed")
        serve.run(app(crash_after_charge_marker=marker), name="billing", route_prefix="/bill")
        body = {"customer_id": f"cus_demo_{uuid.uuid4().hex[:8]}", "amount_cents": 2999, "billing_period": "2026-06"}
        outcomes = deliver_until_answered("http://127.0.0.1:8000/bill", body)
        print(f"deliveries: {[getattr(o, 'status_code', type(o).__name__) for o in outcomes]}")
        print(f"answer: {outcomes[-1].json()} (replica {Path(marker).read_text()} died after charging)")
        idem = keybrake.billing_idempotency_key(body["customer_id"], 2999, "2026-06", context=CONTEXT)
        print("gateway decisions:", [(r["stage"], r["decision"]) for r in keybrake.audit(idempotency_key=idem)])
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
