"""An agent using Stripe through Keybrake's MCP endpoint, with the official
MCP Python SDK (`pip install mcp`) over streamable HTTP.

The job driver issues the agent a vault key scoped to creating and listing
charges, capped at $50 a day; the agent connects to `{KEYBRAKE_URL}/mcp` with
`Authorization: Bearer vk_...`, sees only the tools its key allows, charges a
customer, and then -- as an agent does when its answer was lost or its
process restarted -- makes the same tool call again on a new connection. The
retry returns the first charge (replayed) instead of charging twice. An
over-cap charge comes back as a tool error saying not to retry.

    KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... python examples/mcp/agent.py
"""
from __future__ import annotations

import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx2  # the HTTP client of the MCP SDK
import keybrake  # clients/python: issuing and revoking vault keys
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


@asynccontextmanager
async def keybrake_mcp(url: str, vault_key: str) -> AsyncIterator[Client]:
    """One MCP connection to Keybrake, authenticated by the vault key."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {vault_key}"}, timeout=120) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            yield client


def outcome(result: Any) -> dict:
    """A tool result's JSON: the Stripe object, or {"error": ..., "status", "should_retry"}."""
    return result.structured_content or json.loads(result.content[0].text)


async def agent(url: str, vault_key: str, customer: str) -> None:
    charge = {"amount": 2500, "currency": "usd", "customer": customer, "description": "Pro plan, June",
              "metadata": {"order_id": "6735"}}
    async with keybrake_mcp(url, vault_key) as mcp:
        tools = await mcp.list_tools()
        print("tools:", ", ".join(t.name for t in tools.tools))
        first = await mcp.call_tool("create_charge", charge)
        print(f"charge {outcome(first)['id']} (replayed: {first.meta['keybrake/idempotent_replayed']})")

    # The agent lost that answer (a timeout, a crash) and calls the tool again, on a new connection.
    async with keybrake_mcp(url, vault_key) as mcp:
        retry = await mcp.call_tool("create_charge", charge)
        print(f"retry: charge {outcome(retry)['id']} (replayed: {retry.meta['keybrake/idempotent_replayed']})")
        listed = outcome(await mcp.call_tool("list_charges", {"limit": 100}))
        print(f"charges for {customer}: {sum(1 for c in listed['data'] if c.get('customer') == customer)}")
        # A dollars-as-cents bug: $10,000 against a $50 cap.
        over = await mcp.call_tool("create_charge", {**charge, "amount": 1_000_000})
        error = outcome(over)
        print(f"over the cap: {error['error']['code']} (should_retry: {str(error['should_retry']).lower()})")


def main() -> None:
    url = keybrake.resolve_url()
    customer = f"cus_mcp_demo_{secrets.token_hex(4)}"
    key = keybrake.issue_vault_key(f"mcp-agent-{customer}", allowed_endpoints=["POST /v1/charges", "GET /v1/charges"],
                                   daily_usd_cap="50", expires_in_seconds=900)
    try:
        asyncio.run(agent(url, key.vault_key, customer))
    finally:
        keybrake.revoke(key.id)


if __name__ == "__main__":
    main()
