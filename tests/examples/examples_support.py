"""Helpers shared by the example tests: what the upstream received, and what the audit log says."""
from __future__ import annotations

from support.stack import Stack


def charges(stack: Stack, *, customer_prefix: str) -> list[dict]:
    """The charges the upstream received (after the gateway) for customers whose id starts with the prefix."""
    return [r for r in stack.upstream_requests(method="POST", path="/v1/charges")
            if str((r.get("params") or {}).get("customer", "")).startswith(customer_prefix)]


def per_customer(records: list[dict]) -> dict[str, list[int]]:
    """Upstream charge amounts by customer."""
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r["params"]["customer"], []).append(int(r["params"]["amount"]))
    return out


def error_code(e) -> str | None:
    """The gateway's error code from a stripe SDK exception (the SDK drops ``code`` for some statuses, e.g. 429)."""
    body = getattr(e, "json_body", None) or {}
    return (body.get("error") or {}).get("code")


def outcomes(stack: Stack, count: int, timeout: float = 10.0, **filters) -> list[dict]:
    """The audit log's outcome rows matching the filters, once there are ``count`` of them.

    The gateway writes a call's outcome when it settles it, before releasing the
    response; if that settlement callout fails, the filter releases the response
    and delivers the settlement a moment later. So wait, boundedly, rather than
    read once."""
    rows = stack.wait_audit(lambda rows: len([r for r in rows if r["stage"] == "outcome"]) >= count, timeout, **filters)
    return [r for r in rows if r["stage"] == "outcome"]
