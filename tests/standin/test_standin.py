"""Tests of the Stripe stand-in, driven mostly through the official stripe SDK.

Each stand-in runs as a subprocess, as the end-to-end tests run it.
"""

from __future__ import annotations

import gzip
import http.client
import select
import sys
import tempfile
import threading
import zlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import stripe

from support import processes
from support.stack import wait_for

STANDIN = Path(__file__).with_name("stripe_standin.py")
KEY = "sk_test_standin"


class Standin:
    """A running stand-in process and its test hooks."""

    def __init__(self, *extra_args: str):
        log = Path(tempfile.mkdtemp(prefix="standin-")) / "standin.log"
        self.process = processes.launch("stand-in", [sys.executable, STANDIN, "--port", "0", "--expect-key", KEY,
                                                     *extra_args], log, stdout_pipe=True)
        line = processes.read_ready_line(self.process, "READY ")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.hooks = httpx.Client(base_url=f"{self.url}/__standin")

    def client(self, key: str = KEY) -> stripe.StripeClient:
        return stripe.StripeClient(key, base_addresses={"api": self.url}, max_network_retries=0)

    def requests(self, **filters: str) -> list[dict]:
        return self.hooks.get("/requests", params=filters).raise_for_status().json()

    def counts(self) -> dict:
        return self.hooks.get("/counts").raise_for_status().json()

    def set_faults(self, **spec) -> None:
        self.hooks.post("/faults", json=spec).raise_for_status()

    def reset(self) -> None:
        self.hooks.delete("/requests").raise_for_status()
        self.hooks.delete("/faults").raise_for_status()

    def stop(self) -> None:
        self.hooks.close()
        processes.stop(self.process)


@pytest.fixture(scope="module")
def standin_process():
    standin = Standin()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def honoring_process():
    standin = Standin("--honor-idempotency")
    yield standin
    standin.stop()


@pytest.fixture
def standin(standin_process):
    standin_process.reset()
    return standin_process


@pytest.fixture
def honoring(honoring_process):
    honoring_process.reset()
    return honoring_process


CHARGE = {"amount": 1234, "currency": "USD", "source": "tok_visa"}


def test_prints_only_the_ready_line(standin):
    standin.client().v1.charges.create(params=CHARGE)
    ready, _, _ = select.select([standin.process.popen.stdout], [], [], 0.2)
    assert not ready, "the stand-in wrote to stdout after READY"


def test_charge_is_created_and_counted(standin):
    charge = standin.client().v1.charges.create(params=CHARGE)

    assert charge.id.startswith("ch_")
    assert (charge.object, charge.amount, charge.currency) == ("charge", 1234, "usd")
    assert charge.status == "succeeded" and charge.paid and charge.captured
    assert charge.livemode is False
    assert charge.last_response.request_id.startswith("req_")
    assert standin.client().v1.charges.retrieve(charge.id).id == charge.id
    counts = standin.counts()
    assert (counts["charges"], counts["charges_attempted"], counts["requests"]) == (1, 1, 2)


def test_charges_are_listed_newest_first_with_limit(standin):
    client = standin.client()
    ids = [client.v1.charges.create(params=CHARGE).id for _ in range(3)]

    page = client.v1.charges.list(params={"limit": 2})

    assert [charge.id for charge in page.data] == ids[::-1][:2]
    assert page.has_more is True


def test_wrong_key_is_refused_but_recorded(standin):
    with pytest.raises(stripe.AuthenticationError) as raised:
        standin.client("sk_test_wrong_key_123").v1.charges.create(params=CHARGE)

    assert raised.value.http_status == 401
    assert raised.value.json_body["error"]["code"] == "api_key_invalid"
    assert "sk_test_wrong_key_123" not in raised.value.http_body
    (record,) = standin.requests()
    assert record["status"] == 401
    assert standin.counts()["charges"] == 0


def test_basic_auth_with_the_key_as_user_name_is_accepted(standin):
    response = httpx.post(f"{standin.url}/v1/customers", auth=(KEY, ""), data={"email": "a@example.com"})

    assert response.status_code == 200
    assert response.json()["email"] == "a@example.com"


def test_declined_card_raises_card_error_and_stores_a_failed_charge(standin):
    client = standin.client()
    with pytest.raises(stripe.CardError) as raised:
        client.v1.charges.create(params={**CHARGE, "source": "tok_chargeDeclined"})

    error = raised.value.json_body["error"]
    assert (raised.value.http_status, raised.value.code) == (402, "card_declined")
    assert error["decline_code"] == "generic_decline"
    assert client.v1.charges.retrieve(error["charge"]).status == "failed"
    counts = standin.counts()
    assert (counts["charges"], counts["charges_attempted"]) == (0, 1)


def test_missing_amount_is_a_parameter_missing_error(standin):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        standin.client().v1.charges.create(params={"currency": "usd"})

    error = raised.value
    assert (error.http_status, error.code, error.param) == (400, "parameter_missing", "amount")


def test_unknown_id_and_unknown_url_are_resource_missing(standin):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        standin.client().v1.charges.retrieve("ch_missing")
    error = raised.value
    assert (error.http_status, error.code, error.param) == (404, "resource_missing", "id")

    response = httpx.get(f"{standin.url}/v1/xyz", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unrecognized request URL (GET: /v1/xyz)."


def test_idempotency_key_is_ignored_by_default(standin):
    client = standin.client()
    options = {"idempotency_key": "same-key"}

    first = client.v1.charges.create(params=CHARGE, options=options)
    second = client.v1.charges.create(params=CHARGE, options=options)

    assert first.id != second.id
    assert standin.counts()["charges"] == 2


def test_idempotency_key_is_honoured_on_request(honoring):
    client = honoring.client()
    options = {"idempotency_key": "same-key"}

    first = client.v1.charges.create(params=CHARGE, options=options)
    second = client.v1.charges.create(params=CHARGE, options=options)

    assert first.id == second.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert honoring.counts()["charges"] == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.charges.create(params={**CHARGE, "amount": 1}, options=options)


def test_reset_fault_drops_the_connection_after_the_charge_is_made(standin):
    standin.set_faults(reset_after_receive=1, match_path="/v1/charges")
    client = standin.client()

    with pytest.raises(stripe.APIConnectionError):
        client.v1.charges.create(params=CHARGE)
    client.v1.charges.create(params=CHARGE)  # the fault was used up

    assert standin.counts()["charges"] == 2
    assert [record["status"] for record in standin.requests()] == [None, 200]


def test_reset_fault_header_applies_to_one_request(standin):
    client = standin.client()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.charges.create(params=CHARGE, options={"headers": {"X-Standin-Fault": "reset"}})

    assert standin.counts()["charges"] == 1


def test_fail_status_fault_creates_nothing(standin):
    standin.set_faults(fail_status=500, match_path="/v1/charges")

    with pytest.raises(stripe.APIError) as raised:
        standin.client().v1.charges.create(params=CHARGE)

    assert raised.value.http_status == 500
    assert raised.value.json_body["error"]["type"] == "api_error"
    assert standin.counts()["charges"] == 0


def test_delay_fault_holds_the_response(standin):
    standin.set_faults(delay_ms=300)
    started = time.monotonic()

    standin.client().v1.balance.retrieve()

    assert time.monotonic() - started >= 0.3


def test_hold_fault_answers_only_once_released(standin):
    standin.set_faults(hold=True, match_path="/v1/charges")
    answered: list[int] = []
    caller = threading.Thread(target=lambda: answered.append(
        httpx.post(f"{standin.url}/v1/charges", data={"amount": 100, "currency": "usd"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60).status_code))
    caller.start()
    held = wait_for(lambda: [r for r in standin.requests(path="/v1/charges") if r["status"] is None], what="the held charge")
    assert len(held) == 1 and standin.counts()["charges"] == 1, "processed and recorded, not yet answered"
    standin.client().v1.balance.retrieve()  # other paths are not held
    assert answered == []
    standin.hooks.post("/release").raise_for_status()
    caller.join(timeout=60)
    assert answered == [200]
    assert [r["status"] for r in standin.requests(path="/v1/charges")] == [200]


def test_bracket_params_round_trip(standin):
    metadata = {"order_id": "A-1", "note": "a b&c=d [x]"}
    charge = standin.client().v1.charges.create(params={**CHARGE, "metadata": metadata})
    assert charge.metadata.to_dict() == metadata

    body = "line_items[0][price_data][unit_amount]=100&line_items[1][quantity]=2&expand[]=a&expand[]=b"
    httpx.post(
        f"{standin.url}/v1/customers?metadata[0]=zero",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"},
        content=body,
    ).raise_for_status()
    (record,) = standin.requests(method="POST", path="/v1/customers")
    assert record["params"] == {
        "metadata": {"0": "zero"},
        "line_items": [{"price_data": {"unit_amount": "100"}}, {"quantity": "2"}],
        "expand": ["a", "b"],
    }


def test_request_log_shows_what_was_received(standin):
    standin.client().v1.charges.create(params=CHARGE, options={"idempotency_key": "k-1"})

    (record,) = standin.requests(method="post", path="/v1/charges")
    assert record["seq"] == 1
    assert record["headers"]["authorization"] == f"Bearer {KEY}"
    assert record["headers"]["idempotency-key"] == "k-1"
    assert record["body"] == "amount=1234&currency=USD&source=tok_visa"
    assert record["params"] == {"amount": "1234", "currency": "USD", "source": "tok_visa"}
    assert record["status"] == 200
    assert standin.requests(method="GET") == []


@pytest.mark.parametrize("body", ["amount=%zz", b"amount=\xff", "amount=%ff", "=1", "a=1&a[b]=2", "a[]b=1"])
def test_malformed_bodies_get_a_stripe_error(standin, body):
    response = httpx.post(
        f"{standin.url}/v1/charges", headers={"Authorization": f"Bearer {KEY}"}, content=body
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert standin.counts()["charges_attempted"] == 1


def test_payment_intent_lifecycle(standin):
    intents = standin.client().v1.payment_intents
    intent = intents.create(params={"amount": 500, "currency": "eur", "capture_method": "manual"})
    assert intent.status == "requires_confirmation"

    intent = intents.update(intent.id, params={"amount": 600, "metadata": {"k": "v"}})
    intent = intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert (intent.status, intent.amount_capturable) == ("requires_capture", 600)
    intent = intents.increment_authorization(intent.id, params={"amount": 700})
    intent = intents.capture(intent.id)
    assert (intent.status, intent.amount_received) == ("succeeded", 700)
    assert intent.metadata.to_dict() == {"k": "v"}

    refund = standin.client().v1.refunds.create(params={"payment_intent": intent.id, "amount": 200})
    assert (refund.amount, refund.currency, refund.payment_intent) == (200, "eur", intent.id)
    assert standin.counts()["payment_intents_confirmed"] == 1


def test_confirmed_on_creation_and_declined_intents(standin):
    intents = standin.client().v1.payment_intents
    params = {"amount": 500, "currency": "usd", "confirm": True}

    assert intents.create(params={**params, "payment_method": "pm_card_visa"}).status == "succeeded"
    with pytest.raises(stripe.CardError):
        intents.create(params={**params, "payment_method": "pm_card_chargeDeclined"})
    assert standin.counts()["payment_intents_confirmed"] == 1


def api_post(standin: Standin, path: str, **params) -> httpx.Response:
    return httpx.post(f"{standin.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, data=params)


def test_capture_and_the_three_ways_to_refund_a_charge(standin):
    client = standin.client()
    charge = client.v1.charges.create(params={**CHARGE, "amount": 1000, "capture": False})
    assert client.v1.charges.capture(charge.id, params={"amount": 800}).amount_captured == 800

    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 300})
    assert (refund.object, refund.amount, refund.currency, refund.charge) == ("refund", 300, "usd", charge.id)
    assert api_post(standin, f"/v1/charges/{charge.id}/refunds", amount="100").json()["object"] == "refund"
    legacy = api_post(standin, f"/v1/charges/{charge.id}/refund").json()
    assert (legacy["object"], legacy["amount_refunded"]) == ("charge", 800)
    assert len(legacy["refunds"]["data"]) == 3

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"charge": charge.id})
    assert raised.value.code == "charge_already_refunded"
    assert standin.counts()["refunds"] == 3


def test_transfers_payouts_topups_and_balance(standin):
    client = standin.client()
    client.v1.charges.create(params={**CHARGE, "amount": 1000})
    transfer = client.v1.transfers.create(params={"amount": 100, "currency": "usd", "destination": "acct_1"})
    reversal = client.v1.transfers.reversals.create(transfer.id, params={"amount": 40})
    assert (reversal.object, reversal.amount, reversal.transfer) == ("transfer_reversal", 40, transfer.id)
    assert client.v1.payouts.create(params={"amount": 50, "currency": "usd"}).status == "pending"
    assert client.v1.topups.create(params={"amount": 10, "currency": "usd"}).id.startswith("tu_")

    available = client.v1.balance.retrieve().available[0]
    assert (available.currency, available.amount) == ("usd", 1000 - 100 + 40 - 50 + 10)
    counts = standin.counts()
    assert (counts["transfers"], counts["payouts"]) == (1, 1)


def test_customers_and_invoice_items(standin):
    client = standin.client()
    customer = client.v1.customers.create(params={"email": "a@example.com", "metadata": {"a": "1", "b": "2"}})
    customer = client.v1.customers.update(customer.id, params={"name": "Ann", "metadata": {"a": ""}})
    assert (customer.name, customer.email) == ("Ann", "a@example.com")
    assert customer.metadata.to_dict() == {"b": "2"}

    item = client.v1.invoice_items.create(params={"customer": customer.id, "amount": 250, "currency": "usd"})
    assert (item.object, item.amount, item.customer) == ("invoiceitem", 250, customer.id)

    deleted = client.v1.customers.delete(customer.id)
    assert (deleted.id, deleted.deleted) == (customer.id, True)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.retrieve(customer.id)


def test_keep_alive_connection_serves_several_requests(standin):
    connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=5)
    for _ in range(3):
        connection.request("GET", "/v1/balance", headers={"Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Request-Id").startswith("req_")
        response.read()
    connection.close()
    assert standin.counts()["requests"] == 3


def test_handles_200_concurrent_connections(standin):
    def charge(_):
        connection = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=30)
        connection.request(
            "POST", "/v1/charges", body="amount=100&currency=usd",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        status = connection.getresponse().status
        connection.close()
        return status

    standin.set_faults(delay_ms=200)  # keeps every connection open at once
    with ThreadPoolExecutor(max_workers=200) as pool:
        statuses = list(pool.map(charge, range(200)))

    assert statuses == [200] * 200
    assert standin.counts()["charges"] == 200


def test_overcharge_fault_moves_more_than_asked(standin):
    standin.set_faults(overcharge_factor=1000, match_path="/v1/charges")
    charge = standin.client().v1.charges.create(params={**CHARGE, "amount": 100})
    assert charge.amount == 100_000
    assert standin.requests(path="/v1/charges")[-1]["answer"]["amount"] == 100_000, "the record shows what moved"


@pytest.fixture(scope="module")
def lenient_process():
    standin = Standin("--lenient")
    yield standin
    standin.stop()


@pytest.fixture
def lenient(lenient_process):
    lenient_process.reset()
    return lenient_process


@pytest.mark.parametrize(("body", "content_type", "encoding", "amount"), [
    (b'{"amount": 100000, "currency": "usd"}', "application/x-www-form-urlencoded", None, 100_000),
    (b"amount=1&amount=100000&currency=usd", "application/x-www-form-urlencoded", None, 100_000),
    (b"amount=1;amount=100000&currency=usd", "application/x-www-form-urlencoded", None, 100_000),
    (b"amount=1&amount[]=7&amount=100000&currency=usd", "application/x-www-form-urlencoded", None, 100_000),
    (b"amount=1_000&currency=USD", "application/x-www-form-urlencoded", None, 1000),
    (b"amount=1e5&currency=usd", "application/x-www-form-urlencoded", None, 100_000),
    ("amount=１００&currency=usd".encode(), "application/x-www-form-urlencoded", None, 100),
    ("amount=100000&currency=usd".encode("utf-16"), "application/x-www-form-urlencoded; charset=utf-16", None, 100_000),
    (gzip.compress(b"amount=100000&currency=usd"), "application/x-www-form-urlencoded", "gzip", 100_000),
    (zlib.compress(b"amount=100000&currency=usd"), "application/x-www-form-urlencoded", "deflate", 100_000),
])
def test_lenient_mode_reads_what_forgiving_frameworks_read(lenient, body, content_type, encoding, amount):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    r = httpx.post(f"{lenient.url}/v1/charges", content=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["amount"] == amount


def test_lenient_booleans_confirm_an_intent(lenient):
    r = httpx.post(f"{lenient.url}/v1/payment_intents", data={"amount": 500, "currency": "usd", "confirm": "True"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.json()["status"] == "succeeded"


def test_strict_mode_refuses_what_lenient_mode_reads(standin):
    for body in (b'{"amount": 100000, "currency": "usd"}', b"amount=1e5&currency=usd", b"amount=+100&currency=usd"):
        r = httpx.post(f"{standin.url}/v1/charges", content=body, timeout=10,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400, (body, r.text)
