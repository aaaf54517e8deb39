"""No duplicate charges, whatever the caller's code does: gateway-level
idempotency, content dedup with a derived upstream key, replays, and the
audit trail that shows them. The stand-in ignores Idempotency-Key (like
localstripe), so every count here is the gateway's doing."""
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import stripe

from support.stack import Stack, wait_for

SCRIPT = Path(__file__).parent / "scripts" / "bill_once.py"


def params(customer: str, amount: int = 2999) -> dict:
    return {"amount": amount, "currency": "usd", "customer": customer, "description": "Subscription 2026-06"}


def charges_for(stack: Stack, customer: str) -> list[dict]:
    return [r for r in stack.upstream_requests(method="POST", path="/v1/charges") if r["params"].get("customer") == customer]


def spent(stack: Stack, key_id: str) -> float:
    return stack.admin("GET", f"/admin/vault_keys/{key_id}").json()["spent_today_usd"]


@pytest.mark.parametrize("caller_key", ["stable-key-1", None, "sdk-random"])
def test_the_same_charge_twice_in_sequence_is_one_charge(stack, caller_key):
    key = stack.issue_key(label=f"seq-{caller_key}")
    customer = f"cus_seq_{caller_key}"
    client = stack.stripe_client(key["vault_key"])
    ids = []
    for _ in range(2):
        if caller_key == "sdk-random":
            ids.append(client.v1.charges.create(params=params(customer)).id)  # the SDK adds a random key
        elif caller_key:
            ids.append(client.v1.charges.create(params=params(customer), options={"idempotency_key": caller_key}).id)
        else:
            r = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params(customer))
            assert r.status_code == 200
            ids.append(r.json()["id"])
    assert ids[0] == ids[1]
    assert len(charges_for(stack, customer)) == 1
    assert spent(stack, key["id"]) == 29.99
    rows = stack.audit(key_id=key["id"])
    assert [r["decision"] for r in rows] == ["allowed", "allowed", "replayed"]
    assert rows[-1]["upstream_status"] == 200


def test_the_replay_carries_idempotent_replayed(stack):
    key = stack.issue_key(label="replay-header")
    first = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_hdr"))
    again = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_hdr"))
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.headers["request-id"] == first.headers["request-id"]


def test_the_same_charge_twice_concurrently_is_forwarded_once(stack):
    key = stack.issue_key(label="concurrent")
    # Whichever call arrives first is held at the upstream until the other was
    # refused as in flight (the SDK then retries it, and gets the replay).
    stack.set_faults(hold=True, match_path="/v1/charges")
    results: list = [None, None]

    def one(i: int):
        client = stack.stripe_client(key["vault_key"], retries=3)  # the SDK retries 409s
        results[i] = client.v1.charges.create(params=params("cus_conc")).id

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: "idempotency_key_in_use" in [r["reason"] for r in stack.audit(key_id=key["id"], decision="denied")],
                 what="the second call refused while the first is in flight")
    finally:
        stack.clear_faults()
    for t in threads:
        t.join()
    assert results[0] == results[1] and results[0] is not None, results
    assert len(charges_for(stack, "cus_conc")) == 1
    assert spent(stack, key["id"]) == 29.99, "one spend entry, not two"


def test_in_flight_duplicates_get_409_in_stripes_shape(stack):
    key = stack.issue_key(label="409")
    # The first call is held at the upstream until the second was answered: in flight for sure.
    stack.set_faults(hold=True, match_path="/v1/charges")
    try:
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(
            stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_409"))))
        t.start()
        wait_for(lambda: [r for r in stack.upstream_requests(method="POST", path="/v1/charges")
                          if r["params"].get("customer") == "cus_409" and r["status"] is None], what="the first call held upstream")
        r = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_409"))
    finally:
        stack.clear_faults()
    t.join()
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {**r.json()["error"], "type": "idempotency_error", "code": "idempotency_key_in_use"}
    assert first[0].status_code == 200, first[0].text


@pytest.mark.parametrize("new_key_per_attempt", [False, True])
def test_a_task_rerun_from_its_first_line_charges_once(stack, new_key_per_attempt):
    """Kestra's retry and Ray's max_retries re-run the whole task; the SDK puts a
    new random Idempotency-Key on each run. Four runs, one charge."""
    customer = f"cus_rerun_{new_key_per_attempt}"
    key = stack.issue_key(label=f"rerun-{new_key_per_attempt}")
    charge_ids = set()
    key_ids = {key["id"]}
    for attempt in range(4):
        if new_key_per_attempt:
            issued = stack.issue_key(label=f"rerun-{new_key_per_attempt}-{attempt}")
            vk = issued["vault_key"]
            key_ids.add(issued["id"])
        else:
            vk = key["vault_key"]
        run = subprocess.run([sys.executable, str(SCRIPT), stack.url, vk, customer, "2999"], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and "database write timed out" in run.stderr
        charge_ids.add(run.stdout.strip())
    assert len(charge_ids) == 1
    assert len(charges_for(stack, customer)) == 1
    replays = stack.audit(label_prefix=f"rerun-{new_key_per_attempt}", decision="replayed")
    assert len(replays) == 3
    # One spend entry across every key the re-runs used: the replays cost nothing.
    assert sum(spent(stack, k) for k in key_ids) == 29.99


def test_a_caller_key_reused_with_other_params_is_refused(stack):
    key = stack.issue_key(label="reuse")
    client = stack.stripe_client(key["vault_key"])
    client.v1.charges.create(params=params("cus_reuse"), options={"idempotency_key": "order-77"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.charges.create(params=params("cus_reuse", amount=100), options={"idempotency_key": "order-77"})
    r = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_reuse", 100),
                   headers={"Idempotency-Key": "order-77"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "idempotency_error"
    assert len(charges_for(stack, "cus_reuse")) == 1


def test_idempotency_key_mode_trusts_the_callers_keys(stack):
    key = stack.issue_key(label="mode-key", dedup="idempotency_key")
    client = stack.stripe_client(key["vault_key"])
    a = client.v1.charges.create(params=params("cus_mode"))
    b = client.v1.charges.create(params=params("cus_mode"))
    assert a.id != b.id, "identical content with different keys is two charges in this mode"
    c = client.v1.charges.create(params=params("cus_mode"), options={"idempotency_key": "same"})
    d = client.v1.charges.create(params=params("cus_mode"), options={"idempotency_key": "same"})
    assert c.id == d.id
    assert len(charges_for(stack, "cus_mode")) == 3
    forwarded = [r["headers"].get("idempotency-key") for r in charges_for(stack, "cus_mode")]
    assert "same" in forwarded, "the caller's key goes upstream unchanged"


def test_dedup_is_per_upstream_account(stack):
    key = stack.issue_key(label="acct")
    a = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_acct"), headers={"Stripe-Account": "acct_1A"})
    b = stack.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_acct"), headers={"Stripe-Account": "acct_2B"})
    assert a.json()["id"] != b.json()["id"]
    assert len(charges_for(stack, "cus_acct")) == 2


def test_an_uncertain_charge_is_retried_with_the_same_upstream_key(fresh_stack):
    """The upstream takes the charge and resets the connection: the gateway cannot
    know whether money moved. The retry goes out with the same derived
    Idempotency-Key, so Stripe returns the original instead of charging again."""
    s: Stack = fresh_stack(upstream_args=["--honor-idempotency"])
    key = s.issue_key(label="uncertain-retry")
    s.set_faults(reset_after_receive=1, match_path="/v1/charges")
    first = s.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_unc"))
    assert first.status_code >= 500
    u = s.admin("GET", f"/admin/vault_keys/{key['id']}").json()
    assert u["uncertain_usd"] == 29.99
    second = s.call("POST", "/stripe/v1/charges", key["vault_key"], data=params("cus_unc"))
    assert second.status_code == 200
    sent = charges_for(s, "cus_unc")
    assert len(sent) == 2 and sent[0]["headers"]["idempotency-key"] == sent[1]["headers"]["idempotency-key"]
    assert s.upstream_counts()["charges"] == 1, "Stripe (honouring the key) charged once"
    u = s.admin("GET", f"/admin/vault_keys/{key['id']}").json()
    assert (u["spent_today_usd"], u["uncertain_usd"]) == (29.99, 0.0), "counted once, now settled"


def test_revoke_by_prefix_stops_the_next_call_on_every_worker(stack):
    keys = [stack.issue_key(label=f"batch-2026-06-{i}") for i in range(5)]
    other = stack.issue_key(label="other-batch")
    for k in keys:
        assert stack.call("POST", "/stripe/v1/charges", k["vault_key"], data=params(f"cus_{k['id']}")).status_code == 200
    r = stack.admin("POST", "/admin/vault_keys/revoke", {"label_prefix": "batch-2026-06-"})
    assert r.json()["revoked"] == 5
    before = len(stack.upstream_requests())
    for k in keys:
        for _ in range(4):  # fresh connections land on different Envoy workers
            r = httpx.post(f"{stack.url}/stripe/v1/charges", headers={"Authorization": f"Bearer {k['vault_key']}"},
                           data=params(f"cus_new_{k['id']}"))
            assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_revoked"
    assert len(stack.upstream_requests()) == before
    assert stack.call("POST", "/stripe/v1/charges", other["vault_key"], data=params("cus_other")).status_code == 200


def test_every_call_is_in_the_audit_log_with_what_happened(stack):
    key = stack.issue_key(label="audit-trail", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"], daily_usd_cap=50)
    vk = key["vault_key"]
    ok = stack.call("POST", "/stripe/v1/charges", vk, data=params("cus_audit"), headers={"Idempotency-Key": "audit-1"})
    charge_id = ok.json()["id"]
    stack.call("GET", f"/stripe/v1/charges/{charge_id}", vk)
    stack.call("POST", "/stripe/v1/refunds", vk, data={"charge": charge_id})
    stack.call("POST", "/stripe/v1/charges", vk, data=params("cus_audit_big", 6000))
    rows = stack.wait_audit(lambda rows: len(rows) >= 5, key_id=key["id"])
    by_stage = {(r["stage"], r["decision"], r["path"]): r for r in rows}
    outcome = by_stage[("outcome", "allowed", "/v1/charges")]
    assert outcome["object_id"] == charge_id and outcome["upstream_status"] == 200
    assert outcome["request_id"] == ok.headers["request-id"] and outcome["latency_us"] > 0
    assert (outcome["amount"], outcome["currency"], outcome["usd"]) == (2999, "usd", 29.99)
    assert outcome["idempotency_key"] == "audit-1" and outcome["forwarded_idempotency_key"].startswith("kb_")
    assert outcome["label"] == "audit-trail" and len(outcome["fingerprint"]) == 64
    read = by_stage[("call", "allowed", f"/v1/charges/{charge_id}")]
    assert read["upstream_status"] == 200 and read["method"] == "GET"
    assert by_stage[("call", "denied", "/v1/refunds")]["reason"] == "endpoint_not_allowed"
    assert by_stage[("call", "denied", "/v1/charges")]["reason"] == "spend_cap_exceeded"
    assert vk not in str(rows)
    # Filters and pages.
    assert [r["object_id"] for r in stack.audit(object_id=charge_id)] == [charge_id]
    assert {r["call_id"] for r in stack.audit(idempotency_key="audit-1")} == {outcome["call_id"]}
    assert all(r["fingerprint"] == outcome["fingerprint"] for r in stack.audit(fingerprint=outcome["fingerprint"]))
    page1 = stack.admin("GET", "/admin/audit", params={"key_id": key["id"], "limit": 2}).json()
    page2 = stack.admin("GET", "/admin/audit", params={"key_id": key["id"], "limit": 2, "starting_after": page1["next_cursor"]}).json()
    assert page1["has_more"] and {r["seq"] for r in page1["data"]}.isdisjoint(r["seq"] for r in page2["data"])
    assert stack.audit(key_id=key["id"], since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == []
    export = stack.admin("GET", "/admin/audit", params={"key_id": key["id"], "format": "jsonl"})
    assert export.headers["content-type"] == "application/x-ndjson"
    lines = [l for l in export.text.splitlines() if l]
    assert len(lines) == len(rows)


def test_an_audit_scoped_key_can_ask_has_this_charge_happened_and_nothing_else(stack):
    payer = stack.issue_key(label="preflight-payer")
    stack.stripe_client(payer["vault_key"]).v1.charges.create(params=params("cus_pre"), options={"idempotency_key": "inv-42"})
    auditor = stack.issue_key(label="preflight-audit", vendor="keybrake", allowed_endpoints=["GET /admin/audit"])
    found = stack.admin("GET", "/admin/audit", key=auditor["vault_key"], params={"idempotency_key": "inv-42"})
    assert found.status_code == 200
    assert any(r["upstream_status"] == 200 and r["stage"] == "outcome" for r in found.json()["data"])
    assert stack.admin("GET", "/admin/vault_keys", key=auditor["vault_key"]).status_code == 403
    assert stack.admin("GET", "/admin/audit/verify", key=auditor["vault_key"]).status_code == 403
    assert stack.call("POST", "/stripe/v1/charges", auditor["vault_key"], data=params("cus_x")).status_code == 403
    bad = stack.admin("POST", "/admin/vault_keys", {"label": "x", "vendor": "keybrake", "allowed_endpoints": ["GET /admin/vault_keys"],
                                                    "expires_in_seconds": 60})
    assert bad.status_code == 400


def edit_first_outcome(s: Stack, old: str, new: str) -> int:
    """Edits the first outcome row behind the control service's back, as an
    attacker with database access would; returns its seq."""
    if s.backend == "postgres":
        sql = (f"UPDATE audit_log SET entry = replace(entry, '{old}', '{new}') WHERE seq = (SELECT min(seq) FROM audit_log "
               "WHERE entry LIKE '%\"stage\":\"outcome\"%') RETURNING seq")
        out = subprocess.run(["psql", s.control_env["KEYBRAKE_DATABASE_URL"], "-qAt", "-c", sql], check=True,
                             capture_output=True, text=True)
        return int(out.stdout.split()[0])
    import sqlite3
    with sqlite3.connect(s.workdir / "data" / "keybrake.db") as db:
        seq, entry = db.execute("SELECT seq, entry FROM audit_log WHERE entry LIKE '%\"stage\":\"outcome\"%' "
                                "ORDER BY seq LIMIT 1").fetchone()
        db.execute("UPDATE audit_log SET entry = ? WHERE seq = ?", (entry.replace(old, new), seq))
    return seq


def test_the_audit_chain_verifies_and_detects_an_edited_row(fresh_stack):
    s: Stack = fresh_stack()
    key = s.issue_key(label="chain")
    for i in range(3):
        r = s.call("POST", "/stripe/v1/charges", key["vault_key"], data=params(f"cus_chain_{i}", 100 + i))
        assert r.status_code == 200, r.text
    # PostgreSQL links rows into the chain a little after they are written: wait until none is pending.
    report = wait_for(lambda: (r := s.admin("GET", "/admin/audit/verify").json())["pending"] == 0 and r,
                      what="the audit rows to be chained")
    assert report["ok"] and report["rows"] >= 6
    seq = edit_first_outcome(s, '"upstream_status":200', '"upstream_status":402')
    report = s.admin("GET", "/admin/audit/verify").json()
    assert not report["ok"] and report["broken_at_seq"] == seq


def test_batched_records_are_not_lost_when_envoy_stops_cleanly(fresh_stack):
    """Reads are recorded by the filter in batches. A clean stop (drain, then
    terminate) delivers every one; the filter's counters prove nothing is pending."""
    # Flushes every 30 s: far longer than the reads below take even on a loaded
    # machine, so they are all still queued when the stop begins.
    s: Stack = fresh_stack(filter_config={"control_cluster": "keybrake_control", "audit_flush_interval_ms": 30_000})
    key = s.issue_key(label="clean-stop", allowed_endpoints=["GET /v1/charges/*"])
    for i in range(20):
        s.call("GET", f"/stripe/v1/charges/ch_{i}", key["vault_key"])
    assert s.audit(key_id=key["id"]) == [], "still queued in the filter"
    assert s.stop_envoy_cleanly(timeout=120)
    assert len(s.audit_direct(key_id=key["id"])) == 20


def test_reads_are_decided_by_each_worker_and_revocation_still_stops_the_next_one(stack):
    """Workers cache keys for reads; a revocation is pushed to every worker and
    acknowledged before the admin call returns, so the next read is refused."""
    key = stack.issue_key(label="cached-reads", allowed_endpoints=["GET /v1/charges/*"])
    before = _local_decisions(stack)
    for i in range(20):  # fresh connections spread over both workers
        r = httpx.get(f"{stack.url}/stripe/v1/charges/ch_{i}", headers={"Authorization": f"Bearer {key['vault_key']}"})
        assert r.status_code == 404  # forwarded: the stand-in has no such charge
    assert _local_decisions(stack) > before, "reads were decided from the workers' caches"
    seen_upstream = len(stack.upstream_requests(method="GET"))
    revoked = stack.admin("DELETE", f"/admin/vault_keys/{key['id']}")
    assert revoked.json()["state"] == "revoked"
    for i in range(20):
        r = httpx.get(f"{stack.url}/stripe/v1/charges/ch_{i}", headers={"Authorization": f"Bearer {key['vault_key']}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_revoked"
    assert len(stack.upstream_requests(method="GET")) == seen_upstream
    rows = stack.wait_audit(lambda rows: len([r for r in rows if r["decision"] == "allowed"]) == 20, key_id=key["id"])
    assert all(r["upstream_status"] == 404 for r in rows if r["decision"] == "allowed"), "cached reads are audited too"


def _local_decisions(stack: Stack) -> int:
    import re
    m = re.search(r"^wasmcustom\.keybrake\.requests_decided_locally: (\d+)$", stack.envoy_stats(), re.M)
    return int(m.group(1)) if m else 0
