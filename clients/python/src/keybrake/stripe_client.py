"""A Stripe client that calls Stripe through the gateway with a vault key."""
from __future__ import annotations

from typing import Any, Optional

import stripe

from .admin import resolve_url


def stripe_base(url: Optional[str] = None) -> str:
    """The Stripe route of the gateway: ``{url}/stripe`` (``url`` defaults to ``$KEYBRAKE_URL``)."""
    return f"{resolve_url(url)}/stripe"


def stripe_client(
    vault_key: str,
    *,
    url: Optional[str] = None,
    max_network_retries: Optional[int] = None,
    **options: Any,
) -> stripe.StripeClient:
    """A ``stripe.StripeClient`` that sends every call to the gateway with ``vault_key``.

    Use one client per task, request or customer (never the module-level
    ``stripe.api_key``, which concurrent coroutines and threads overwrite for
    each other). ``max_network_retries`` is the SDK's (2 when not given); the
    SDK's retries are safe through the gateway, which deduplicates them.
    Other keyword arguments (``stripe_account``, ``http_client``, ...) go to
    ``stripe.StripeClient`` unchanged.
    """
    if not isinstance(vault_key, str) or not vault_key:
        raise ValueError("stripe_client needs a vault key (vk_...)")
    if vault_key.startswith(("sk_", "rk_")):
        raise ValueError("that is a real Stripe secret key: jobs should hold a vault key (vk_...) from issue_vault_key()")
    return stripe.StripeClient(
        vault_key,
        base_addresses={"api": stripe_base(url)},
        max_network_retries=max_network_retries,
        **options,
    )
