"""Ray failure mode 2: one Actor serves 100 concurrent ``bill_customer`` calls,
and a unit bug charges part of the cohort 100 times too much before anyone
can look.

The bug here: the price table holds dollars ("29.99") for most customers, but
the customers imported from the legacy system have their price in cents
("2999"); ``bill_customer`` multiplies every price by 100, so each legacy
customer would be charged $2,999.00 instead of $29.99.

Three ways to run the batch through Keybrake:

* ``per_customer_keys``: the driver issues one vault key per customer, capped
  at that customer's expected charge plus 10 %. Every wrong charge is refused
  at the gateway (429 spend_cap_exceeded) before it reaches Stripe; every
  right one goes through. No customer is overcharged.
* ``shared_key_with_batch_cap``: one key for the whole batch with a cap of
  the batch's expected total plus 10 %. The cap bounds the damage (the total
  charged never exceeds it, however many calls race) but the first wrong
  charge can fit under it, and then the cap also stops the right ones.
* ``shared_key_with_kill_switch``: one key for the batch, and a driver that
  checks each charge as it comes back and revokes the run's keys by label
  prefix at the first wrong amount; every call after that is refused (401
  vault_key_revoked).

    KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... python examples/ray/actor_billing.py
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine

import ray  # noqa: E402
import stripe  # noqa: E402

import keybrake  # noqa: E402

CONTEXT = "ray-actor-billing"


@dataclass(frozen=True)
class Customer:
    id: str
    price: str  # what the price table says: dollars, except for legacy customers (cents)
    expected_cents: int  # what the customer actually owes

    @property
    def legacy(self) -> bool:
        return Decimal(self.price) * 100 != self.expected_cents


def cohort(run: str, n: int = 100, legacy_every: int = 5, cents: int = 2999) -> list[Customer]:
    """``n`` customers owing ``cents`` each; every ``legacy_every``-th has its price stored in cents."""
    dollars = str(Decimal(cents) / 100)
    return [Customer(f"cus_{run}_{i:03d}", str(cents) if i % legacy_every == legacy_every - 1 else dollars, cents)
            for i in range(n)]


@ray.remote(num_cpus=0.5, max_concurrency=25)
class BillingActor:
    """Bills customers; up to 25 calls run at once in its threads. Each call
    builds its own Stripe client from the vault key it is given."""

    def __init__(self, gateway_url: str, billing_period: str) -> None:
        self.stripe_base = keybrake.stripe_base(gateway_url)
        self.billing_period = billing_period

    def bill_customer(self, customer_id: str, price: str, vault_key: str) -> dict:
        amount_cents = int(Decimal(price) * 100)  # BUG for legacy prices, which are already in cents
        client = stripe.StripeClient(vault_key, base_addresses={"api": self.stripe_base}, max_network_retries=2)
        idempotency_key = keybrake.billing_idempotency_key(customer_id, amount_cents, self.billing_period,
                                                           context=CONTEXT)
        try:
            charge = client.v1.charges.create(
                params={"amount": amount_cents, "currency": "usd", "customer": customer_id,
                        "description": f"Subscription {self.billing_period}",
                        "metadata": {"billing_period": self.billing_period}},
                options={"idempotency_key": idempotency_key})
        except stripe.StripeError as e:
            code = ((e.json_body or {}).get("error") or {}).get("code") if isinstance(e.json_body, dict) else None
            return {"customer": customer_id, "charge_id": None, "amount": amount_cents,
                    "refused": code or type(e).__name__, "status": e.http_status}
        return {"customer": customer_id, "charge_id": charge.id, "amount": charge.amount, "refused": None,
                "status": 200}


def per_customer_keys(customers: list[Customer], billing_period: str, run: str, *,
                      url: Optional[str] = None, admin_key: Optional[str] = None) -> list[dict]:
    """One vault key per customer, capped at that customer's expected charge + 10 %."""
    kb = keybrake.Keybrake(url, admin_key)
    keys = {c.id: kb.issue_vault_key(f"ray-actor-{run}-{c.id}", daily_usd_cap=keybrake.usd_cap(c.expected_cents),
                                     expires_in_seconds=3600)
            for c in customers}
    actor = BillingActor.remote(kb.url, billing_period)
    futures = [actor.bill_customer.remote(c.id, c.price, keys[c.id].vault_key) for c in customers]
    results = ray.get(futures)  # all 100 calls were dispatched before the first one answered
    ray.kill(actor)
    for r in results:
        r["key_id"] = keys[r["customer"]].id
    return results


def shared_key_with_batch_cap(customers: list[Customer], billing_period: str, run: str, *,
                              url: Optional[str] = None, admin_key: Optional[str] = None) -> dict:
    """One vault key for the batch, capped at the batch's expected total + 10 %."""
    kb = keybrake.Keybrake(url, admin_key)
    cap = keybrake.usd_cap(sum(c.expected_cents for c in customers))
    key = kb.issue_vault_key(f"ray-actor-{run}-batch", daily_usd_cap=cap, expires_in_seconds=3600)
    actor = BillingActor.remote(kb.url, billing_period)
    results = ray.get([actor.bill_customer.remote(c.id, c.price, key.vault_key) for c in customers])
    ray.kill(actor)
    return {"key_id": key.id, "cap_usd": cap, "results": results}


def shared_key_with_kill_switch(customers: list[Customer], billing_period: str, run: str, *,
                                url: Optional[str] = None, admin_key: Optional[str] = None) -> dict:
    """One vault key for the batch (label prefix ``ray-actor-{run}-``); the
    driver checks each charge as it lands and revokes the run at the first
    amount that is not what the customer owes."""
    kb = keybrake.Keybrake(url, admin_key)
    prefix = f"ray-actor-{run}-"
    key = kb.issue_vault_key(f"{prefix}batch", expires_in_seconds=3600)  # no cap: the kill switch is the brake
    expected = {c.id: c.expected_cents for c in customers}
    actor = BillingActor.remote(kb.url, billing_period)
    pending = [actor.bill_customer.remote(c.id, c.price, key.vault_key) for c in customers]
    results: list[dict] = []
    revoked: Optional[keybrake.Revoked] = None
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        result = ray.get(done[0])
        results.append(result)
        if revoked is None and result["charge_id"] and result["amount"] != expected[result["customer"]]:
            revoked = kb.revoke_prefix(prefix)  # every worker's next call with these keys is refused
    ray.kill(actor)
    return {"key_id": key.id, "revoked": revoked, "results": results}


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        period = "2026-06"
        for name, run in (("per-customer keys", per_customer_keys), ("shared key + batch cap", shared_key_with_batch_cap),
                          ("shared key + kill switch", shared_key_with_kill_switch)):
            tag = uuid.uuid4().hex[:6]
            customers = cohort(tag)
            out = run(customers, period, tag)
            results = out if isinstance(out, list) else out["results"]
            over = [r for r in results if r["charge_id"] and r["amount"] > 2999]
            refused: dict[str, int] = {}
            for r in results:
                if r["refused"]:
                    refused[r["refused"]] = refused.get(r["refused"], 0) + 1
            print(f"{name}: {sum(1 for r in results if r['charge_id'])} charged, {len(over)} overcharged, "
                  f"refused {refused}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
