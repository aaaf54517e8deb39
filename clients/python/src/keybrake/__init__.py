"""Keybrake's Python client.

Everything a Ray task, Ray Serve replica or Kestra script needs to use the
Keybrake gateway in front of Stripe::

    import keybrake

    key = keybrake.issue_vault_key("ray-billing-2026-06-cus_123",
                                   daily_usd_cap=keybrake.usd_cap(2999))   # admin call
    client = keybrake.stripe_client(key.vault_key)                         # -> the gateway
    client.v1.charges.create(
        params={"amount": 2999, "currency": "usd", "customer": "cus_123"},
        options={"idempotency_key": keybrake.billing_idempotency_key(
            "cus_123", 2999, "2026-06", context="ray-billing")})
    keybrake.revoke_prefix("ray-billing-2026-06-")                         # kill switch

The gateway address and admin key come from arguments (``url=``,
``admin_key=``) or from ``KEYBRAKE_URL`` and ``KEYBRAKE_ADMIN_KEY``.
"""
from .admin import (
    ADMIN_KEY_ENV,
    URL_ENV,
    AuditRow,
    Keybrake,
    Revoked,
    VaultKey,
    already_done,
    audit,
    issue_audit_key,
    issue_vault_key,
    resolve_url,
    revoke,
    revoke_prefix,
)
from .errors import KeybrakeConfigError, KeybrakeConnectionError, KeybrakeError
from .idempotency import billing_idempotency_key, usd_cap
from .stripe_client import stripe_base, stripe_client

__version__ = "0.1.0"

__all__ = [
    "ADMIN_KEY_ENV",
    "URL_ENV",
    "AuditRow",
    "Keybrake",
    "KeybrakeConfigError",
    "KeybrakeConnectionError",
    "KeybrakeError",
    "Revoked",
    "VaultKey",
    "already_done",
    "audit",
    "billing_idempotency_key",
    "issue_audit_key",
    "issue_vault_key",
    "resolve_url",
    "revoke",
    "revoke_prefix",
    "stripe_base",
    "stripe_client",
    "usd_cap",
]
