"""Spend caps that cannot be overshot: every money-moving call is priced in
the filter and reserved atomically in the control service before it is
forwarded, then committed or released by Stripe's answer."""
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from support.stack import Stack, wait_for

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def usage(stack: Stack, key_id: str) -> dict:
    return stack.admin("GET", f"/admin/vault_keys/{key_id}").json()


def charge(stack: Stack, vk: str, amount: int, currency: str = "usd", **extra) -> httpx.Response:
    return stack.call("POST", "/stripe/v1/charges", vk, data={"amount": amount, "currency": currency, **extra})


def upstream_charged_cents(stack: Stack) -> int:
    return sum(int(r["params"]["amount"]) for r in stack.upstream_requests(method="POST", path="/v1/charges"))


def test_200_concurrent_charges_never_overshoot_the_cap(fresh_stack):
    s: Stack = fresh_stack()
    key = s.issue_key(label="cohort", daily_usd_cap=1000)
    barrier = threading.Barrier(200)

    def one(i: int):
        client = s.stripe_client(key["vault_key"])
        barrier.wait()
        try:
            client.v1.charges.create(params={"amount": 1000, "currency": "usd", "customer": f"cus_{i}"})
            return "ok"
        except stripe.RateLimitError as e:
            assert "Spend cap exceeded" in str(e.user_message)
            assert e.headers.get("stripe-should-retry") == "false"
            return "capped"

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert results.count("ok") == 100 and results.count("capped") == 100
    assert s.upstream_counts()["charges"] == 100
    assert upstream_charged_cents(s) == 100_000
    u = usage(s, key["id"])
    assert (u["spent_today_usd"], u["reserved_usd"], u["uncertain_usd"]) == (1000.0, 0.0, 0.0)
    assert u["remaining_today_usd"] == 0.0


def test_the_cap_holds_across_a_control_service_crash(fresh_stack):
    """SIGKILL the control service mid-run: calls fail closed while it is down,
    reservations survive the restart, and the upstream never sees more than the cap."""
    s: Stack = fresh_stack()
    key = s.issue_key(label="crash", daily_usd_cap=1000)
    stop = threading.Event()
    outcomes: list[int] = []
    timed: list[tuple[str, float, float, int]] = []  # (customer, start, end, status) of every call
    lock = threading.Lock()

    def worker(w: int):
        n = 0
        while not stop.is_set():
            n += 1
            customer, start = f"cus_{w}_{n}", time.monotonic()
            try:
                r = charge(s, key["vault_key"], 1000, customer=customer)
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            with lock:
                outcomes.append(code)
                timed.append((customer, start, time.monotonic(), code))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: s.upstream_counts()["charges"] >= 20, what="charges flowing")
    s.stop_process("control", signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: sum(1 for _, start, _, _ in list(timed) if start > killed) >= 16, what="calls while it is down")
    restarting = time.monotonic()
    s.start_control()
    wait_for(lambda: s.upstream_counts()["charges"] >= 100 or 429 in outcomes[-20:], what="cap reached")
    stop.set()
    for t in threads:
        t.join()

    # Calls made entirely while the control service was down failed closed, every one, and reached nothing.
    while_down = {customer: code for customer, start, end, code in timed if start > killed and end < restarting}
    assert while_down, "some calls were made while the control service was down"
    assert set(while_down.values()) == {503}, f"calls while down must fail closed: {while_down}"
    reached = {r["params"]["customer"] for r in s.upstream_requests(method="POST", path="/v1/charges")}
    assert not reached & set(while_down), f"forwarded while the control service was down: {reached & set(while_down)}"
    assert upstream_charged_cents(s) <= 100_000, "never more than the cap reaches the upstream"
    assert outcomes.count(200) <= 100
    # Every charge the upstream saw is counted (committed, or uncertain if its
    # settlement was lost), and the ledger never holds more than the cap.
    def counted():
        u = usage(s, key["id"])
        total_cents = round((u["spent_today_usd"] + u["uncertain_usd"]) * 100)
        return u["reserved_usd"] == 0 and upstream_charged_cents(s) <= total_cents <= 100_000
    wait_for(counted, timeout=30, what="every upstream charge counted, within the cap")


def test_a_dollars_as_cents_bug_is_refused_on_the_first_call(stack):
    key = stack.issue_key(label="unit-bug", daily_usd_cap=32.99)
    before = stack.upstream_counts()["charges_attempted"]
    r = charge(stack, key["vault_key"], 2999 * 100, customer="cus_expected_2999_cents")
    assert r.status_code == 429
    assert r.headers["stripe-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == "spend_cap_exceeded" and "Spend cap exceeded" in err["message"]
    for figure in ("$32.99", "$0.00", "$2999.00"):
        assert figure in err["message"]
    assert stack.upstream_counts()["charges_attempted"] == before
    assert charge(stack, key["vault_key"], 2999, customer="cus_fixed").status_code == 200


def test_a_per_call_bound_stops_a_100x_bug_under_a_large_daily_cap(stack):
    key = stack.issue_key(label="per-call", daily_usd_cap=100000, max_amount_per_call_usd=50)
    r = charge(stack, key["vault_key"], 2999 * 100)
    assert r.status_code == 429 and r.json()["error"]["code"] == "per_call_limit_exceeded"
    assert charge(stack, key["vault_key"], 4999).status_code == 200


def test_currencies_are_priced_with_stripes_minor_units_and_the_fx_table(stack):
    r = stack.admin("PUT", "/admin/fx_rates", {"as_of": "2026-11-26", "rates": {"jpy": "0.0067", "kwd": 3.25, "isk": "0.0072"}})
    assert r.status_code == 200, r.text
    key = stack.issue_key(label="fx", daily_usd_cap=100)
    cases = [("jpy", 1000, 6.70), ("kwd", 1500, 4.875), ("isk", 50000, 3.60)]  # ¥1,000; 1.500 KWD; 500 ISK
    for currency, amount, usd in cases:
        r = charge(stack, key["vault_key"], amount, currency)
        assert r.status_code == 200, r.text
        row = stack.audit(call_id=r.headers["keybrake-call-id"])[0]
        assert (row["currency"], row["amount"], row["usd"]) == (currency, amount, usd)
    assert usage(stack, key["id"])["spent_today_usd"] == pytest.approx(6.70 + 4.875 + 3.60)
    r = charge(stack, key["vault_key"], 1000, "eur")
    assert r.status_code == 400 and r.json()["error"]["code"] == "currency_without_fx_rate"
    r = charge(stack, key["vault_key"], 1000, "xx1")
    assert r.status_code == 400 and r.json()["error"]["param"] == "currency"
    bad = stack.admin("PUT", "/admin/fx_rates", {"as_of": "2026-11-26", "rates": {"eur": -1}})
    assert bad.status_code == 400


def test_a_declined_card_releases_its_reservation(stack):
    key = stack.issue_key(label="decline", daily_usd_cap=50)
    with pytest.raises(stripe.CardError):
        stack.stripe_client(key["vault_key"]).v1.charges.create(
            params={"amount": 4000, "currency": "usd", "source": "tok_chargeDeclined"})
    u = usage(stack, key["id"])
    assert (u["spent_today_usd"], u["reserved_usd"]) == (0.0, 0.0)
    assert charge(stack, key["vault_key"], 4000, source="tok_visa").status_code == 200
    assert usage(stack, key["id"])["spent_today_usd"] == 40.0


@pytest.mark.parametrize(
    "body, headers, code",
    [
        ("amount=10%zz&currency=usd", FORM, "body_malformed"),
        ("amount=ten&currency=usd", FORM, "amount_invalid"),
        ("amount=-100&currency=usd", FORM, "amount_invalid"),
        ("amount=99999999999999999999999&currency=usd", FORM, "amount_invalid"),
        ("amount=100&amount=200&currency=usd", FORM, "parameter_duplicated"),
        ("amount=100", FORM, "parameter_missing"),
        ('{"amount": 100, "currency": "usd"}', {"Content-Type": "application/json"}, "content_type_unsupported"),
        ("amount=100&currency=usd&metadata[x]=" + "a" * 70_000, FORM, "body_too_large"),
    ],
)
def test_malformed_bodies_get_400_and_move_no_money(stack, body, headers, code):
    key = stack.issue_key(label="malformed")
    before = stack.upstream_counts()["charges_attempted"]
    r = stack.call("POST", "/stripe/v1/charges", key["vault_key"], content=body, headers=dict(headers))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["type"] == "invalid_request_error"
    assert stack.upstream_counts()["charges_attempted"] == before
    u = usage(stack, key["id"])
    assert (u["spent_today_usd"], u["reserved_usd"]) == (0.0, 0.0)


def test_calls_whose_amount_is_unknown_need_an_explicit_opt_in(stack):
    scopes = ["POST /v1/invoices/*/pay", "POST /v1/subscriptions"]
    capped = stack.issue_key(label="unpriced", allowed_endpoints=scopes, daily_usd_cap=100)
    r = stack.call("POST", "/stripe/v1/invoices/in_1/pay", capped["vault_key"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "unpriced_call_not_allowed"
    assert "allow_unpriced_calls" in r.json()["error"]["message"]
    r = stack.call("POST", "/stripe/v1/subscriptions", capped["vault_key"], data={"customer": "cus_1"})
    assert r.status_code == 403
    opted = stack.issue_key(label="unpriced-ok", allowed_endpoints=scopes, daily_usd_cap=100, allow_unpriced_calls=True)
    r = stack.call("POST", "/stripe/v1/invoices/in_1/pay", opted["vault_key"])
    assert r.status_code == 404, "forwarded (the stand-in has no invoices)"


def test_payment_intents_count_when_confirmed_at_the_amount_they_were_created_with(stack):
    scopes = ["POST /v1/payment_intents", "POST /v1/payment_intents/*/confirm"]
    key = stack.issue_key(label="pi", allowed_endpoints=scopes, daily_usd_cap=30)
    client = stack.stripe_client(key["vault_key"])
    pi = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd"})
    assert usage(stack, key["id"])["spent_today_usd"] == 0.0, "an unconfirmed intent moves no money"
    client.v1.payment_intents.confirm(pi.id)
    assert usage(stack, key["id"])["spent_today_usd"] == 20.0
    second = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd"})
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.confirm(second.id)
    with pytest.raises(stripe.RateLimitError):
        client.v1.payment_intents.create(params={"amount": 1500, "currency": "usd", "confirm": True})


def test_refunds_and_captures_are_priced_in_the_currency_of_their_charge(stack):
    scopes = ["POST /v1/charges", "POST /v1/refunds", "POST /v1/charges/*/capture"]
    key = stack.issue_key(label="refund", allowed_endpoints=scopes, daily_usd_cap=100)
    client = stack.stripe_client(key["vault_key"])
    ch = client.v1.charges.create(params={"amount": 3000, "currency": "usd", "capture": False})
    client.v1.charges.capture(ch.id, params={"amount": 2000})
    client.v1.refunds.create(params={"charge": ch.id, "amount": 500})
    client.v1.refunds.create(params={"charge": ch.id})  # no amount: the charge's recorded amount
    assert usage(stack, key["id"])["spent_today_usd"] == 30 + 20 + 5 + 30
    r = stack.call("POST", "/stripe/v1/refunds", key["vault_key"], data={"charge": "ch_not_via_keybrake", "amount": 100})
    assert r.status_code == 403 and r.json()["error"]["code"] == "unpriced_call_not_allowed"


def test_usage_view_lists_keys_by_spend(stack):
    small = stack.issue_key(label="usage-small", daily_usd_cap=100)
    big = stack.issue_key(label="usage-big", daily_usd_cap=100)
    charge(stack, small["vault_key"], 100)
    charge(stack, big["vault_key"], 5000)
    rows = stack.admin("GET", "/admin/usage").json()["data"]
    ids = [r["id"] for r in rows]
    assert ids.index(big["id"]) < ids.index(small["id"])
    big_row = rows[ids.index(big["id"])]
    assert (big_row["daily_usd_cap"], big_row["spent_today_usd"]) == (100.0, 50.0)


def test_an_upstream_reset_after_the_charge_stays_counted_as_uncertain(stack):
    key = stack.issue_key(label="uncertain", daily_usd_cap=100)
    stack.set_faults(reset_after_receive=1, match_path="/v1/charges")
    try:
        r = charge(stack, key["vault_key"], 2500, customer="cus_reset")
    finally:
        stack.clear_faults()
    assert r.status_code in (502, 503), r.text
    u = usage(stack, key["id"])
    assert (u["spent_today_usd"], u["uncertain_usd"], u["reserved_usd"]) == (0.0, 25.0, 0.0)
    assert u["remaining_today_usd"] == 75.0
