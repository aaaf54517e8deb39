"""Ray failure mode 1: ``@ray.remote(max_retries=3, retry_exceptions=True)``
re-runs the whole task, Stripe charge included, when the database write after
the charge fails.

The task below is written the unsafe way, as most billing tasks are: no
idempotency key from the caller (the Stripe SDK puts a fresh random one on
each call, which deduplicates nothing across task attempts). Straight to
Stripe, a database outage turns one charge into four. Through Keybrake the
task only changes its key and base address: the gateway recognises the
retried charge by its content (same endpoint, body and account), returns the
first charge's stored response to attempts 2 to 4 (``Idempotent-Replayed:
true``), and the customer is charged once. The vault key's cap (one charge
plus 10 %) is the backstop.

Run it against a gateway (its upstream must accept the made-up customer ids,
e.g. the stand-in: see the README):

    KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... python examples/ray/task_retry.py
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine

import ray  # noqa: E402
import stripe  # noqa: E402

import keybrake  # noqa: E402


@ray.remote(num_cpus=0)
class BillingDatabase:
    """Stands in for the database the task records its charge in. The first
    ``fail_first`` writes time out, as a connection pool under an outage does."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.rows: list[dict] = []

    def write_charge(self, customer_id: str, charge_id: str, billing_period: str) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise TimeoutError(f"database write timed out (attempt {self.attempts})")
        self.rows.append({"customer": customer_id, "charge": charge_id, "period": billing_period})

    def stats(self) -> dict:
        return {"write_attempts": self.attempts, "rows": list(self.rows)}


@ray.remote(max_retries=3, retry_exceptions=True)
def charge_customer(customer_id: str, amount_cents: int, billing_period: str,
                    api_key: str, api_base: str, db: Any) -> str:
    """The seed's unsafe task, unchanged but for where its key points: no
    idempotency key of its own, and any exception after the charge makes Ray
    run it again from the first line."""
    client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=0)
    charge = client.v1.charges.create(params={
        "amount": amount_cents,
        "currency": "usd",
        "customer": customer_id,
        "description": f"Subscription {billing_period}",
    })
    # If this write times out, Ray re-runs the whole task, charge included.
    ray.get(db.write_charge.remote(customer_id, charge.id, billing_period))
    return charge.id


def run_task(customer_id: str, amount_cents: int, billing_period: str, *, api_key: str, api_base: str,
             fail_first: int) -> dict:
    """Runs ``charge_customer`` once (Ray retries it as configured) with a
    database whose first ``fail_first`` writes fail; reports what happened."""
    db = BillingDatabase.remote(fail_first)
    result: dict[str, Any] = {"charge_id": None, "error": None}
    try:
        result["charge_id"] = ray.get(charge_customer.remote(customer_id, amount_cents, billing_period,
                                                             api_key, api_base, db))
    except ray.exceptions.RayTaskError as e:
        result["error"] = f"{type(e.cause).__name__}: {e.cause}"
    result.update(ray.get(db.stats.remote()))
    ray.kill(db)
    return result


def bill_through_keybrake(customer_id: str, amount_cents: int, billing_period: str, *, fail_first: int = 3,
                          url: Optional[str] = None, admin_key: Optional[str] = None) -> dict:
    """The driver: one vault key per task (scoped to ``POST /v1/charges``,
    capped at one charge plus 10 %, expiring in an hour), then the same task."""
    key = keybrake.issue_vault_key(
        f"ray-task-{billing_period}-{customer_id}", url=url, admin_key=admin_key,
        allowed_endpoints=["POST /v1/charges"], daily_usd_cap=keybrake.usd_cap(amount_cents),
        expires_in_seconds=3600)
    result = run_task(customer_id, amount_cents, billing_period, api_key=key.vault_key,
                      api_base=keybrake.stripe_base(url), fail_first=fail_first)
    return {**result, "key_id": key.id}


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        customer = f"cus_demo_{uuid.uuid4().hex[:8]}"
        result = bill_through_keybrake(customer, 2999, "2026-06", fail_first=3)
        print(f"task for {customer} ran {result['write_attempts']} times; charge {result['charge_id']}; "
              f"vault key {result['key_id']}")
        rows = keybrake.audit(key_id=result["key_id"])
        decisions = [r["decision"] for r in rows if r["stage"] != "intent"]
        print(f"gateway decisions for the task's charge calls: {decisions}")
        print(f"one charge upstream, {decisions.count('replayed')} retries answered from the gateway's record")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
