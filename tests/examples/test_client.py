"""The keybrake Python client (clients/python) against a real gateway: every
call goes through Envoy, the filter and the control service to the recording
stand-in, and every assertion is on what the upstream received or what the
gateway recorded."""
from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal

import pytest
import stripe

import keybrake
from examples_support import charges, error_code, outcomes
from support.stack import ADMIN_KEY, wait_for


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def charge_params(customer: str, amount: int = 2999, **extra) -> dict:
    return {"amount": amount, "currency": "usd", "customer": customer, "description": "Subscription 2026-06", **extra}


@pytest.fixture(scope="module")
def kb(stack):
    with keybrake.Keybrake(stack.url, ADMIN_KEY) as client:
        yield client


def test_an_issued_key_charges_through_the_gateway_and_is_named_in_the_audit_log(stack, kb):
    customer = unique("cus_issue")
    key = kb.issue_vault_key(f"client-issue-{customer}", daily_usd_cap=keybrake.usd_cap(2999))
    assert key.vault_key.startswith("vk_") and key.id.startswith("key_")
    assert key.info["daily_usd_cap"] == 32.99 and key.info["allowed_endpoints"] == ["POST /v1/charges"]
    charge = keybrake.stripe_client(key.vault_key, url=stack.url).v1.charges.create(params=charge_params(customer))
    sent = charges(stack, customer_prefix=customer)
    assert len(sent) == 1 and sent[0]["headers"]["authorization"] == "Bearer sk_test_keybrake_real_4242"
    outcome = outcomes(stack, 1, key_id=key.id)
    assert [(r["object_id"], r["label"], r["usd"]) for r in outcome] == [(charge.id, f"client-issue-{customer}", 29.99)]
    assert key.vault_key not in repr(key) and key.vault_key not in str(key)


@pytest.mark.parametrize("cap", [Decimal("12.50"), "12.5", 12.5, 12])
def test_caps_are_sent_as_exact_decimals_and_enforced(stack, kb, cap):
    customer = unique("cus_cap")
    key = kb.issue_vault_key(f"client-cap-{customer}", daily_usd_cap=cap)
    assert Decimal(str(key.info["daily_usd_cap"])) == Decimal(str(cap))
    client = keybrake.stripe_client(key.vault_key, url=stack.url)
    with pytest.raises(stripe.RateLimitError) as refused:  # 429, Stripe-Should-Retry: false
        client.v1.charges.create(params=charge_params(customer, amount=1300))
    assert error_code(refused.value) == "spend_cap_exceeded"
    assert charges(stack, customer_prefix=customer) == []
    client.v1.charges.create(params=charge_params(customer, amount=1100))
    assert len(charges(stack, customer_prefix=customer)) == 1


def test_every_admin_field_reaches_the_gateway(stack, kb):
    customer = unique("cus_fields")
    key = kb.issue_vault_key(
        f"client-fields-{customer}", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"],
        daily_usd_cap="100", expires_in_seconds=120, max_amount_per_call_usd=Decimal("20"),
        allow_unpriced_calls=True, dedup="idempotency_key", dedup_window_seconds=600, allowed_accounts=["acct_1A"])
    info = key.info
    assert (info["max_amount_per_call_usd"], info["allow_unpriced_calls"], info["dedup"]) == (20, True, "idempotency_key")
    client = keybrake.stripe_client(key.vault_key, url=stack.url)
    with pytest.raises(stripe.StripeError) as over:
        client.v1.charges.create(params=charge_params(customer, amount=2500))
    assert over.value.http_status in (402, 403, 429) and charges(stack, customer_prefix=customer) == []
    # dedup="idempotency_key": the same content with two caller keys is two charges.
    client.v1.charges.create(params=charge_params(customer, amount=500), options={"stripe_account": "acct_1A"})
    client.v1.charges.create(params=charge_params(customer, amount=500), options={"stripe_account": "acct_1A"})
    assert len(charges(stack, customer_prefix=customer)) == 2
    with pytest.raises(stripe.PermissionError):
        client.v1.charges.create(params=charge_params(customer, amount=500), options={"stripe_account": "acct_2B"})


def test_a_4xx_raises_keybrake_error_with_the_servers_message(stack, kb):
    with pytest.raises(keybrake.KeybrakeError) as bad:
        kb.issue_vault_key("client-bad", allowed_endpoints=["POST /v1/not a path"])
    e = bad.value
    assert e.status == 400 and e.code == "parameter_invalid" and e.param == "allowed_endpoints"
    assert e.message.startswith("allowed_endpoints") and e.message in str(e)
    with pytest.raises(keybrake.KeybrakeError) as unknown:
        kb.revoke("key_does_not_exist")
    assert unknown.value.status == 404 and "key_does_not_exist" in unknown.value.message
    with pytest.raises(keybrake.KeybrakeError) as unauthorized:
        keybrake.Keybrake(stack.url, "kb_admin_wrong").issue_vault_key("client-unauthorized")
    assert unauthorized.value.status == 401 and unauthorized.value.code == "admin_key_invalid"
    assert stack.admin("GET", "/admin/vault_keys", params={"label_prefix": "client-unauthorized"}).json()["data"] == []


def test_address_and_admin_key_come_from_the_environment(stack, monkeypatch):
    monkeypatch.delenv("KEYBRAKE_URL", raising=False)
    monkeypatch.delenv("KEYBRAKE_ADMIN_KEY", raising=False)
    with pytest.raises(keybrake.KeybrakeConfigError, match="KEYBRAKE_URL"):
        keybrake.issue_vault_key("client-env")
    monkeypatch.setenv("KEYBRAKE_URL", stack.url + "/")
    with pytest.raises(keybrake.KeybrakeConfigError, match="KEYBRAKE_ADMIN_KEY"):
        keybrake.issue_vault_key("client-env")
    monkeypatch.setenv("KEYBRAKE_ADMIN_KEY", ADMIN_KEY)
    customer = unique("cus_env")
    key = keybrake.issue_vault_key(f"client-env-{customer}", daily_usd_cap=50)
    keybrake.stripe_client(key.vault_key).v1.charges.create(params=charge_params(customer))
    assert len(charges(stack, customer_prefix=customer)) == 1
    assert keybrake.stripe_base() == f"{stack.url}/stripe"


def test_an_unreachable_gateway_is_a_connection_error():
    with pytest.raises(keybrake.KeybrakeConnectionError) as e:
        keybrake.Keybrake("http://127.0.0.1:9", ADMIN_KEY, timeout=2).issue_vault_key("nowhere")
    assert e.value.status is None


def test_revoke_stops_the_next_call(stack, kb):
    customer = unique("cus_revoke")
    key = kb.issue_vault_key(f"client-revoke-{customer}", daily_usd_cap=100)
    client = keybrake.stripe_client(key.vault_key, url=stack.url)
    client.v1.charges.create(params=charge_params(customer, amount=100))
    view = keybrake.revoke(key.id, url=stack.url, admin_key=ADMIN_KEY)
    assert view["id"] == key.id and view["state"] == "revoked"
    with pytest.raises(stripe.AuthenticationError) as refused:
        client.v1.charges.create(params=charge_params(customer, amount=200))
    assert error_code(refused.value) == "vault_key_revoked"
    assert len(charges(stack, customer_prefix=customer)) == 1


def test_revoke_prefix_revokes_one_run_and_nothing_else(stack, kb):
    run = unique("client-run")
    keys = [kb.issue_vault_key(f"{run}-cus_{i}", daily_usd_cap=10) for i in range(3)]
    other = kb.issue_vault_key(f"{run}x-other", daily_usd_cap=10)
    result = keybrake.revoke_prefix(f"{run}-", url=stack.url, admin_key=ADMIN_KEY)
    assert result.revoked == 3 and sorted(result.ids) == sorted(k.id for k in keys)
    for k in keys:
        with pytest.raises(stripe.AuthenticationError):
            keybrake.stripe_client(k.vault_key, url=stack.url).v1.charges.create(params=charge_params(f"{run}-c", 100))
    keybrake.stripe_client(other.vault_key, url=stack.url).v1.charges.create(params=charge_params(f"{run}_other", 100))
    assert len(charges(stack, customer_prefix=f"{run}-")) == 0
    assert len(charges(stack, customer_prefix=f"{run}_other")) == 1
    with pytest.raises(ValueError):
        kb.revoke_prefix("")


def test_billing_idempotency_key_is_the_seeds_content_hash():
    key = keybrake.billing_idempotency_key("cus_abc123", 2999, "2026-06", context="ray-billing")
    assert key == hashlib.sha256(b"cus_abc123:2999:2026-06:ray-billing").hexdigest()[:32]
    assert len(key) == 32 and int(key, 16) >= 0
    assert key == keybrake.billing_idempotency_key("cus_abc123", Decimal(2999), "2026-06", context="ray-billing")
    others = {
        keybrake.billing_idempotency_key("cus_abc123", 2999, "2026-07", context="ray-billing"),
        keybrake.billing_idempotency_key("cus_abc123", 3000, "2026-06", context="ray-billing"),
        keybrake.billing_idempotency_key("cus_abc123", 2999, "2026-06", context="kestra-billing"),
    }
    assert key not in others and len(others) == 3
    with pytest.raises(TypeError):
        keybrake.billing_idempotency_key("cus_abc123", 29.99, "2026-06", context="ray-billing")
    with pytest.raises(TypeError):
        keybrake.billing_idempotency_key("cus_abc123", None, context="ray-billing")
    with pytest.raises(ValueError):
        keybrake.billing_idempotency_key("cus_abc123", context="")
    assert keybrake.usd_cap(2999) == Decimal("32.99") and keybrake.usd_cap(1000, "0") == Decimal("10.00")


def test_the_content_hash_key_makes_a_rerun_one_charge(stack, kb):
    customer = unique("cus_idem")
    idem = keybrake.billing_idempotency_key(customer, 2999, "2026-06", context="client-test")
    ids = set()
    for attempt in range(3):  # three runs of a job, each with a fresh key and client
        key = kb.issue_vault_key(f"client-idem-{customer}-{attempt}", daily_usd_cap=keybrake.usd_cap(2999))
        client = keybrake.stripe_client(key.vault_key, url=stack.url)
        ids.add(client.v1.charges.create(params=charge_params(customer), options={"idempotency_key": idem}).id)
    assert len(ids) == 1 and len(charges(stack, customer_prefix=customer)) == 1
    rows = kb.audit(idempotency_key=idem)
    assert sorted(r["decision"] for r in rows if r["stage"] != "intent") == ["allowed", "replayed", "replayed"]


def test_the_preflight_check_with_an_audit_scoped_key(stack, kb):
    customer = unique("cus_pre")
    idem = keybrake.billing_idempotency_key(customer, 2999, "2026-06", context="client-preflight")
    auditor = keybrake.issue_audit_key(f"client-auditor-{customer}", url=stack.url, admin_key=ADMIN_KEY)
    reader = keybrake.Keybrake(stack.url)  # no admin key: the job holds only the audit key
    assert reader.already_done(idem, key=auditor.vault_key) is None
    payer = kb.issue_vault_key(f"client-payer-{customer}", daily_usd_cap=50)
    charge = keybrake.stripe_client(payer.vault_key, url=stack.url).v1.charges.create(
        params=charge_params(customer), options={"idempotency_key": idem})
    done = wait_for(lambda: reader.already_done(idem, key=auditor.vault_key), what="the outcome row")
    assert done is not None and done["object_id"] == charge.id and done["key_id"] == payer.id
    rows = keybrake.audit(url=stack.url, key=auditor.vault_key, idempotency_key=idem)
    assert {r["stage"] for r in rows} == {"intent", "outcome"} and all(r["idempotency_key"] == idem for r in rows)
    # The audit key reads the log and does nothing else.
    with pytest.raises(keybrake.KeybrakeError) as forbidden:
        keybrake.Keybrake(stack.url, auditor.vault_key).issue_vault_key("client-escalate")
    assert forbidden.value.status == 403
    with pytest.raises(keybrake.KeybrakeConfigError):
        reader.revoke_prefix("client-")
    with pytest.raises(stripe.PermissionError):
        keybrake.stripe_client(auditor.vault_key, url=stack.url).v1.charges.create(params=charge_params(customer))
    assert len(charges(stack, customer_prefix=customer)) == 1


def test_audit_follows_cursors_across_pages(stack, kb):
    customer = unique("cus_pages")
    key = kb.issue_vault_key(f"client-pages-{customer}", daily_usd_cap=100)
    client = keybrake.stripe_client(key.vault_key, url=stack.url)
    for i in range(4):
        client.v1.charges.create(params=charge_params(f"{customer}_{i}", amount=100 + i))
    outcomes(stack, 4, key_id=key.id)
    whole = kb.audit(key_id=key.id)
    paged = kb.audit(key_id=key.id, page_size=3)
    assert len(whole) == 8 and [r["seq"] for r in paged] == [r["seq"] for r in whole]
    assert [r["seq"] for r in kb.audit(key_id=key.id, page_size=3, limit=5)] == [r["seq"] for r in whole[:5]]
    newest = kb.audit(key_id=key.id, order="desc", limit=1)
    assert newest[0]["seq"] == whole[-1]["seq"]


def test_stripe_client_refuses_a_real_secret_key(stack):
    with pytest.raises(ValueError, match="real Stripe secret key"):
        keybrake.stripe_client("sk_live_123", url=stack.url)
    client = keybrake.stripe_client("vk_whatever", url=stack.url, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):  # the gateway, not api.stripe.com, answered
        client.v1.charges.create(params=charge_params("cus_nobody"))
