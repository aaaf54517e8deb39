"""Keybrake's MCP endpoint (`/mcp` on the gateway) with the official MCP
Python SDK's client over streamable HTTP, against a real Envoy, the real
control service and the recording Stripe stand-in: tools follow each key's
scope, a tool call is a gateway call with the agent's vault key (one charge,
however often the agent retries; caps refuse with their code; revocation
refuses the next call), bad input is refused before anything reaches Stripe,
and nothing secret comes back."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from support.stack import ADMIN_KEY, REAL_KEY, Stack, wait_for

ROOT = Path(__file__).resolve().parents[2]

# Every tool result and error body this module saw, and every vault key it issued (for the secrets check).
SEEN: list[str] = []
ISSUED: list[str] = []


def issue(stack: Stack, **fields: Any) -> dict:
    key = stack.issue_key(**fields)
    ISSUED.append(key["vault_key"])
    return key


@asynccontextmanager
async def session(stack: Stack, vault_key: str, **kw: Any) -> AsyncIterator[Client]:
    """An agent's MCP connection: streamable HTTP with the vault key as bearer."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {vault_key}"}, timeout=60) as http:
        async with Client(streamable_http_client(f"{stack.url}/mcp", http_client=http), cache=None, **kw) as client:
            yield client


def tool_names(stack: Stack, vault_key: str) -> list[str]:
    async def go():
        async with session(stack, vault_key) as c:
            return [t.name for t in (await c.list_tools()).tools]
    return asyncio.run(go())


def call(stack: Stack, vault_key: str, tool: str, arguments: dict) -> Any:
    """One tool call on a connection of its own (an agent that reconnects)."""
    async def go():
        async with session(stack, vault_key) as c:
            return await c.call_tool(tool, arguments)
    result = asyncio.run(go())
    SEEN.append(result.model_dump_json())
    return result


def outcome(result: Any) -> dict:
    """The tool result as JSON: the Stripe object, or the error with status and should_retry."""
    assert result.structured_content is not None, result
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def raw_post(stack: Stack, body: str | bytes, vault_key: str | None = None, **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if vault_key is not None:
        h["Authorization"] = f"Bearer {vault_key}"
    h.update(headers)
    r = httpx.post(f"{stack.url}/mcp", content=body, headers=h, timeout=30)
    SEEN.append(r.text)
    return r


def charge_posts(stack: Stack) -> int:
    return len(stack.upstream_requests(method="POST", path="/v1/charges"))


CHARGE = {"amount": 2500, "currency": "usd", "customer": "cus_mcp_1", "metadata": {"order_id": "6735"}}


def test_the_tool_list_follows_each_keys_scope(stack):
    refunds = issue(stack, allowed_endpoints=["POST /v1/refunds"])
    charges = issue(stack, allowed_endpoints=["POST /v1/charges", "GET /v1/charges", "GET /v1/charges/*"])
    auditor = issue(stack, vendor="keybrake", allowed_endpoints=["GET /admin/audit"])
    assert tool_names(stack, refunds["vault_key"]) == ["create_refund"]
    assert tool_names(stack, charges["vault_key"]) == ["create_charge", "list_charges", "retrieve_charge"]
    assert tool_names(stack, auditor["vault_key"]) == ["keybrake_audit_search"]

    async def describe():
        async with session(stack, charges["vault_key"]) as c:
            return {t.name: t for t in (await c.list_tools()).tools}
    tools = asyncio.run(describe())
    create = tools["create_charge"]
    assert "MOVES MONEY" in create.description and "spend_cap_exceeded" in create.description
    assert "moves no money" in tools["list_charges"].description
    schema = create.input_schema
    assert schema["additionalProperties"] is False and schema["required"] == ["amount", "currency"]
    assert schema["properties"]["amount"]["type"] == "integer"
    assert schema["properties"]["metadata"]["type"] == "object"
    assert tools["retrieve_charge"].input_schema["required"] == ["charge"]
    assert create.annotations.destructive_hint is True and tools["list_charges"].annotations.read_only_hint is True


def test_a_charge_moves_money_once_and_a_retried_call_moves_nothing_more(stack):
    key = issue(stack, label="mcp-agent-charge", allowed_endpoints=["POST /v1/charges"], daily_usd_cap=100)
    before = charge_posts(stack)
    first = call(stack, key["vault_key"], "create_charge", CHARGE)
    assert first.is_error is False, first
    charge = outcome(first)
    assert charge["object"] == "charge" and charge["amount"] == 2500 and charge["metadata"] == {"order_id": "6735"}
    assert first.meta["keybrake/idempotent_replayed"] is False
    assert charge_posts(stack) == before + 1

    # The agent lost the answer and calls again, on a new connection, with the same arguments
    # (in another order): the first charge comes back, and nothing more reaches Stripe.
    retry = call(stack, key["vault_key"], "create_charge", dict(reversed(list(CHARGE.items()))))
    assert retry.is_error is False and outcome(retry)["id"] == charge["id"]
    assert retry.meta["keybrake/idempotent_replayed"] is True
    assert charge_posts(stack) == before + 1
    assert stack.admin("GET", f"/admin/vault_keys/{key['id']}").json()["spent_today_usd"] == 25

    # Another amount is another charge.
    other = call(stack, key["vault_key"], "create_charge", {**CHARGE, "amount": 2600})
    assert outcome(other)["id"] != charge["id"] and charge_posts(stack) == before + 2

    # The audit rows name the tool; the upstream never sees Keybrake-Mcp-Tool.
    rows = stack.wait_audit(lambda rows: len(rows) >= 5, key_id=key["id"])
    assert {r["mcp_tool"] for r in rows} == {"create_charge"}
    assert [r["decision"] for r in rows].count("replayed") == 1
    sent = stack.upstream_requests(method="POST", path="/v1/charges")[-2:]
    assert all("keybrake-mcp-tool" not in {h.lower() for h in r["headers"]} for r in sent)


def test_a_retry_is_replayed_for_a_key_that_dedups_by_idempotency_key_only(stack):
    """With dedup=idempotency_key the gateway trusts only idempotency keys: the
    one derived from the tool call makes the retry a replay; an agent's own new
    key makes an identical charge a new one."""
    key = issue(stack, allowed_endpoints=["POST /v1/charges"], dedup="idempotency_key")
    args = {**CHARGE, "customer": "cus_mcp_idem"}
    before = charge_posts(stack)
    first = outcome(call(stack, key["vault_key"], "create_charge", args))
    again = call(stack, key["vault_key"], "create_charge", args)
    assert outcome(again)["id"] == first["id"] and again.meta["keybrake/idempotent_replayed"] is True
    assert charge_posts(stack) == before + 1
    sent = stack.upstream_requests(method="POST", path="/v1/charges")[-1]
    assert re.fullmatch(r"mcp-[0-9a-f]{32}", sent["headers"]["idempotency-key"]), sent["headers"]
    mine = outcome(call(stack, key["vault_key"], "create_charge", {**args, "idempotency_key": "order-6735-second"}))
    assert mine["id"] != first["id"] and charge_posts(stack) == before + 2


def test_a_retry_while_the_first_call_is_in_flight_says_try_again(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges"])
    args = {**CHARGE, "customer": "cus_mcp_inflight"}
    before = charge_posts(stack)

    async def scenario():
        stack.set_faults(hold=True, match_path="/v1/charges")
        try:
            async with session(stack, key["vault_key"]) as first_agent:
                first = asyncio.create_task(first_agent.call_tool("create_charge", args))
                await asyncio.to_thread(wait_for, lambda: charge_posts(stack) == before + 1, 60, "the charge held upstream")
                async with session(stack, key["vault_key"]) as second_agent:
                    busy = await second_agent.call_tool("create_charge", args)
                stack.clear_faults()
                return busy, await first
        finally:
            stack.clear_faults()

    busy, first = asyncio.run(scenario())
    SEEN.extend([busy.model_dump_json(), first.model_dump_json()])
    assert busy.is_error is True
    error = outcome(busy)
    assert error["status"] == 409 and error["should_retry"] is True, error
    assert error["error"]["type"] == "idempotency_error"
    retried = call(stack, key["vault_key"], "create_charge", args)
    assert outcome(retried)["id"] == outcome(first)["id"]
    assert charge_posts(stack) == before + 1


def test_an_over_cap_call_is_a_tool_error_with_the_cap_code(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges"], daily_usd_cap=50)
    before = charge_posts(stack)
    result = call(stack, key["vault_key"], "create_charge", {**CHARGE, "amount": 1_000_000})
    assert result.is_error is True
    error = outcome(result)
    assert error["status"] == 429 and error["should_retry"] is False
    assert error["error"]["code"] == "spend_cap_exceeded" and error["error"]["type"] == "invalid_request_error"
    assert "Spend cap exceeded" in error["error"]["message"]
    assert charge_posts(stack) == before
    per_call = issue(stack, allowed_endpoints=["POST /v1/charges"], max_amount_per_call_usd=10)
    error = outcome(call(stack, per_call["vault_key"], "create_charge", CHARGE))
    assert (error["error"]["code"], error["should_retry"]) == ("per_call_limit_exceeded", False)
    assert charge_posts(stack) == before


def test_a_tool_outside_the_keys_scope_is_refused_by_the_gateway_and_audited(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/refunds"])
    before = charge_posts(stack)
    error = outcome(call(stack, key["vault_key"], "create_charge", CHARGE))
    assert (error["status"], error["error"]["code"], error["should_retry"]) == (403, "endpoint_not_allowed", False)
    assert charge_posts(stack) == before
    [row] = stack.wait_audit(lambda rows: len(rows) == 1, key_id=key["id"])
    assert (row["decision"], row["reason"], row["mcp_tool"]) == ("denied", "endpoint_not_allowed", "create_charge")


def test_a_revoked_key_is_refused_on_its_next_call(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges", "GET /v1/charges"])

    async def scenario():
        async with session(stack, key["vault_key"]) as agent:
            listed = await agent.call_tool("list_charges", {"limit": 1})
            assert listed.is_error is False, listed
            revoked = stack.admin("DELETE", f"/admin/vault_keys/{key['id']}")
            assert revoked.status_code == 200
            before = charge_posts(stack)
            with pytest.raises(MCPError):
                await agent.call_tool("create_charge", CHARGE)  # the same open connection
            return before

    before = asyncio.run(scenario())
    assert charge_posts(stack) == before
    r = raw_post(stack, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), key["vault_key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_revoked"


def test_a_missing_or_wrong_vault_key_is_401_in_stripes_shape(stack):
    from keybrake_testkeys import well_formed_unknown_key

    active = issue(stack, allowed_endpoints=["GET /v1/balance"])
    expiring = issue(stack, expires_in_seconds=1)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    vk = active["vault_key"]
    tampered = vk[:-1] + ("A" if vk[-1] != "A" else "B")
    basic = lambda user, password="": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    cases = [
        ({}, "vault_key_missing"),
        ({"Authorization": "Bearer"}, "vault_key_missing"),
        ({"Authorization": f"Bearer {REAL_KEY}"}, "vault_key_malformed"),
        ({"Authorization": f"Bearer {ADMIN_KEY}"}, "vault_key_malformed"),
        ({"Authorization": f"Bearer {tampered}"}, "vault_key_malformed"),
        ({"Authorization": f"Bearer {well_formed_unknown_key()}"}, "vault_key_unknown"),
        ({"Authorization": "Digest abc"}, "authorization_scheme_unsupported"),
        ({"Authorization": basic(vk, "password")}, "credentials_ambiguous"),
    ]
    for headers, code in cases:
        r = raw_post(stack, body, **headers)
        assert r.status_code == 401, (headers, r.text)
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", code), (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    wait_for(lambda: raw_post(stack, body, expiring["vault_key"]).status_code == 401, 30, "the key to expire")
    assert raw_post(stack, body, expiring["vault_key"]).json()["error"]["code"] == "vault_key_expired"
    # The key is accepted as Bearer, and as the Basic auth user name as on the Stripe route.
    for authorization in (f"Bearer {vk}", basic(vk)):
        ok = raw_post(stack, body, Authorization=authorization)
        assert ok.status_code == 200 and [t["name"] for t in ok.json()["result"]["tools"]] == ["retrieve_balance"]
    # The SDK's client does not get past the refusal either.
    async def refused():
        async with session(stack, tampered) as agent:
            await agent.list_tools()
    with pytest.raises(Exception):
        asyncio.run(refused())


def test_undeclared_or_mistyped_arguments_are_refused_before_anything_reaches_stripe(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*", "POST /v1/payment_links"],
                allow_unpriced_calls=True)
    before = len(stack.upstream_requests())
    cases = [
        ("create_charge", {**CHARGE, "destination": "acct_1"}, "parameter_unknown", "destination"),
        ("create_charge", {**CHARGE, "amount": "2500"}, "parameter_invalid_integer", "amount"),
        ("create_charge", {**CHARGE, "amount": 25.5}, "parameter_invalid_integer", "amount"),
        ("create_charge", {"currency": "usd"}, "parameter_missing", "amount"),
        ("create_charge", {**CHARGE, "capture": "no"}, "parameter_invalid", "capture"),
        ("create_charge", {**CHARGE, "metadata": {"a]b": "x"}}, "parameter_invalid", "metadata"),
        ("retrieve_charge", {"charge": "../../v1/balance"}, "parameter_invalid", "charge"),
        ("create_payment_link", {"line_items": [{"price": "price_1", "unit_amount": 1}]}, "parameter_unknown",
         "line_items[0][unit_amount]"),
    ]
    for tool, arguments, code, param in cases:
        result = call(stack, key["vault_key"], tool, arguments)
        assert result.is_error is True, (tool, arguments)
        error = outcome(result)
        assert (error["status"], error["error"]["code"], error["error"]["param"]) == (400, code, param), error
        assert error["should_retry"] is False and "Nothing was sent to Stripe" in error["error"]["message"]
    assert len(stack.upstream_requests()) == before
    assert stack.audit(key_id=key["id"]) == [], "nothing reached the gateway"

    async def unknown_tool():
        async with session(stack, key["vault_key"]) as agent:
            with pytest.raises(MCPError) as e:
                await agent.call_tool("transfer_everything", {})
            return e.value
    assert asyncio.run(unknown_tool()).error.code == -32602


def test_malformed_mcp_messages_get_json_rpc_errors(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges"])
    before = len(stack.upstream_requests())
    cases = [
        ("{not json", 400, -32700),
        (b"\xff\xfe", 400, -32700),
        ("[]", 400, -32600),
        ('[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]', 400, -32600),
        ('"tools/call"', 400, -32600),
        ('{"jsonrpc":"1.0","id":1,"method":"tools/list"}', 400, -32600),
        ('{"jsonrpc":"2.0","id":1}', 400, -32600),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call"}', 400, -32602),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}', 400, -32602),
        ('{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"create_charge","arguments":[2500]}}', 400, -32602),
        ('{"jsonrpc":"2.0","id":3,"method":"stripe/charge","params":{}}', 200, -32601),
        ('{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope","arguments":{}}}', 200, -32602),
    ]
    for body, status, code in cases:
        r = raw_post(stack, body, key["vault_key"])
        assert r.status_code == status, (body, r.status_code, r.text)
        answer = r.json()
        assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code, (body, answer)
    huge = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "create_charge", "arguments": {**CHARGE, "description": "x" * 2_000_000}}})
    r = raw_post(stack, huge, key["vault_key"])
    assert r.status_code == 413 and r.json()["error"]["code"] == -32600
    assert stack.procs["control"].alive() and stack.procs["envoy"].alive()
    assert len(stack.upstream_requests()) == before
    assert stack.audit(key_id=key["id"]) == []
    # Still serving, and GET (a server-sent event stream) is not offered by a stateless server.
    assert raw_post(stack, '{"jsonrpc":"2.0","id":6,"method":"tools/list"}', key["vault_key"]).status_code == 200
    get = httpx.get(f"{stack.url}/mcp", headers={"Authorization": f"Bearer {key['vault_key']}",
                                                 "Accept": "text/event-stream"}, timeout=30)
    assert get.status_code == 405


def test_an_audit_scoped_key_gets_the_audit_search_tool(stack):
    payer = issue(stack, label="mcp-preflight-payer", allowed_endpoints=["POST /v1/charges"])
    charge = outcome(call(stack, payer["vault_key"], "create_charge", {**CHARGE, "customer": "cus_mcp_audit"}))
    auditor = issue(stack, vendor="keybrake", allowed_endpoints=["GET /admin/audit"])

    def found():
        result = call(stack, auditor["vault_key"], "keybrake_audit_search", {"object_id": charge["id"], "order": "asc"})
        assert result.is_error is False, result
        return outcome(result)["data"]
    rows = wait_for(found, 60, "the charge's outcome row through the audit tool")
    assert rows[0]["key_id"] == payer["id"] and rows[0]["mcp_tool"] == "create_charge"
    # The audit key moves no money, and a Stripe key cannot search the audit log.
    error = outcome(call(stack, auditor["vault_key"], "create_charge", CHARGE))
    assert error["status"] in (401, 403) and error["should_retry"] is False
    error = outcome(call(stack, payer["vault_key"], "keybrake_audit_search", {"object_id": charge["id"]}))
    assert error["status"] == 403 and error["error"]["code"] == "endpoint_not_allowed"


def test_an_older_client_with_the_initialize_handshake_is_served(stack):
    key = issue(stack, allowed_endpoints=["GET /v1/balance"])

    async def legacy():
        async with session(stack, key["vault_key"], mode="legacy") as agent:
            tools = [t.name for t in (await agent.list_tools()).tools]
            balance = await agent.call_tool("retrieve_balance", {})
            return agent.protocol_version, tools, balance
    version, tools, balance = asyncio.run(legacy())
    SEEN.append(balance.model_dump_json())
    assert version < "2026-07-28" and tools == ["retrieve_balance"]
    assert outcome(balance)["object"] == "balance"


def test_the_example_agent_and_client_config(stack):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRAKE_")}
    before = charge_posts(stack)
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "mcp" / "agent.py")],
                         env={**env, "KEYBRAKE_URL": stack.url, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY},
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    SEEN.append(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "tools: create_charge, list_charges" in run.stdout
    first = re.search(r"^charge (ch_\w+) \(replayed: False\)$", run.stdout, re.M)
    again = re.search(r"^retry: charge (ch_\w+) \(replayed: True\)$", run.stdout, re.M)
    assert first and again and first.group(1) == again.group(1), run.stdout
    assert re.search(r"^charges for cus_mcp_demo_\w+: 1$", run.stdout, re.M), run.stdout
    assert "over the cap: spend_cap_exceeded (should_retry: false)" in run.stdout
    assert charge_posts(stack) == before + 1

    # The client configuration snippet: its URL and header, filled in, connect an agent.
    config = json.loads((ROOT / "examples" / "mcp" / "mcp.json").read_text())
    [server] = config["mcpServers"].values()
    assert server["type"] == "http" and server["url"].endswith("/mcp")
    key = issue(stack, allowed_endpoints=["GET /v1/balance"])
    url = server["url"].replace("http://127.0.0.1:10000", stack.url)
    headers = {k: v.replace("${KEYBRAKE_VAULT_KEY}", key["vault_key"]) for k, v in server["headers"].items()}

    async def connect():
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http), cache=None) as agent:
                return [t.name for t in (await agent.list_tools()).tools]
    assert asyncio.run(connect()) == ["retrieve_balance"]


def test_nothing_secret_in_any_tool_result_or_error(stack):
    key = issue(stack, allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"], daily_usd_cap=30)
    results = [
        call(stack, key["vault_key"], "create_charge", {**CHARGE, "customer": "cus_mcp_secret"}),
        call(stack, key["vault_key"], "create_charge", {**CHARGE, "customer": "cus_mcp_secret"}),
        call(stack, key["vault_key"], "create_charge", {**CHARGE, "amount": 999_999}),
        call(stack, key["vault_key"], "create_charge", {**CHARGE, "bogus": key["vault_key"]}),
        call(stack, key["vault_key"], "retrieve_charge", {"charge": "ch_missing"}),
        call(stack, key["vault_key"], "create_refund", {"charge": "ch_missing"}),
    ]
    assert [r.is_error for r in results] == [False, False, True, True, True, True]
    secrets = [*ISSUED, REAL_KEY, ADMIN_KEY]
    assert len(SEEN) > 20
    for text in SEEN:
        for secret in secrets:
            assert secret not in text, f"a secret in: {text[:300]}"
    logs = stack.logs()
    for secret in [*ISSUED, REAL_KEY]:
        assert secret not in logs
    metrics = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics", timeout=10).text
    assert 'keybrake_mcp_tool_calls_total{outcome="replayed",tool="create_charge"}' in metrics
    assert not any(s in metrics for s in secrets)
