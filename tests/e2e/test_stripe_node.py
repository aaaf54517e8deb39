"""stripe-node, unchanged, through the gateway. The official Node SDK (npm
`stripe` 23, pinned in tests/node) takes only a host, a port and a protocol:
its base path is fixed to /v1/, which the gateway serves at the root of its
listener with the same filter, scopes, caps, dedup and audit as /stripe/."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from support.stack import ADMIN_KEY, REAL_KEY, ROOT, Stack

NODE_DIR = ROOT / "tests" / "node"


def node() -> str:
    path = shutil.which("node")
    assert path, "Node.js is missing: scripts/setup.sh node installs it"
    assert (NODE_DIR / "node_modules" / "stripe").is_dir(), "stripe-node is missing: scripts/setup.sh node"
    return path


def sdk(s: Stack, vault_key: str, call: str, *args, idempotency_key: str | None = None) -> dict:
    """One call with stripe-node, pointed at the gateway by host and port only."""
    spec = {"host": "127.0.0.1", "port": s.listen_port, "vaultKey": vault_key, "call": call, "args": list(args)}
    if idempotency_key:
        spec["idempotencyKey"] = idempotency_key
    run = subprocess.run([node(), str(NODE_DIR / "call.mjs"), json.dumps(spec)], capture_output=True, text=True,
                         timeout=120, cwd=NODE_DIR)
    assert run.returncode == 0, f"node failed: {run.stderr[-2000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def charges_for(s: Stack, customer: str) -> list[dict]:
    return [r for r in s.upstream_requests(method="POST", path="/v1/charges") if r["params"].get("customer") == customer]


def params(customer: str, amount: int = 2999) -> dict:
    return {"amount": amount, "currency": "usd", "customer": customer, "description": "Subscription 2026-06"}


def test_a_charge_goes_through_the_root_route(stack: Stack):
    key = stack.issue_key(label="node-charge", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])
    customer = f"cus_node_{uuid.uuid4().hex[:8]}"
    made = sdk(stack, key["vault_key"], "charges.create", params(customer))
    assert made["ok"] and made["id"].startswith("ch_") and made["amount"] == 2999, made
    (seen,) = charges_for(stack, customer)
    assert seen["headers"]["authorization"] == f"Bearer {REAL_KEY}", "the real key went out, not the vault key"
    assert seen["path"] == "/v1/charges"
    read = sdk(stack, key["vault_key"], "charges.retrieve", made["id"])
    assert read["ok"] and read["id"] == made["id"], read
    rows = stack.audit(key_id=key["id"], call_id=made["callId"])
    assert rows and all(r["path"] == "/v1/charges" for r in rows), "scopes and audit see Stripe's path"


def test_the_same_call_with_the_same_idempotency_key_is_replayed(stack: Stack):
    key = stack.issue_key(label="node-replay")
    customer = f"cus_node_{uuid.uuid4().hex[:8]}"
    first = sdk(stack, key["vault_key"], "charges.create", params(customer), idempotency_key="order-42")
    again = sdk(stack, key["vault_key"], "charges.create", params(customer), idempotency_key="order-42")
    assert first["ok"] and again["ok"], (first, again)
    assert again["id"] == first["id"] and again["replayed"] == "true"
    assert len(charges_for(stack, customer)) == 1, "one charge at the upstream"


def test_a_task_re_run_with_a_fresh_sdk_key_charges_once(stack: Stack):
    """A Ray or Kestra re-run builds a new client: stripe-node puts a new random
    Idempotency-Key on the POST. Content dedup (the key's default) makes it one."""
    key = stack.issue_key(label="node-rerun")
    customer = f"cus_node_{uuid.uuid4().hex[:8]}"
    runs = [sdk(stack, key["vault_key"], "charges.create", params(customer)) for _ in range(3)]
    assert all(r["ok"] for r in runs), runs
    assert len({r["id"] for r in runs}) == 1
    assert len(charges_for(stack, customer)) == 1, "one charge at the upstream"
    sent_keys = {r["idempotency_key"] for r in stack.audit(key_id=key["id"]) if r["stage"] in ("intent", "call")}
    assert len(sent_keys) == 3 and "" not in sent_keys, f"the SDK sent a new key each run: {sent_keys}"


def test_out_of_scope_and_over_the_cap_are_refused_in_stripes_shape(stack: Stack):
    key = stack.issue_key(label="node-refusals", daily_usd_cap=50)
    before = stack.upstream_counts()["requests"]
    refund = sdk(stack, key["vault_key"], "refunds.create", {"charge": "ch_1", "amount": 100})
    assert (refund["ok"], refund["status"], refund["code"]) == (False, 403, "endpoint_not_allowed"), refund
    assert refund["sdkType"] == "StripePermissionError"
    over = sdk(stack, key["vault_key"], "charges.create", params(f"cus_{uuid.uuid4().hex[:8]}", 2999 * 100))
    assert (over["ok"], over["status"], over["code"]) == (False, 429, "spend_cap_exceeded"), over
    assert "Spend cap exceeded" in over["message"]
    assert stack.upstream_counts()["requests"] == before, "nothing reached the upstream"


def test_the_node_example_charges_once_across_a_task_retry(stack: Stack):
    customer = f"cus_node_example_{uuid.uuid4().hex[:8]}"
    run = subprocess.run([node(), str(ROOT / "examples" / "node" / "task_retry.mjs"), customer], capture_output=True,
                         text=True, timeout=120, cwd=ROOT / "examples" / "node",
                         env={**os.environ, "KEYBRAKE_URL": stack.url, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY})
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["chargeIds"]) == 2 and len(set(out["chargeIds"])) == 1, out
    assert "retrying the whole task" in run.stderr
    assert len(charges_for(stack, customer)) == 1


@pytest.mark.parametrize("path", ["/v1/charges", "/v2/core/events"])
def test_an_unknown_key_at_the_root_is_refused_like_under_stripe(stack: Stack, path: str):
    r = stack.call("POST" if path == "/v1/charges" else "GET", path, "vk_short")
    assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_malformed", r.text
