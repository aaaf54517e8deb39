"""Ray Serve through a real gateway (examples/ray/serve_billing.py): a replica
that dies after Stripe answered, and concurrent requests in one replica."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

import keybrake
import serve_billing
from examples_support import charges, outcomes, per_customer
from support.stack import ADMIN_KEY, free_port

pytestmark = pytest.mark.usefixtures("ray_local", "gateway_env")


@pytest.fixture(scope="module")
def serve_port(ray_local):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture
def deploy(serve_port, stack):
    """Deploys a BillingService app on its own route; deletes it after the test."""
    from ray import serve

    names = []

    def run(name: str, **options) -> str:
        serve.run(serve_billing.app(stack.url, ADMIN_KEY, **options), name=name, route_prefix=f"/{name}")
        names.append(name)
        return f"http://127.0.0.1:{serve_port}/{name}"

    yield run
    for name in names:
        serve.delete(name)


def test_a_replica_dying_after_the_charge_and_a_redelivery_make_one_charge(stack, deploy, tmp_path):
    endpoint = deploy("crash", num_replicas=2, crash_after_charge_marker=str(tmp_path / "crashed"))
    customer = f"cus_serve_{uuid.uuid4().hex[:8]}"
    body = {"customer_id": customer, "amount_cents": 2999, "billing_period": "2026-06"}
    outcomes = serve_billing.deliver_until_answered(endpoint, body)
    crashed_pid = (tmp_path / "crashed").read_text()
    assert crashed_pid, "a replica died after Stripe answered"
    first = outcomes[0]
    assert isinstance(first, Exception) or first.status_code >= 500, "the first delivery got no answer"
    answer = outcomes[-1]
    assert answer.status_code == 200 and str(answer.json()["replica_pid"]) != crashed_pid
    assert len(charges(stack, customer_prefix=customer)) == 1
    idem = keybrake.billing_idempotency_key(customer, 2999, "2026-06", context=serve_billing.CONTEXT)
    rows = stack.audit(idempotency_key=idem)
    outcome = [r for r in rows if r["stage"] == "outcome"]
    replays = [r for r in rows if r["decision"] == "replayed"]
    assert len(outcome) == 1 and outcome[0]["object_id"] == answer.json()["charge_id"]
    assert replays and all(r["upstream_status"] == 200 for r in replays)
    assert answer.json()["key_id"] in {r["key_id"] for r in replays} - {outcome[0]["key_id"]}, \
        "the redelivery, with a key of its own, was answered with the first delivery's charge"


async def _bill_concurrently(endpoint: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(endpoint, json=b) for b in bodies))


def crossed_in_answers(stack, responses: list[httpx.Response]) -> list[tuple[str, str]]:
    """(customer, label of the key its charge went out with) for every answered
    charge that the audit log shows made with a key other than its request's own."""
    crossed = []
    for r in responses:
        body = r.json()
        if "charge_id" not in body:
            continue
        [row] = outcomes(stack, 1, object_id=body["charge_id"])
        if row["key_id"] != body["key_id"] or row["label"] != serve_billing.key_label("2026-06", body["customer"]):
            crossed.append((body["customer"], row["label"]))
    return crossed


def crossed_in_audit(stack, bodies: list[dict], run: str) -> list[tuple[str, int]]:
    """Every charge attempt the gateway saw (allowed or refused) whose amount is
    not the amount of the customer named by its key's label: a request that
    used another request's key. Amounts are distinct per customer."""
    amount_of = {b["customer_id"]: b["amount_cents"] for b in bodies}
    prefix = serve_billing.key_label("2026-06", "")
    attempts = [r for r in stack.audit(label_prefix=f"{prefix}cus_{run}_")
                if r["stage"] in ("intent", "call") and r["path"] == "/v1/charges"]
    assert attempts, "the audit log has the calls"
    return [(r["label"], r["amount"]) for r in attempts if r["amount"] != amount_of[r["label"].removeprefix(prefix)]]


@pytest.mark.parametrize("unsafe_global_api_key", [False, True], ids=["own-client-per-request", "global-api-key"])
def test_concurrent_requests_in_one_replica_keep_their_own_keys(stack, deploy, unsafe_global_api_key):
    run = uuid.uuid4().hex[:8]
    endpoint = deploy(f"async{int(unsafe_global_api_key)}", num_replicas=1, unsafe_global_api_key=unsafe_global_api_key)
    bodies = [{"customer_id": f"cus_{run}_{i:02d}", "amount_cents": 1000 + i, "billing_period": "2026-06"}
              for i in range(16)]
    stack.set_faults(delay_ms=300, match_path="/v1/charges")  # every charge is in flight at the same time
    try:
        responses = asyncio.run(_bill_concurrently(endpoint, bodies))
    finally:
        stack.clear_faults()
    crossed = crossed_in_audit(stack, bodies, run)
    if not unsafe_global_api_key:
        assert [r.status_code for r in responses] == [200] * 16
        assert max(r.json()["peak_in_flight"] for r in responses) >= 8, "the requests really ran concurrently"
        assert crossed == [] and crossed_in_answers(stack, responses) == []
        assert per_customer(charges(stack, customer_prefix=f"cus_{run}_")) == {
            b["customer_id"]: [b["amount_cents"]] for b in bodies}
        assert len({r.json()["key_id"] for r in responses}) == 16
    else:
        # The same checks catch the shared-global version: the audit log shows
        # calls made with another request's key (whose cap then refuses most).
        assert crossed, "the module-global api_key was overwritten between requests"
