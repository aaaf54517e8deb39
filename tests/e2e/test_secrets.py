"""Secrets stay secret: after a run that exercises every path (charges,
replays, refusals, typos, revoked keys, wrong admin keys, audit-scoped
reads, MCP tool calls), neither the real Stripe key, nor the admin key, nor any vault key
appears in any log, audit row, metric, error body, Envoy's config dump or the
database files — and vault keys are stored only as their SHA-256."""
import base64
import hashlib
import sqlite3

import httpx

from support.stack import ADMIN_KEY, REAL_KEY, Stack


def test_no_secret_leaks_anywhere(fresh_stack):
    s: Stack = fresh_stack(control_env={"KEYBRAKE_LOG_FORMAT": "json", "KEYBRAKE_LOG": "debug"})
    keys = [
        s.issue_key(label="leak-pay", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"], daily_usd_cap=50),
        s.issue_key(label="leak-other", dedup="idempotency_key"),
        s.issue_key(label="leak-audit", vendor="keybrake", allowed_endpoints=["GET /admin/audit"]),
    ]
    vault_keys = [k["vault_key"] for k in keys]
    pay, other, auditor = vault_keys
    responses: list[httpx.Response] = []

    def call(method, path, key=None, **kw):
        r = s.call(method, path, key, **kw)
        responses.append(r)
        return r

    charge = call("POST", "/stripe/v1/charges", pay, data={"amount": 2000, "currency": "usd"}, headers={"Idempotency-Key": "k1"})
    call("POST", "/stripe/v1/charges", pay, data={"amount": 2000, "currency": "usd"}, headers={"Idempotency-Key": "k1"})
    call("POST", "/stripe/v1/charges", pay, data={"amount": 2000, "currency": "usd"}, headers={"Idempotency-Key": "k1x"})
    call("POST", "/stripe/v1/charges", pay, data={"amount": 9000, "currency": "usd"})  # over the cap
    call("POST", "/stripe/v1/charges", pay, data={"amount": 100, "currency": "usd", "source": "tok_chargeDeclined"})
    call("POST", "/stripe/v1/charges", pay, data={"amount": 100, "currency": "usd", "amount[0]": "1"})
    for _ in range(3):
        call("GET", f"/stripe/v1/charges/{charge.json()['id']}", pay)
    call("POST", "/stripe/v1/refunds", pay, data={"charge": "ch_1"})
    call("POST", "/stripe/v1/charges", pay[:-1] + ("a" if pay[-1] != "a" else "b"), data={"amount": 1, "currency": "usd"})
    call("POST", "/stripe/v1/charges", REAL_KEY, data={"amount": 1, "currency": "usd"})
    call("GET", f"/stripe/v1/charges/ch_1?api_key={pay}")
    basic = base64.b64encode(f"{other}:".encode()).decode()
    call("POST", "/stripe/v1/charges", headers={"Authorization": f"Basic {basic}"}, data={"amount": 100, "currency": "usd"})
    # The MCP endpoint: tool list, a charge and its replay, refusals (an argument named and valued like the key).
    def mcp(key, method, params=None):
        body = {"jsonrpc": "2.0", "id": 1, "method": method, **({"params": params} if params is not None else {})}
        return call("POST", "/mcp", key, json=body, headers={"Accept": "application/json, text/event-stream"})
    mcp(pay, "tools/list")
    for _ in range(2):
        mcp(pay, "tools/call", {"name": "create_charge", "arguments": {"amount": 1500, "currency": "usd", "customer": "cus_mcp"}})
    mcp(pay, "tools/call", {"name": "create_charge", "arguments": {"amount": 9000, "currency": "usd"}})
    mcp(pay, "tools/call", {"name": "create_charge", "arguments": {"amount": 1, "currency": "usd", pay: pay}})
    mcp(pay, "tools/call", {"name": "retrieve_charge", "arguments": {"charge": pay}})
    mcp(auditor, "tools/call", {"name": "keybrake_audit_search", "arguments": {"idempotency_key": "k1"}})
    mcp(pay[:-1] + ("a" if pay[-1] != "a" else "b"), "tools/list")
    s.admin("DELETE", f"/admin/vault_keys/{keys[1]['id']}")
    call("POST", "/stripe/v1/charges", other, data={"amount": 100, "currency": "usd"})
    mcp(other, "tools/list")
    responses.append(s.admin("GET", "/admin/vault_keys", key="wrong-admin-key"))
    responses.append(s.admin("GET", "/admin/vault_keys", key=pay))
    responses.append(s.admin("GET", "/admin/audit", key=auditor, params={"idempotency_key": "k1"}))
    responses.append(s.admin("GET", "/admin/vault_keys"))
    responses.append(s.admin("GET", "/admin/usage"))
    responses.append(s.admin("POST", "/admin/vault_keys", {"label": "x", "vendor": "stripe", "allowed_endpoints": ["nope"],
                                                          "expires_in_seconds": 60}))

    export = s.admin("GET", "/admin/audit", params={"format": "jsonl"}).text
    control_metrics = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics").text
    envoy_admin = f"http://127.0.0.1:{s.envoy_admin_port}"
    envoy_metrics = httpx.get(f"{envoy_admin}/stats/prometheus").text
    config_dump = httpx.get(f"{envoy_admin}/config_dump?include_eds").text
    upstream = s.upstream_requests()
    s.stop()
    data = s.workdir / "data"
    database = b"".join(p.read_bytes() for p in sorted(data.glob("keybrake.db*")))

    places = {
        "control and envoy logs": s.logs(),
        "audit export": export,
        "control metrics": control_metrics,
        "envoy metrics": envoy_metrics,
        "envoy config dump": config_dump,
        "responses": "\n".join(f"{dict(r.headers)} {r.text}" for r in responses),
    }
    for secret in (REAL_KEY, ADMIN_KEY, *vault_keys):
        for where, text in places.items():
            assert secret not in text, f"{secret[:6]}... found in {where}"
        assert secret.encode() not in database, f"{secret[:6]}... found in the database files"
    assert "vk_" not in str([r["headers"] for r in upstream]), "no vault key reaches the upstream"
    assert all(r["headers"].get("authorization") == f"Bearer {REAL_KEY}" for r in upstream if r["status"] is not None)

    with sqlite3.connect(data / "keybrake.db") as db:
        stored = {row[0] for row in db.execute("SELECT key_hash FROM vault_keys")}
    assert stored == {hashlib.sha256(k.encode()).digest() for k in vault_keys}, "vault keys are stored as SHA-256 only"
    assert len(export.splitlines()) > 10, "the run was recorded"


def test_repeated_failed_admin_authentication_is_limited(fresh_stack):
    s: Stack = fresh_stack()
    codes = [s.admin("GET", "/admin/vault_keys", key=f"guess-{i}").status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    limited = s.admin("GET", "/admin/vault_keys")
    assert limited.status_code == 429, "even the right key waits out the window from a source that kept guessing"
    assert limited.json()["error"]["code"] == "too_many_failed_attempts"
    assert ADMIN_KEY not in limited.text
