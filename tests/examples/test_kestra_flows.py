"""The Kestra flows of examples/kestra, executed the way Kestra would run
them (examples/kestra/localrun.py: inputs and secrets rendered into each
Python Script task, each attempt a fresh process from the script's first
line, EachParallel items as parallel processes), against a real gateway.
Every test counts the charges the upstream received."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

import keybrake
import localrun
from billing_db import BillingDB
from examples_support import charges, outcomes, per_customer
from support.stack import ADMIN_KEY

FLOWS = Path(__file__).resolve().parents[2] / "examples" / "kestra"
WEBHOOK_KEY = "whk_4wjtkzwVGBM9yKnjm3yv8r"


@pytest.fixture
def db():
    database = BillingDB()
    database.url = database.start()
    yield database
    database.stop()


@pytest.fixture
def flow(stack, db, tmp_path):
    """A LocalRunner for a flow file, with the secrets a Kestra instance would hold."""
    auditor = keybrake.issue_audit_key("kestra-auditor", url=stack.url, admin_key=ADMIN_KEY)
    secrets = {"KEYBRAKE_URL": stack.url, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY, "KEYBRAKE_AUDIT_KEY": auditor.vault_key,
               "BILLING_DB_URL": db.url, "BILLING_WEBHOOK_KEY": WEBHOOK_KEY}

    def make(name: str) -> localrun.LocalRunner:
        return localrun.LocalRunner(FLOWS / name, secrets=secrets, workdir=str(tmp_path / name))

    return make


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def failure_output(execution: localrun.Execution) -> str:
    return "\n".join(f"{t.task_id}[{t.value}] attempt {a.number}: {a.stderr[-2000:]}"
                     for t in execution.taskruns for a in t.attempts if a.exit_code)


# ---------- retry: the script re-run from its first line ----------


def test_a_retried_charge_task_charges_once(stack, db, flow):
    customer = unique("cus_kretry")
    db.fail_first = 2  # the first two attempts fail after their charge
    execution = flow("charge_customer.yml").run(
        {"customer_id": customer, "amount_cents": 2999, "billing_period": "2026-06"})
    assert execution.state == "SUCCESS", failure_output(execution)
    run = execution.taskrun("charge_customer")
    assert [a.exit_code != 0 for a in run.attempts] == [True, True, False], "three attempts, two failed"
    assert "503" in run.attempts[0].stderr
    sent = charges(stack, customer_prefix=customer)
    assert len(sent) == 1 and sent[0]["params"]["amount"] == "2999"
    charge_ids = {a.outputs["charge_id"] for a in run.attempts}
    assert len(charge_ids) == 1 and [r["charge_id"] for r in db.rows] == list(charge_ids)
    rows = stack.audit(label_prefix=f"kestra-billing-{execution.id}-")
    assert len({r["key_id"] for r in rows}) == 3, "each attempt ran from the top and issued its own key"
    assert sorted(r["decision"] for r in rows if r["stage"] != "intent") == ["allowed", "replayed", "replayed"]
    assert execution.taskrun("revoke_vault_keys").outputs == {"revoked": 3}


def test_a_task_that_runs_out_of_attempts_still_charged_once(stack, db, flow):
    customer = unique("cus_kexhaust")
    db.fail_first = 10
    execution = flow("charge_customer.yml").run(
        {"customer_id": customer, "amount_cents": 1250, "billing_period": "2026-06"})
    assert execution.state == "FAILED"
    assert len(execution.taskrun("charge_customer").attempts) == 3
    assert db.total_attempts == 3 and db.rows == []
    assert len(charges(stack, customer_prefix=customer)) == 1


# ---------- EachParallel with pre-issued per-item keys ----------


def test_each_parallel_charges_every_item_once_with_its_own_key(stack, db, flow):
    run = unique("cus_kpar")
    customers = [{"id": f"{run}_{i}", "amount_cents": 1000 + 100 * i} for i in range(6)]
    db.fail_writes_for = {customers[2]["id"]: 1}  # that item's first attempt fails after its charge
    execution = flow("charge_cohort_parallel.yml").run({"customers": customers, "billing_period": "2026-06"})
    assert execution.state == "SUCCESS", failure_output(execution)
    items = [t for t in execution.taskruns if t.task_id == "charge_single"]
    assert len(items) == 6
    firsts = [t.attempts[0] for t in items]
    assert max(a.started for a in firsts) < min(a.ended for a in firsts), "the items ran as parallel processes"
    assert sorted(len(t.attempts) for t in items) == [1, 1, 1, 1, 1, 2]
    assert per_customer(charges(stack, customer_prefix=run)) == {c["id"]: [c["amount_cents"]] for c in customers}
    prefix = f"kestra-parallel-{execution.id}-"
    charged_by = {r["object_id"]: r["label"].removeprefix(prefix) for r in outcomes(stack, 6, label_prefix=prefix)}
    item_charges = {t.outputs["charge_id"]: json.loads(t.value)["id"] for t in items}
    assert charged_by == item_charges, "every item's charge went out with that item's own key"
    replayed = stack.audit(label_prefix=f"{prefix}{customers[2]['id']}", decision="replayed")
    assert len(replayed) == 1
    assert execution.taskrun("revoke_vault_keys").outputs == {"revoked": 6}


# ---------- Schedule: two runs of the same period ----------


@pytest.mark.parametrize("overlap", [False, True], ids=["queued-by-concurrency-limit", "overlapping"])
def test_two_scheduled_runs_of_one_period_charge_each_customer_once(stack, db, flow, overlap):
    run = unique("cus_kmonth")
    month = {False: 7, True: 8}[overlap]
    period = f"2026-{month:02d}"
    customers = [{"id": f"{run}_{i}", "amount_cents": 1500 + i, "period": period} for i in range(5)]
    db.customers_due = customers
    runner = flow("monthly_billing.yml")
    assert runner.concurrency_limit == 1
    date = dt.datetime(2026, month, 1, 9, 0, tzinfo=dt.timezone.utc)
    if overlap:  # a manual re-run or a backfill while the scheduled run is still charging
        stack.set_faults(delay_ms=150, match_path="/v1/charges")
    try:
        first, second = runner.run_many(
            [lambda: runner.run_scheduled(date, ignore_concurrency=overlap)] * 2, stagger=0.8 if overlap else 0.0)
    finally:
        stack.clear_faults()
    for e in (first, second):
        assert e.state == "SUCCESS", failure_output(e)
    a, b = sorted((first, second), key=lambda e: e.started)
    if overlap:
        assert b.started < a.ended, "the two runs overlapped"
    else:
        assert b.started >= a.ended, "the second run was queued until the first ended"
    assert per_customer(charges(stack, customer_prefix=run)) == {c["id"]: [c["amount_cents"]] for c in customers}
    assert a.outputs["charge_all"]["vars"]["charged"] == b.outputs["charge_all"]["vars"]["charged"]
    assert a.outputs["charge_all"]["vars"]["billing_period"] == period
    # Per customer: one run's call went upstream, the other's was answered with it.
    rows = {e.id: stack.audit(label_prefix=f"kestra-monthly-{e.id}-") for e in (a, b)}
    both = rows[a.id] + rows[b.id]
    assert len([r for r in both if r["stage"] == "outcome"]) == len(customers)
    assert len([r for r in both if r["decision"] == "replayed"]) == len(customers)
    assert {r["reason"] for r in both if r["decision"] == "denied"} <= {"idempotency_key_in_use"}
    if not overlap:
        assert not [r for r in rows[b.id] if r["stage"] == "outcome"], "the queued run made no charge of its own"
        assert len([r for r in rows[b.id] if r["decision"] == "replayed"]) == len(customers)


# ---------- Webhook delivered more than once ----------


def test_a_webhook_delivered_twice_is_one_charge_and_another_event_is_another(stack, db, flow):
    customer = unique("cus_khook")
    runner = flow("webhook_billing.yml")
    event = {"id": unique("evt"), "type": "invoice.due",
             "data": {"customer": customer, "amount_cents": 4200, "billing_period": "2026-06"}}
    stack.set_faults(delay_ms=300, match_path="/v1/charges")
    try:  # the same event delivered twice at once
        first, second = runner.run_many([lambda: runner.deliver_webhook(WEBHOOK_KEY, event)] * 2, stagger=0.1)
    finally:
        stack.clear_faults()
    assert first.state == second.state == "SUCCESS", failure_output(first) + failure_output(second)
    ids = {e.outputs["charge_for_event"]["vars"]["charge_id"] for e in (first, second)}
    assert len(ids) == 1 and len(charges(stack, customer_prefix=customer)) == 1
    # Delivered a third time, later: the pre-flight check finds the charge and Stripe is not called.
    calls_before = len(stack.upstream_requests(method="POST", path="/v1/charges"))
    third = runner.deliver_webhook(WEBHOOK_KEY, event)
    assert third.state == "SUCCESS" and third.outputs["charge_for_event"]["vars"] == {
        "charge_id": ids.pop(), "skipped": True}
    assert len(stack.upstream_requests(method="POST", path="/v1/charges")) == calls_before
    idem = keybrake.billing_idempotency_key(event["id"], customer, 4200, "2026-06", context="kestra-webhook")
    assert len([r for r in stack.audit(idempotency_key=idem) if r["stage"] == "outcome"]) == 1
    # A different event with the same customer and amount is a different charge.
    other = {**event, "id": unique("evt")}
    fourth = runner.deliver_webhook(WEBHOOK_KEY, other)
    assert fourth.state == "SUCCESS" and fourth.outputs["charge_for_event"]["vars"]["skipped"] is False
    assert len(charges(stack, customer_prefix=customer)) == 2
    with pytest.raises(localrun.WebhookNotFound):
        runner.deliver_webhook("wrong-key", event)


# ---------- the runner itself ----------


def test_the_runner_renders_strictly_and_refuses_what_kestra_would_not_run(tmp_path):
    ctx = {"inputs": {"n": 3, "items": [{"a": 1}]}, "trigger": {"date": "2026-06-01T09:00:00+00:00"}}
    fns = {"secret": lambda name: {"K": "v"}[name], "fromJson": json.loads}
    assert localrun.render("{{ inputs.n }}-{{ trigger.date | date('yyyy-MM') }}", ctx, fns) == "3-2026-06"
    assert localrun.render("{{ inputs.items | toJson }}", ctx, fns) == '[{"a":1}]'
    assert localrun.render("{{ fromJson('[1, 2]')[1] }} {{ secret('K') }}", ctx, fns) == "2 v"
    for bad in ("{{ inputs.missing }}", "{{ inputs.items }}", "{{ inputs.n | upper }}", "{% if x %}"):
        with pytest.raises(localrun.RenderError):
            localrun.render(bad, ctx, fns)
    flow = tmp_path / "bad.yml"
    flow.write_text("id: x\nnamespace: y\nconcurrencyLimit: 1\ntasks: []\n")
    with pytest.raises(localrun.FlowError, match="concurrencyLimit"):
        localrun.LocalRunner(flow, secrets={})
    for name in ("charge_customer.yml", "charge_cohort_parallel.yml", "monthly_billing.yml", "webhook_billing.yml"):
        localrun.LocalRunner(FLOWS / name, secrets={})  # every example flow is one this runner (and Kestra) accepts
