"""The whole path through a real Envoy: vault keys issued by the control
service, swapped by the wasm filter for the real key, refused when they
should be — with nothing sent upstream — and failing closed."""
import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from support.stack import ADMIN_KEY, REAL_KEY, Stack

SEED_REQUEST = {
    "label": "ray-billing-cus_123",
    "vendor": "stripe",
    "allowed_endpoints": ["POST /v1/charges"],
    "daily_usd_cap": 32.99,
    "expires_in_seconds": 3600,
}


def charge_params(**extra):
    return {"amount": 2000, "currency": "usd", "customer": "cus_1", **extra}


def test_issue_show_list_and_revoke_a_key(stack):
    r = stack.admin("POST", "/admin/vault_keys", SEED_REQUEST)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["vault_key"].startswith("vk_") and body["id"].startswith("key_")
    assert body["expires_at"].endswith("Z")
    assert body["daily_usd_cap"] == 32.99 and body["allowed_endpoints"] == ["POST /v1/charges"]

    shown = stack.admin("GET", f"/admin/vault_keys/{body['id']}").json()
    assert shown["label"] == "ray-billing-cus_123" and shown["state"] == "active"
    assert "vault_key" not in shown and body["vault_key"] not in str(shown)

    listed = stack.admin("GET", "/admin/vault_keys", params={"label_prefix": "ray-billing-"}).json()
    assert body["id"] in [k["id"] for k in listed["data"]]
    assert body["vault_key"] not in str(listed)

    revoked = stack.admin("DELETE", f"/admin/vault_keys/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert stack.admin("GET", "/admin/vault_keys/key_nope").status_code == 404


@pytest.mark.parametrize(
    "change, param",
    [
        ({"vendor": "paypal"}, "vendor"),
        ({"allowed_endpoints": ["POST v1/charges"]}, "allowed_endpoints"),
        ({"allowed_endpoints": ["FETCH /v1/charges"]}, "allowed_endpoints"),
        ({"allowed_endpoints": []}, "allowed_endpoints"),
        ({"daily_usd_cap": -5}, "daily_usd_cap"),
        ({"expires_in_seconds": 0}, "expires_in_seconds"),
        ({"expires_in_seconds": 10**9}, "expires_in_seconds"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_key_requests_are_validated_with_a_clear_error(stack, change, param):
    r = stack.admin("POST", "/admin/vault_keys", {**SEED_REQUEST, **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split("_")[0] in err["message"]


def test_the_admin_api_needs_the_admin_key(stack):
    assert stack.admin("POST", "/admin/vault_keys", SEED_REQUEST, key=None).status_code == 401
    r = stack.admin("POST", "/admin/vault_keys", SEED_REQUEST, key="not-the-admin-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "admin_key_invalid"
    # A vault key is not an admin key.
    vk = stack.issue_key()["vault_key"]
    assert stack.admin("GET", "/admin/vault_keys", key=vk).status_code == 403


def test_a_charge_goes_out_with_the_real_key_and_nothing_else(stack):
    vk = stack.issue_key(label="swap")["vault_key"]
    charge = stack.stripe_client(vk).v1.charges.create(params=charge_params(), options={"idempotency_key": "swap-1"})
    assert charge.id.startswith("ch_") and charge.amount == 2000
    seen = stack.upstream_requests(method="POST", path="/v1/charges")[-1]
    assert seen["headers"]["authorization"] == f"Bearer {REAL_KEY}"
    assert "vk_" not in str(seen["headers"]), "no client credential reaches Stripe"
    assert seen["params"]["amount"] == "2000"


def test_basic_auth_as_in_stripes_curl_examples(stack):
    vk = stack.issue_key(label="basic", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])["vault_key"]
    token = base64.b64encode(f"{vk}:".encode()).decode()
    r = stack.call("POST", "/stripe/v1/charges", headers={"Authorization": f"Basic {token}"}, data=charge_params())
    assert r.status_code == 200, r.text
    got = stack.call("GET", f"/stripe/v1/charges/{r.json()['id']}", headers={"Authorization": f"Basic {token}"})
    assert got.status_code == 200 and got.json()["id"] == r.json()["id"]


def test_bad_keys_get_401_in_stripes_shape_and_nothing_is_sent(stack):
    before = len(stack.upstream_requests())
    revoked = stack.issue_key(label="to-revoke")
    stack.admin("DELETE", f"/admin/vault_keys/{revoked['id']}")
    expired = stack.issue_key(label="short-lived", expires_in_seconds=1)["vault_key"]
    unknown = stack.issue_key()["vault_key"]
    unknown = unknown[:10] + ("A" if unknown[10] != "A" else "B") + unknown[11:]  # a typo: checksum fails
    time.sleep(1.2)
    cases = {
        revoked["vault_key"]: "vault_key_revoked",
        expired: "vault_key_expired",
        unknown: "vault_key_malformed",
        "vk_short": "vault_key_malformed",
        REAL_KEY: "vault_key_malformed",
    }
    for key, code in cases.items():
        r = stack.call("POST", "/stripe/v1/charges", key, data=charge_params())
        assert r.status_code == 401, (key[:6], r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == code
        assert key not in r.text
    with pytest.raises(stripe.AuthenticationError):
        stack.stripe_client(revoked["vault_key"]).v1.charges.create(params=charge_params())
    assert stack.call("POST", "/stripe/v1/charges", data=charge_params()).json()["error"]["code"] == "vault_key_missing"
    assert len(stack.upstream_requests()) == before


def test_a_key_unknown_to_the_vault_is_refused(stack):
    from keybrake_testkeys import well_formed_unknown_key

    r = stack.call("GET", "/stripe/v1/charges", well_formed_unknown_key())
    assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_unknown"


def test_calls_outside_the_scope_get_403(stack):
    vk = stack.issue_key(label="scope", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])["vault_key"]
    before = len(stack.upstream_requests())
    for method, path in [
        ("POST", "/stripe/v1/refunds"),
        ("POST", "/stripe/v1/charges/../refunds"),
        ("POST", "/stripe/v1/charges/%2e%2e/refunds"),
        ("GET", "/stripe/v1/charges"),
        ("GET", "/stripe/v1/customers/cus_1"),
        ("DELETE", "/stripe/v1/charges/ch_1"),
        ("POST", "/stripe/V1/Charges"),
    ]:
        r = httpx.request(method, stack.url + path, headers={"Authorization": f"Bearer {vk}"},
                          data={"charge": "ch_1"} if method == "POST" else None, timeout=10)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "endpoint_not_allowed"
    with pytest.raises(stripe.PermissionError):
        stack.stripe_client(vk).v1.refunds.create(params={"charge": "ch_1"})
    assert len(stack.upstream_requests()) == before


def test_paths_are_normalised_before_the_scope_check_and_forwarded_canonically(stack):
    vk = stack.issue_key(label="norm")["vault_key"]
    r = stack.call("POST", "/stripe/v1//charges/", vk, data=charge_params())
    assert r.status_code == 200, r.text
    assert stack.upstream_requests(method="POST")[-1]["path"] == "/v1/charges"


def test_fails_closed_when_the_control_service_is_down(fresh_stack):
    s: Stack = fresh_stack()
    vk = s.issue_key(label="closed")["vault_key"]
    s.stop_process("control")
    for _ in range(3):
        r = s.call("POST", "/stripe/v1/charges", vk, data=charge_params())
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "api_error"
        assert s.call("GET", "/stripe/v1/charges/ch_1", vk).status_code == 503
    assert s.upstream_requests() == []
    s.start_control()
    assert s.call("POST", "/stripe/v1/charges", vk, data=charge_params()).status_code == 200


def test_call_ids_are_unique_across_workers_and_restarts(fresh_stack):
    """Each Envoy worker runs its own VM, which names the calls it asks about.
    Two VMs naming calls alike would give two charges one call id: the second
    is refused (the ledger holds the first), or worse, a settlement lands on
    the wrong call. Seen on PostgreSQL when the VMs were seeded from the time."""
    s: Stack = fresh_stack()
    vk = s.issue_key(label="call-ids", daily_usd_cap=10_000)["vault_key"]

    def burst(tag: str) -> list[tuple[int, str]]:
        def one(i: int) -> tuple[int, str]:
            # A connection per call, so the calls spread over both workers.
            r = s.call("POST", "/stripe/v1/charges", vk,
                       data={"amount": 100 + i, "currency": "usd", "description": f"{tag}-{i}"})
            return r.status_code, r.headers.get("keybrake-call-id", "")
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(40)))

    before = burst("first")
    s.stop_envoy_cleanly()
    s.start_envoy()
    after = burst("after-restart")
    assert [code for code, _ in before + after] == [200] * 80
    ids = [call_id for _, call_id in before + after]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 80
    # call_ + one VM's 16-digit prefix + its counter: both workers took calls, each VM its own prefix.
    vms_before = {i[:21] for _, i in before}
    vms_after = {i[:21] for _, i in after}
    assert len(vms_before) == 2 and len(vms_after) == 2 and not vms_before & vms_after, (vms_before, vms_after)
    assert s.upstream_counts()["charges"] == 80
    assert "gave no random bytes" not in s.logs()


def test_with_localstripe_as_the_upstream(fresh_stack):
    """localstripe accepts only sk_ keys: a charge through it proves the swap."""
    s: Stack = fresh_stack(upstream="localstripe")
    scopes = ["POST /v1/payment_methods", "POST /v1/charges", "GET /v1/charges/*"]
    vk = s.issue_key(label="localstripe", allowed_endpoints=scopes)["vault_key"]
    client = s.stripe_client(vk)
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    pm = client.v1.payment_methods.create(params={"type": "card", "card": card})
    charge = client.v1.charges.create(params={"amount": 1500, "currency": "usd", "source": pm.id})
    assert charge.status == "succeeded" and charge.amount == 1500
    assert client.v1.charges.retrieve(charge.id).id == charge.id
    direct = httpx.post(f"{s.upstream_url}/v1/customers", auth=(vk, ""), data={"email": "a@b.c"})
    assert direct.status_code == 401, "localstripe itself refuses the vault key"
