"""Ray tasks, Actors and Ray Data through a real gateway, with real Ray (one
local instance for the module). Each test runs the example program's own
functions (examples/ray) and counts what reached the upstream."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

import actor_billing
import data_billing
import task_retry
from examples_support import charges, outcomes, per_customer
from support.stack import REAL_KEY

pytestmark = [pytest.mark.usefixtures("ray_local", "gateway_env"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]


def run_id() -> str:
    return uuid.uuid4().hex[:8]


# ---------- failure mode 1: max_retries re-runs the charge ----------


def test_the_retried_task_charges_four_times_straight_to_stripe(stack):
    """The failure mode is real: the same task pointed straight at the upstream
    (the stand-in, which like localstripe ignores idempotency keys here) charges
    once per attempt."""
    customer = f"cus_direct_{run_id()}"
    result = task_retry.run_task(customer, 2999, "2026-06", api_key=REAL_KEY, api_base=stack.upstream_url,
                                 fail_first=3)
    assert result["write_attempts"] == 4 and result["error"] is None
    assert len(charges(stack, customer_prefix=customer)) == 4


def test_the_retried_task_charges_once_through_keybrake(stack):
    customer = f"cus_retry_{run_id()}"
    result = task_retry.bill_through_keybrake(customer, 2999, "2026-06", fail_first=3)
    assert result["write_attempts"] == 4, "Ray ran the task four times"
    assert result["error"] is None
    sent = charges(stack, customer_prefix=customer)
    assert len(sent) == 1 and sent[0]["params"]["amount"] == "2999"
    rows = stack.audit(key_id=result["key_id"])
    calls = [(r["stage"], r["decision"]) for r in rows if r["stage"] != "intent"]
    assert calls == [("outcome", "allowed"), ("call", "replayed"), ("call", "replayed"), ("call", "replayed")], \
        "attempts 2-4 were answered from the gateway's record, not refused by the cap"
    outcome = rows[[r["stage"] for r in rows].index("outcome")]
    assert result["charge_id"] == outcome["object_id"], "the task returns the first attempt's charge"
    assert [r["charge"] for r in result["rows"]] == [outcome["object_id"]]


def test_a_task_that_exhausts_its_retries_still_charged_once(stack):
    customer = f"cus_outage_{run_id()}"
    result = task_retry.bill_through_keybrake(customer, 4500, "2026-06", fail_first=10)
    assert result["write_attempts"] == 4 and result["charge_id"] is None
    assert "TimeoutError" in result["error"]
    assert len(charges(stack, customer_prefix=customer)) == 1
    assert len(stack.audit(key_id=result["key_id"], decision="replayed")) == 3


# ---------- failure mode 2: an Actor serving 100 concurrent calls with a unit bug ----------


def test_per_customer_keys_refuse_every_wrong_charge(stack):
    run = run_id()
    customers = actor_billing.cohort(run)
    legacy = {c.id for c in customers if c.legacy}
    assert len(customers) == 100 and len(legacy) == 20
    results = actor_billing.per_customer_keys(customers, "2026-06", run)
    by_customer = {r["customer"]: r for r in results}
    sent = per_customer(charges(stack, customer_prefix=f"cus_{run}_"))
    assert sent == {c.id: [2999] for c in customers if not c.legacy}, "every right charge once, no wrong one"
    for c in customers:
        r = by_customer[c.id]
        if c.id in legacy:
            assert (r["charge_id"], r["status"], r["refused"]) == (None, 429, "spend_cap_exceeded")
        else:
            assert r["charge_id"] and r["amount"] == 2999
    denied = stack.audit(label_prefix=f"ray-actor-{run}-", decision="denied")
    assert sorted(d["label"].removeprefix(f"ray-actor-{run}-") for d in denied) == sorted(legacy)
    assert {(d["reason"], d["amount"]) for d in denied} == {("spend_cap_exceeded", 299900)}


def test_a_shared_key_is_stopped_by_its_batch_cap(stack):
    run = run_id()
    customers = actor_billing.cohort(run)
    out = actor_billing.shared_key_with_batch_cap(customers, "2026-06", run)
    cap_cents = int(out["cap_usd"] * 100)
    assert out["cap_usd"] == Decimal("3298.90")
    sent = charges(stack, customer_prefix=f"cus_{run}_")
    amounts = [int(r["params"]["amount"]) for r in sent]
    assert sum(amounts) <= cap_cents, "100 racing calls never took the batch past its cap"
    overcharged = [a for a in amounts if a > 2999]
    assert len(overcharged) <= cap_cents // 299900, "at most one wrong charge fits under the cap"
    refused = [r for r in out["results"] if r["refused"]]
    assert refused and {r["refused"] for r in refused} == {"spend_cap_exceeded"}
    assert len(refused) + len(sent) == 100
    if overcharged:  # the cap bounded the damage, but right charges were stopped along with it
        assert any(r["amount"] == 2999 for r in refused)
    denied = stack.audit(key_id=out["key_id"], decision="denied")
    assert len(denied) == len(refused)


def test_a_shared_key_is_stopped_by_revoke_by_prefix(stack):
    run = run_id()
    customers = actor_billing.cohort(run)
    stack.set_faults(delay_ms=150, match_path="/v1/charges")  # a realistic Stripe latency, so that the batch takes a while
    try:
        out = actor_billing.shared_key_with_kill_switch(customers, "2026-06", run)
    finally:
        stack.clear_faults()
    assert out["revoked"] is not None and out["revoked"].ids == [out["key_id"]]
    results = out["results"]
    charged = [r for r in results if r["charge_id"]]
    refused = [r for r in results if r["refused"]]
    assert len(charged) + len(refused) == 100
    assert {r["refused"] for r in refused} == {"vault_key_revoked"}
    # How much of the batch was still to go when the driver saw the wrong amount
    # depends on the machine's speed; that the rest was stopped does not.
    assert refused, "the kill switch stopped the rest of the batch"
    sent = charges(stack, customer_prefix=f"cus_{run}_")
    assert len(sent) == len(charged)
    # Nothing was let through once the revocation took effect.
    rows = stack.audit(key_id=out["key_id"])
    first_refusal = min(r["seq"] for r in rows if r["reason"] == "vault_key_revoked")
    assert not [r for r in rows if r["stage"] == "intent" and r["seq"] > first_refusal]


# ---------- gap 1: ray.data map_batches retried after an actor crash ----------


def test_map_batches_retried_after_an_actor_crash_charges_each_row_once(stack, tmp_path):
    run = run_id()
    rows = data_billing.usage_rows(run)
    marker = tmp_path / "crashed"
    out = data_billing.bill_dataset(rows, "2026-06", run, crash_in_batch_with_row=rows[8]["row_id"],
                                    crash_after_rows=3, crash_marker=str(marker))
    assert marker.exists(), "the actor died midway through a batch"
    billed = {r["row_id"]: r["charge_id"] for r in out["rows"]}
    assert set(billed) == {r["row_id"] for r in rows}
    sent = per_customer(charges(stack, customer_prefix=f"cus_{run}_"))
    assert sent == {r["customer"]: [r["amount_cents"]] for r in rows}, "one charge per row"
    replayed = stack.audit(key_id=out["key_id"], decision="replayed")
    assert len(replayed) == 3, "the three rows charged before the crash were charged again by the re-run, and replayed"
    settled = {r["object_id"] for r in outcomes(stack, len(rows), key_id=out["key_id"])}
    assert set(billed.values()) == settled and len(settled) == len(rows)
