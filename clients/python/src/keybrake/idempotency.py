"""Stable idempotency keys and spend caps derived from what is being billed."""
from __future__ import annotations

import datetime as _dt
import hashlib
from decimal import ROUND_CEILING, Decimal
from typing import Union

Part = Union[str, int, Decimal, _dt.date]


def _text(part: object) -> str:
    if part is None:
        raise TypeError("billing_idempotency_key: a part is None (a missing field would make every key the same)")
    if isinstance(part, bool) or isinstance(part, float):
        raise TypeError(
            f"billing_idempotency_key: {type(part).__name__} part {part!r}; pass amounts as integer minor "
            "units (2999) or Decimal, so that the key does not depend on float formatting"
        )
    if isinstance(part, (str, int, Decimal, _dt.date)):
        return str(part) if not isinstance(part, _dt.date) else part.isoformat()
    raise TypeError(f"billing_idempotency_key: unsupported part type {type(part).__name__}")


def billing_idempotency_key(*parts: Part, context: str) -> str:
    """The idempotency key of one logical billing operation.

    SHA-256 of the parts and the context joined with ``:``, as 32 hex
    characters: ``billing_idempotency_key("cus_123", 2999, "2026-06",
    context="ray-billing")`` hashes ``"cus_123:2999:2026-06:ray-billing"``.
    It depends only on what is billed, so every retry, re-run, re-delivery or
    replica that bills the same thing sends the same key (a ``uuid4()`` or a
    Ray task id changes on every attempt and deduplicates nothing).

    ``context`` names the billing job (``"ray-billing"``, ``"kestra-monthly"``)
    so that two different jobs billing the same customer the same amount in
    the same period do not collapse into one charge. Put everything that makes
    two charges *different* operations into the parts (customer, amount,
    period, invoice or event id), and nothing that changes between attempts.
    """
    if not parts:
        raise ValueError("billing_idempotency_key needs at least one part")
    if not isinstance(context, str) or not context:
        raise ValueError("billing_idempotency_key needs a non-empty context")
    raw = ":".join([*(_text(p) for p in parts), context])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def usd_cap(amount_cents: int, headroom: Union[str, Decimal] = "0.10") -> Decimal:
    """A daily cap for a key that should make one charge of ``amount_cents``
    (USD minor units): the amount plus ``headroom`` (10 % by default), rounded
    up to the cent. ``usd_cap(2999)`` is ``Decimal("32.99")``."""
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents < 0:
        raise ValueError("usd_cap: amount_cents must be a non-negative integer (USD cents)")
    factor = Decimal(1) + Decimal(headroom)
    return (Decimal(amount_cents) * factor / 100).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
