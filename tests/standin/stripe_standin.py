"""Stripe API stand-in: the upstream that end-to-end tests put behind Envoy.

The Keybrake gateway normally forwards to https://api.stripe.com. In the
end-to-end tests it forwards here instead, so the tests can see exactly what
reached "Stripe" and count how much money moved. The stand-in:

* speaks Stripe's wire format (form-encoded bodies with bracket syntax, JSON
  objects with the usual ids and fields, Stripe-shaped errors, a Request-Id
  header) well enough for the official ``stripe`` SDK to work against it;
* keeps a few object kinds in memory (charges, payment intents, refunds,
  transfers, payouts, top-ups, invoice items, customers, balance);
* records every request it receives and counts charges, refunds, transfers...;
* ignores ``Idempotency-Key`` unless started with ``--honor-idempotency``, so
  that by default any de-duplication seen in a test is the gateway's work;
* reads requests strictly, as Stripe documents them, unless started with
  ``--lenient``: then it reads them the way forgiving web frameworks do (a
  JSON body whatever the ``Content-Type``, ``gzip``/``deflate`` bodies
  inflated, the declared charset, ``;`` as a separator, the last of repeated
  parameters, booleans in any case and ``1``/``yes``/``on``, numbers with
  spaces, signs, underscores, exponents or other scripts' digits) — the
  upstream the gateway must not depend on reading bytes as it does;
* can inject faults: drop the connection after the money moved, delay, or fail.

Test hooks live under ``/__standin/`` and need no API key:

    GET    /__standin/requests   the request log (filters: ?method=&path=);
                                 "status" is null while in flight or if reset;
                                 "answer" is the object a 2xx made (also when reset)
    DELETE /__standin/requests   clear the log and every stored object
    GET    /__standin/counts     counters of what happened
    GET    /__standin/faults     the fault configuration in force
    POST   /__standin/faults     replace it (JSON, see FaultConfig)
    DELETE /__standin/faults     clear it (and release held requests)
    POST   /__standin/release    answer the requests held by ``hold``

A request header ``X-Standin-Fault`` injects a fault into that request only:
a comma-separated list of ``reset``, ``delay=<ms>`` and ``fail=<status>``.

Usage:
    python stripe_standin.py --port 0 --expect-key sk_test_xxx \
        [--honor-idempotency] [--lenient] [--host 127.0.0.1]

Once listening it prints one line, ``READY <port>``, to stdout and nothing else.
Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import gzip
import json
import re
import secrets
import socket
import string
import struct
import sys
import threading
import time
import traceback
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, unquote_plus

MAX_BODY_BYTES = 1 << 20
ID_ALPHABET = string.ascii_letters + string.digits
HOOK_PREFIX = "/__standin/"


def random_token(length: int) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking object id such as ``ch_3MmlLrLkdIwHu7ix0snN0B15``."""
    return f"{prefix}_{random_token(length)}"


def now() -> int:
    return int(time.time())


def empty_list(url: str) -> dict:
    return {"object": "list", "data": [], "has_more": False, "url": url}


# --------------------------------------------------------------------------
# Errors


class StripeError(Exception):
    """An error answered to the client as Stripe's ``{"error": {...}}`` body."""

    def __init__(self, status: int, type_: str, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.payload = {"type": type_, "message": message}
        self.payload.update({k: v for k, v in details.items() if v is not None})

    def body(self) -> dict:
        return {"error": self.payload}


def invalid_request(message: str, code: str | None = None, param: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code=code, param=param)


def missing_param(name: str) -> StripeError:
    return invalid_request(f"Missing required param: {name}.", "parameter_missing", name)


def no_such(kind: str, object_id: str, param: str) -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'",
        code="resource_missing", param=param,
    )


def unrecognized_url(method: str, path: str) -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).",
        code="resource_missing",
    )


def card_declined(**details: Any) -> StripeError:
    return StripeError(
        402, "card_error", "Your card was declined.",
        code="card_declined", decline_code="generic_decline", **details,
    )


def unexpected_state(intent: dict, action: str) -> StripeError:
    return invalid_request(
        f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}.",
        "payment_intent_unexpected_state",
    )


# --------------------------------------------------------------------------
# Parameters: Stripe's form encoding with bracket syntax

_KEY_SYNTAX = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_form(text: str) -> dict:
    """Parse ``a[b]=1&c[]=2&d[0][e]=3`` into ``{"a": {"b": "1"}, "c": ["2"], "d": [{"e": "3"}]}``.

    ``[]`` appends to a list and is only allowed last in a key; dicts whose
    keys are exactly 0..n-1 become lists, except ``metadata`` (free-form keys).
    """
    if _BAD_PERCENT.search(text):
        raise invalid_request("Invalid request: malformed percent-encoding.")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise invalid_request("Invalid request: parameters are not valid UTF-8.") from None
    root: dict = {}
    for key, value in pairs:
        _assign(root, key, value)
    return _listify(root)


def _key_path(key: str) -> list[str]:
    match = _KEY_SYNTAX.fullmatch(key)
    if not match:
        raise invalid_request(f"Invalid parameter name: '{key}'.")
    path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
    if "" in path[:-1]:
        raise invalid_request(f"Invalid parameter name: '{key}' ('[]' must come last).")
    return path


def _assign(root: dict, key: str, value: str) -> None:
    path = _key_path(key)
    appending = path[-1] == ""
    if appending:
        path.pop()
    node = root
    for segment in path[:-1]:
        node = node.setdefault(segment, {})
        if not isinstance(node, dict):
            raise invalid_request(f"Conflicting values for parameter '{key}'.", param=key)
    name = path[-1]
    if appending:
        node.setdefault(name, [])
        if not isinstance(node[name], list):
            raise invalid_request(f"Conflicting values for parameter '{key}'.", param=key)
        node[name].append(value)
    elif isinstance(node.get(name), (dict, list)):
        raise invalid_request(f"Conflicting values for parameter '{key}'.", param=key)
    else:
        node[name] = value


def _listify(node: Any, name: str | None = None) -> Any:
    if not isinstance(node, dict):
        return node
    children = {key: _listify(value, key) for key, value in node.items()}
    indices = [str(i) for i in range(len(children))]
    if name != "metadata" and children and set(children) == set(indices):
        return [children[i] for i in indices]
    return children


def integer_param(
    params: dict, name: str, *, required: bool = False, default: int | None = None,
    minimum: int | None = 1, maximum: int | None = None,
) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing_param(name)
        return default
    lenient_value = lenient_integer(raw) if LENIENT and isinstance(raw, str) else None
    if lenient_value is None and (not isinstance(raw, str) or not re.fullmatch(r"-?[0-9]+", raw)):
        raise invalid_request(f"Invalid integer: {raw}", "parameter_invalid_integer", name)
    value = lenient_value if lenient_value is not None else int(raw)
    if minimum is not None and value < minimum:
        raise invalid_request(
            f"This value must be greater than or equal to {minimum}.", "parameter_invalid_integer", name
        )
    if maximum is not None and value > maximum:
        raise invalid_request(
            f"This value must be less than or equal to {maximum}.", "parameter_invalid_integer", name
        )
    return value


def currency_param(params: dict, *, default: str | None = None) -> str:
    raw = params.get("currency") or default
    if raw is None:
        raise missing_param("currency")
    if LENIENT and isinstance(raw, str):
        raw = raw.strip()
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z]{3}", raw):
        raise invalid_request(f"Invalid currency: {raw}.", param="currency")
    return raw.lower()


# Set by --lenient: read values the way forgiving frameworks do.
LENIENT = False
LENIENT_TRUE = ("true", "1", "yes", "on", "t", "y")
LENIENT_FALSE = ("false", "0", "no", "off", "f", "n", "")


def boolean_param(params: dict, name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if LENIENT and isinstance(raw, str) and raw.strip().lower() in LENIENT_TRUE + LENIENT_FALSE:
        return raw.strip().lower() in LENIENT_TRUE
    if raw not in ("true", "false"):
        raise invalid_request(f"Invalid boolean: {raw}", param=name)
    return raw == "true"


def lenient_integer(raw: str) -> int | None:
    """``int()`` and then ``float()`` on the stripped text: ``" 100"``,
    ``"+100"``, ``"1_000"``, ``"１００"``, ``"1e5"`` and ``"100.0"`` all read as numbers."""
    text = unicodedata.normalize("NFKC", raw).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def required_param(params: dict, name: str) -> Any:
    if params.get(name) in (None, ""):
        raise missing_param(name)
    return params[name]


def apply_metadata(metadata: dict, params: dict) -> None:
    """Merge ``params["metadata"]`` into ``metadata`` the way Stripe does.

    An empty value unsets a key; ``metadata=`` (empty) unsets all of them.
    """
    changes = params.get("metadata")
    if changes is None:
        return
    if changes == "":
        metadata.clear()
        return
    if not isinstance(changes, dict) or not all(isinstance(v, str) for v in changes.values()):
        raise invalid_request("Invalid hash", param="metadata")
    for key, value in changes.items():
        if value == "":
            metadata.pop(key, None)
        else:
            metadata[key] = value


DECLINING_VALUES = (
    ("source", "tok_chargeDeclined"),
    ("payment_method", "pm_card_chargeDeclined"),
    ("customer", "cus_declined"),
)


def is_declined(fields: dict) -> bool:
    """Whether a charge's params or a payment intent use a test card that declines."""
    return any(fields.get(name) == value for name, value in DECLINING_VALUES)


# --------------------------------------------------------------------------
# The in-memory Stripe account

RETRIEVABLE = {
    "charges": "charge",
    "customers": "customer",
    "invoiceitems": "invoiceitem",
    "payment_intents": "payment_intent",
    "payouts": "payout",
    "refunds": "refund",
    "topups": "topup",
    "transfers": "transfer",
}
_ID = r"(?P<object_id>[^/]+)"
UNCONFIRMED = ("requires_payment_method", "requires_confirmation")


class Store:
    """Stripe objects and the endpoints that act on them. Not thread-safe:
    the caller holds a lock. Endpoint methods take the parsed params (plus
    ids from the URL) and return the JSON body, or raise StripeError."""

    ROUTES = [
        ("POST", "/v1/charges", "create_charge"),
        ("GET", "/v1/charges", "list_charges"),
        ("POST", f"/v1/charges/{_ID}/capture", "capture_charge"),
        ("POST", f"/v1/charges/{_ID}/refunds", "refund_charge"),
        ("POST", f"/v1/charges/{_ID}/refund", "legacy_refund_charge"),
        ("POST", "/v1/payment_intents", "create_payment_intent"),
        ("POST", f"/v1/payment_intents/{_ID}", "update_payment_intent"),
        ("POST", f"/v1/payment_intents/{_ID}/confirm", "confirm_payment_intent"),
        ("POST", f"/v1/payment_intents/{_ID}/capture", "capture_payment_intent"),
        ("POST", f"/v1/payment_intents/{_ID}/increment_authorization", "increment_authorization"),
        ("POST", "/v1/refunds", "create_refund"),
        ("POST", "/v1/transfers", "create_transfer"),
        ("POST", f"/v1/transfers/{_ID}/reversals", "reverse_transfer"),
        ("POST", "/v1/payouts", "create_payout"),
        ("POST", "/v1/topups", "create_topup"),
        ("POST", "/v1/invoiceitems", "create_invoiceitem"),
        ("POST", "/v1/customers", "create_customer"),
        ("POST", f"/v1/customers/{_ID}", "update_customer"),
        ("DELETE", f"/v1/customers/{_ID}", "delete_customer"),
        ("GET", "/v1/balance", "get_balance"),
        ("GET", f"/v1/(?P<collection>{'|'.join(RETRIEVABLE)})/{_ID}", "retrieve"),
    ]
    _COMPILED = [(method, re.compile(pattern), name) for method, pattern, name in ROUTES]

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._objects: dict[str, dict] = {}  # by id, in creation order
        self._balance: Counter[str] = Counter()  # available amount by currency

    def route(self, method: str, path: str) -> Callable[[dict], dict]:
        for route_method, pattern, name in self._COMPILED:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                endpoint = getattr(self, name)
                return lambda params: endpoint(params, **match.groupdict())
        raise unrecognized_url(method, path)

    # -- helpers

    def _new(self, prefix: str, kind: str, params: dict, **fields: Any) -> dict:
        obj = {"id": new_id(prefix), "object": kind, "created": now(), "livemode": False, "metadata": {}}
        apply_metadata(obj["metadata"], params)
        obj.update(fields)
        self._objects[obj["id"]] = obj
        return obj

    def _get(self, kind: str, object_id: str, param: str = "id") -> dict:
        obj = self._objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise no_such(kind, object_id, param)
        return obj

    def _of_kind(self, kind: str) -> list[dict]:
        return [obj for obj in self._objects.values() if obj["object"] == kind]

    def _money_in(self, currency: str, amount: int) -> None:
        self._balance[currency] += amount

    def retrieve(self, params: dict, collection: str, object_id: str) -> dict:
        return self._get(RETRIEVABLE[collection], object_id)

    # -- charges

    def create_charge(self, params: dict) -> dict:
        amount = integer_param(params, "amount", required=True)
        currency = currency_param(params)
        captured = boolean_param(params, "capture", default=True)
        charge = self._new(
            "ch", "charge", params,
            amount=amount, amount_captured=amount if captured else 0, amount_refunded=0,
            captured=captured, currency=currency, customer=params.get("customer"),
            description=params.get("description"), failure_code=None, failure_message=None,
            paid=True, payment_intent=None, payment_method=params.get("payment_method"),
            refunded=False, status="succeeded",
        )
        charge["refunds"] = empty_list(f"/v1/charges/{charge['id']}/refunds")
        if is_declined(params):
            charge.update(
                amount_captured=0, captured=False, paid=False, status="failed",
                failure_code="card_declined", failure_message="Your card was declined.",
            )
            raise card_declined(charge=charge["id"])
        self.counts["charges"] += 1
        self._money_in(currency, charge["amount_captured"])
        return charge

    def list_charges(self, params: dict) -> dict:
        limit = integer_param(params, "limit", default=10, maximum=100)
        newest_first = self._of_kind("charge")[::-1]
        return {
            "object": "list", "data": newest_first[:limit],
            "has_more": len(newest_first) > limit, "url": "/v1/charges",
        }

    def capture_charge(self, params: dict, object_id: str) -> dict:
        charge = self._get("charge", object_id)
        if charge["status"] != "succeeded":
            raise invalid_request(f"Charge {object_id} has failed and cannot be captured.")
        if charge["captured"]:
            raise invalid_request(f"Charge {object_id} has already been captured.", "charge_already_captured")
        amount = integer_param(params, "amount", default=charge["amount"], maximum=charge["amount"])
        charge.update(captured=True, amount_captured=amount)
        self._money_in(charge["currency"], amount)
        return charge

    def refund_charge(self, params: dict, object_id: str) -> dict:
        return self._refund(self._get("charge", object_id), params)

    def legacy_refund_charge(self, params: dict, object_id: str) -> dict:
        charge = self._get("charge", object_id)
        self._refund(charge, params)
        return charge

    # -- refunds

    def create_refund(self, params: dict) -> dict:
        if params.get("charge"):
            target = self._get("charge", params["charge"], param="charge")
        elif params.get("payment_intent"):
            target = self._get("payment_intent", params["payment_intent"], param="payment_intent")
        else:
            raise missing_param("charge")
        return self._refund(target, params)

    def _refundable(self, target: dict) -> int:
        if target["object"] == "charge":
            return target["amount_captured"] - target["amount_refunded"]
        refunded = sum(r["amount"] for r in self._of_kind("refund") if r["payment_intent"] == target["id"])
        return target["amount_received"] - refunded

    def _refund(self, target: dict, params: dict) -> dict:
        refundable = self._refundable(target)
        if refundable <= 0:
            raise invalid_request(f"{target['id']} has nothing left to refund.", "charge_already_refunded")
        amount = integer_param(params, "amount", default=refundable)
        if amount > refundable:
            raise invalid_request(
                f"Refund amount ({amount}) is greater than unrefunded amount ({refundable}).",
                "amount_too_large", "amount",
            )
        is_charge = target["object"] == "charge"
        refund = self._new(
            "re", "refund", params,
            amount=amount, currency=target["currency"],
            charge=target["id"] if is_charge else None,
            payment_intent=target["payment_intent"] if is_charge else target["id"],
            reason=params.get("reason"), status="succeeded",
        )
        if is_charge:
            target["amount_refunded"] += amount
            target["refunded"] = target["amount_refunded"] == target["amount"]
            target["refunds"]["data"].insert(0, refund)
        self.counts["refunds"] += 1
        self._money_in(target["currency"], -amount)
        return refund

    # -- payment intents

    def create_payment_intent(self, params: dict) -> dict:
        amount = integer_param(params, "amount", required=True)
        currency = currency_param(params)
        intent = self._new(
            "pi", "payment_intent", params,
            amount=amount, amount_capturable=0, amount_received=0,
            capture_method=params.get("capture_method", "automatic"),
            currency=currency, customer=params.get("customer"),
            description=params.get("description"), last_payment_error=None, latest_charge=None,
            payment_method=params.get("payment_method"), payment_method_types=["card"],
            status="requires_confirmation",
        )
        intent["client_secret"] = f"{intent['id']}_secret_{random_token(24)}"
        if boolean_param(params, "confirm", default=False):
            self._confirm(intent, params)
        return intent

    def update_payment_intent(self, params: dict, object_id: str) -> dict:
        intent = self._get("payment_intent", object_id)
        if ("amount" in params or "currency" in params) and intent["status"] not in UNCONFIRMED:
            raise unexpected_state(intent, "update the amount of")
        intent["amount"] = integer_param(params, "amount", default=intent["amount"])
        intent["currency"] = currency_param(params, default=intent["currency"])
        for name in ("customer", "description", "payment_method"):
            if name in params:
                intent[name] = params[name] or None
        apply_metadata(intent["metadata"], params)
        return intent

    def confirm_payment_intent(self, params: dict, object_id: str) -> dict:
        intent = self._get("payment_intent", object_id)
        self._confirm(intent, params)
        return intent

    def _confirm(self, intent: dict, params: dict) -> None:
        if intent["status"] not in UNCONFIRMED:
            raise unexpected_state(intent, "confirm")
        intent["payment_method"] = params.get("payment_method", intent["payment_method"])
        if is_declined(intent):
            intent.update(status="requires_payment_method", last_payment_error=card_declined().payload)
            raise card_declined(payment_intent=intent)
        intent["last_payment_error"] = None
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
        else:
            intent.update(status="succeeded", amount_received=intent["amount"])
            self._money_in(intent["currency"], intent["amount"])
        self.counts["payment_intents_confirmed"] += 1

    def capture_payment_intent(self, params: dict, object_id: str) -> dict:
        intent = self._get("payment_intent", object_id)
        if intent["status"] != "requires_capture":
            raise unexpected_state(intent, "capture")
        capturable = intent["amount_capturable"]
        amount = integer_param(params, "amount_to_capture", default=capturable, maximum=capturable)
        intent.update(status="succeeded", amount_capturable=0, amount_received=amount)
        self._money_in(intent["currency"], amount)
        return intent

    def increment_authorization(self, params: dict, object_id: str) -> dict:
        intent = self._get("payment_intent", object_id)
        if intent["status"] != "requires_capture":
            raise unexpected_state(intent, "increment the authorization of")
        amount = integer_param(params, "amount", required=True, minimum=intent["amount"] + 1)
        intent.update(amount=amount, amount_capturable=amount)
        return intent

    # -- transfers, payouts, top-ups

    def create_transfer(self, params: dict) -> dict:
        amount = integer_param(params, "amount", required=True)
        currency = currency_param(params)
        transfer = self._new(
            "tr", "transfer", params,
            amount=amount, amount_reversed=0, currency=currency,
            description=params.get("description"), destination=required_param(params, "destination"),
            reversed=False, transfer_group=params.get("transfer_group"),
        )
        transfer["reversals"] = empty_list(f"/v1/transfers/{transfer['id']}/reversals")
        self.counts["transfers"] += 1
        self._money_in(currency, -amount)
        return transfer

    def reverse_transfer(self, params: dict, object_id: str) -> dict:
        transfer = self._get("transfer", object_id)
        remaining = transfer["amount"] - transfer["amount_reversed"]
        if remaining == 0:
            raise invalid_request(f"Transfer {object_id} has already been fully reversed.")
        amount = integer_param(params, "amount", default=remaining, maximum=remaining)
        reversal = self._new(
            "trr", "transfer_reversal", params,
            amount=amount, currency=transfer["currency"], transfer=object_id,
        )
        transfer["amount_reversed"] += amount
        transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
        transfer["reversals"]["data"].insert(0, reversal)
        self._money_in(transfer["currency"], amount)
        return reversal

    def create_payout(self, params: dict) -> dict:
        amount = integer_param(params, "amount", required=True)
        currency = currency_param(params)
        payout = self._new(
            "po", "payout", params,
            amount=amount, arrival_date=now() + 2 * 86400, currency=currency,
            description=params.get("description"), destination=params.get("destination"),
            method=params.get("method", "standard"), status="pending", type="bank_account",
        )
        self.counts["payouts"] += 1
        self._money_in(currency, -amount)
        return payout

    def create_topup(self, params: dict) -> dict:
        amount = integer_param(params, "amount", required=True)
        currency = currency_param(params)
        topup = self._new(
            "tu", "topup", params,
            amount=amount, currency=currency, description=params.get("description"), status="pending",
        )
        self._money_in(currency, amount)
        return topup

    # -- invoice items and customers

    def create_invoiceitem(self, params: dict) -> dict:
        return self._new(
            "ii", "invoiceitem", params,
            amount=integer_param(params, "amount", default=0, minimum=None),
            currency=currency_param(params, default="usd"),
            customer=required_param(params, "customer"), date=now(),
            description=params.get("description"), invoice=params.get("invoice"), quantity=1,
        )

    CUSTOMER_FIELDS = ("description", "email", "name", "phone")

    def create_customer(self, params: dict) -> dict:
        fields = {name: params.get(name) for name in self.CUSTOMER_FIELDS}
        return self._new("cus", "customer", params, balance=0, currency=None, delinquent=False, **fields)

    def update_customer(self, params: dict, object_id: str) -> dict:
        customer = self._get("customer", object_id)
        for name in self.CUSTOMER_FIELDS:
            if name in params:
                customer[name] = params[name] or None
        apply_metadata(customer["metadata"], params)
        return customer

    def delete_customer(self, params: dict, object_id: str) -> dict:
        self._get("customer", object_id)
        del self._objects[object_id]
        return {"id": object_id, "object": "customer", "deleted": True}

    # -- balance

    def get_balance(self, params: dict) -> dict:
        amounts = sorted(self._balance.items()) or [("usd", 0)]
        return {
            "object": "balance",
            "livemode": False,
            "available": [
                {"amount": amount, "currency": currency, "source_types": {"card": amount}}
                for currency, amount in amounts
            ],
            "pending": [
                {"amount": 0, "currency": currency, "source_types": {"card": 0}} for currency, _ in amounts
            ],
        }


# --------------------------------------------------------------------------
# Faults


@dataclass
class FaultConfig:
    """What ``POST /__standin/faults`` sets. A request matches when its path
    equals ``match_path`` and its method equals ``match_method`` (each only
    if given).

    reset_after_receive: the next n matching requests are processed and
        recorded, then their connection is dropped with a TCP reset.
    delay_ms: every matching response is held back this long.
    fail_status: every matching request is answered with this status and a
        Stripe ``api_error`` body, without being processed.
    overcharge_factor: every matching request that carries an ``amount`` is
        executed with that amount multiplied by this factor: a Stripe that
        moves more than it was asked to, for the gateway's reconciliation.
    hold: every matching request is processed and recorded, and its answer
        held until ``POST /__standin/release`` (or the faults are cleared):
        a test can act while a call is surely in flight, however slow the machine.
    """

    reset_after_receive: int = 0
    delay_ms: int = 0
    fail_status: int | None = None
    hold: bool = False
    overcharge_factor: int = 1
    match_path: str | None = None
    match_method: str | None = None

    @classmethod
    def from_json(cls, spec: Any) -> FaultConfig:
        if not isinstance(spec, dict):
            raise invalid_request("The fault configuration must be a JSON object.")
        try:
            config = cls(**spec)
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise invalid_request(f"Unknown fault setting; known ones: {known}.") from None
        config._validate()
        return config

    def _validate(self) -> None:
        for name in ("reset_after_receive", "delay_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise invalid_request(f"{name} must be a non-negative integer.", param=name)
        if not isinstance(self.overcharge_factor, int) or self.overcharge_factor < 1:
            raise invalid_request("overcharge_factor must be a positive integer.", param="overcharge_factor")
        if self.fail_status is not None and not (
            isinstance(self.fail_status, int) and 400 <= self.fail_status <= 599
        ):
            raise invalid_request("fail_status must be an HTTP status from 400 to 599.", param="fail_status")
        if not isinstance(self.hold, bool):
            raise invalid_request("hold must be true or false.", param="hold")
        for name in ("match_path", "match_method"):
            if not isinstance(getattr(self, name), (str, type(None))):
                raise invalid_request(f"{name} must be a string.", param=name)

    def matches(self, method: str, path: str) -> bool:
        return (self.match_path is None or self.match_path == path) and (
            self.match_method is None or self.match_method.upper() == method
        )


@dataclass
class FaultPlan:
    """The faults that apply to one request."""

    reset: bool = False
    delay_ms: int = 0
    fail_status: int | None = None
    hold: threading.Event | None = None
    overcharge_factor: int = 1

    @classmethod
    def from_header(cls, header: str) -> FaultPlan:
        """Parse ``X-Standin-Fault: reset, delay=<ms>, fail=<status>``."""
        plan = cls()
        for directive in filter(None, (d.strip() for d in header.split(","))):
            name, _, value = directive.partition("=")
            if name == "reset" and not value:
                plan.reset = True
            elif name == "delay" and value.isdecimal():
                plan.delay_ms = int(value)
            elif name == "fail" and value.isdecimal() and 400 <= int(value) <= 599:
                plan.fail_status = int(value)
            else:
                raise invalid_request(f"Invalid X-Standin-Fault directive: '{directive}'.")
        return plan


def injected_failure(status: int) -> StripeError:
    return StripeError(status, "api_error", f"The stand-in was told to fail this request with HTTP {status}.")


# --------------------------------------------------------------------------
# The application: recording, auth, faults, idempotency, dispatch


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: new_id("req", 14))
    record: dict | None = None  # the log entry to complete once sent
    reset: bool = False
    delay_ms: int = 0
    hold: threading.Event | None = None  # answer once this is set

    @classmethod
    def json(cls, status: int, payload: Any) -> Reply:
        return cls(status, json.dumps(payload).encode())

    @classmethod
    def error(cls, error: StripeError) -> Reply:
        return cls.json(error.status, error.body())

    def replayed(self) -> Reply:
        headers = {"Idempotent-Replayed": "true", "Original-Request": self.request_id}
        return Reply(self.status, self.body, headers)


@dataclass
class CachedReply:
    fingerprint: tuple
    reply: Reply


def api_key_of(headers: dict[str, str]) -> str | None:
    """The key from ``Bearer <key>`` or ``Basic base64(<key>:)``, if any."""
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0]
    return None


def masked(key: str) -> str:
    """``sk_test_abc`` -> ``sk_****``: never echo a key back."""
    prefix, underscore, _ = key.partition("_")
    return f"{prefix}_****" if underscore else "****"


def parse_params(request: Request) -> dict:
    """Query string and body parameters together, the body winning."""
    if LENIENT:
        return parse_params_leniently(request)
    try:
        body = request.body.decode()
    except UnicodeDecodeError:
        raise invalid_request("Invalid request: the body is not valid UTF-8.") from None
    return {**parse_form(request.query), **parse_form(body)}


def parse_params_leniently(request: Request) -> dict:
    """What a forgiving framework makes of a request: the body inflated per
    ``Content-Encoding``, decoded per the declared charset, read as JSON when
    it is JSON (whatever the ``Content-Type``), else as a form where ``;``
    separates too and the last of repeated names wins."""
    body = request.body
    encoding = request.headers.get("content-encoding", "").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif encoding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error):
        raise invalid_request("Invalid request: the body does not inflate.") from None
    charset = "utf-8"
    for part in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    query = lenient_form(request.query)
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(stripped)
        except ValueError:
            document = None
        if isinstance(document, dict):
            return {**query, **_stringify(document)}
    return {**query, **lenient_form(text)}


def _stringify(node: Any) -> Any:
    """JSON values as a form parser would have them: scalars as text."""
    if isinstance(node, dict):
        return {str(k): _stringify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_stringify(v) for v in node]
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def lenient_form(text: str) -> dict:
    """``&`` and ``;`` separate pairs; brackets nest; a later value replaces
    an earlier one, whatever its shape."""
    root: dict = {}
    for pair in re.split(r"[&;]", text):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key, value = unquote_plus(raw_key, errors="replace"), unquote_plus(raw_value, errors="replace")
        match = _KEY_SYNTAX.fullmatch(key)
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))] if match else [key]
        node = root
        for segment in path[:-1]:
            if not isinstance(node.get(segment), dict):
                node[segment] = {}
            node = node[segment]
        if path[-1] == "":
            # `name[]` appends (after `name=1`, the list replaces the value).
            if not isinstance(node.get(""), list):
                node[""] = []
            node[""].append(value)
        else:
            node[path[-1]] = value
    return _listify(_flatten_appends(root))


def _flatten_appends(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if set(node) == {""}:
        return node[""]
    return {k: _flatten_appends(v) for k, v in node.items() if k != ""}


class Standin:
    """Everything but HTTP framing. One lock guards all state; each request
    is processed entirely under it (the work is small and in memory), which
    also makes idempotent replays atomic. Delays happen outside the lock."""

    def __init__(self, api_key: str, honor_idempotency: bool):
        self._api_key = api_key
        self._honor_idempotency = honor_idempotency
        self._lock = threading.Lock()
        self._faults = FaultConfig()
        self._release = threading.Event()
        self._clear()

    def _clear(self) -> None:
        self._store = Store()
        self._log: list[dict] = []
        self._idempotency: dict[str, CachedReply] = {}

    def handle(self, request: Request) -> Reply:
        with self._lock:
            if request.path.startswith(HOOK_PREFIX):
                return self._hook(request)
            return self._api(request)

    def completed(self, reply: Reply, status: int | None) -> None:
        """Note in the log what was sent: a status, or None for a reset. One
        line per API request goes to stderr too: a failing test shows it."""
        if reply.record is not None:
            with self._lock:
                reply.record["status"] = status
                if 200 <= reply.status < 300 and "answer" not in reply.record:
                    # What the stand-in did with the request: the object it made, even
                    # when the answer was then lost (reset).
                    try:
                        reply.record["answer"] = json.loads(reply.body)
                    except ValueError:
                        pass
            r = reply.record
            print(f"{r['seq']} {r['method']} {r['path']} -> {status if status is not None else 'reset'}"
                  f" idempotency-key={r['headers'].get('idempotency-key', '-')}", file=sys.stderr, flush=True)

    # -- the Stripe API

    def _api(self, request: Request) -> Reply:
        try:
            params, bad_params = parse_params(request), None
        except StripeError as error:
            params, bad_params = None, error
        record = self._record(request, params)
        plan = FaultPlan()
        try:
            plan = self._plan_faults(request)
            reply = self._answer(request, params, bad_params, plan)
        except StripeError as error:
            reply = Reply.error(error)
        except Exception:  # a stand-in bug must not look like a dropped connection
            traceback.print_exc(file=sys.stderr)
            reply = Reply.error(StripeError(500, "api_error", "Internal error in the Stripe stand-in."))
        return dataclasses.replace(reply, record=record, reset=plan.reset, delay_ms=plan.delay_ms, hold=plan.hold)

    def _record(self, request: Request, params: dict | None) -> dict:
        record = {
            "seq": len(self._log) + 1,
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode(errors="replace"),
            "params": params,
            "status": None,
            "at": time.time(),
        }
        self._log.append(record)
        return record

    def _plan_faults(self, request: Request) -> FaultPlan:
        """The configured faults, overridden by the request's X-Standin-Fault."""
        plan = FaultPlan.from_header(request.headers.get("x-standin-fault", ""))
        config = self._faults
        if config.matches(request.method, request.path):
            plan.delay_ms = plan.delay_ms or config.delay_ms
            plan.fail_status = plan.fail_status or config.fail_status
            if config.hold:
                plan.hold = self._release
            plan.overcharge_factor = config.overcharge_factor
            if config.reset_after_receive > 0:
                config.reset_after_receive -= 1
                plan.reset = True
        return plan

    def _answer(
        self, request: Request, params: dict | None, bad_params: StripeError | None, plan: FaultPlan
    ) -> Reply:
        if plan.fail_status:
            raise injected_failure(plan.fail_status)
        if request.path.startswith("/v1/"):
            self._authenticate(request.headers)
        if bad_params:
            raise bad_params
        if plan.overcharge_factor > 1 and isinstance(params.get("amount"), str):
            amount = lenient_integer(params["amount"])
            if amount is not None:
                params = {**params, "amount": str(amount * plan.overcharge_factor)}
        idempotency_key = request.headers.get("idempotency-key")
        if self._honor_idempotency and idempotency_key and request.method == "POST":
            return self._idempotent(idempotency_key, request, params)
        return self._dispatch(request, params)

    def _authenticate(self, headers: dict[str, str]) -> None:
        key = api_key_of(headers)
        if key == self._api_key:
            return
        message = (
            f"Invalid API Key provided: {masked(key)}"
            if key
            else "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
        )
        raise StripeError(401, "invalid_request_error", message, code="api_key_invalid")

    def _idempotent(self, key: str, request: Request, params: dict) -> Reply:
        fingerprint = (request.method, request.path, params)
        cached = self._idempotency.get(key)
        if cached is None:
            reply = self._dispatch(request, params)
            self._idempotency[key] = CachedReply(fingerprint, reply)
            return reply
        if cached.fingerprint != fingerprint:
            raise StripeError(
                400, "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were "
                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                "different request.",
            )
        return cached.reply.replayed()

    def _dispatch(self, request: Request, params: dict) -> Reply:
        try:
            endpoint = self._store.route(request.method, request.path)
            return Reply.json(200, endpoint(params))
        except StripeError as error:  # answered, so cached if idempotent, like Stripe
            return Reply.error(error)

    # -- test hooks

    def _hook(self, request: Request) -> Reply:
        hooks = {
            ("GET", "requests"): self._get_requests,
            ("DELETE", "requests"): self._delete_requests,
            ("GET", "counts"): self._get_counts,
            ("GET", "faults"): self._get_faults,
            ("POST", "faults"): self._set_faults,
            ("DELETE", "faults"): self._delete_faults,
            ("POST", "release"): self._release_held,
        }
        hook = hooks.get((request.method, request.path[len(HOOK_PREFIX):]))
        if hook is None:
            return Reply.error(unrecognized_url(request.method, request.path))
        try:
            return Reply.json(200, hook(request))
        except StripeError as error:
            return Reply.error(error)

    def _get_requests(self, request: Request) -> list[dict]:
        filters = {name: values[-1] for name, values in parse_qs(request.query).items()}
        method, path = filters.get("method", "").upper(), filters.get("path")
        return [
            record for record in self._log
            if (not method or record["method"] == method) and (path is None or record["path"] == path)
        ]

    def _delete_requests(self, request: Request) -> dict:
        self._clear()
        return {"cleared": True}

    def _get_counts(self, request: Request) -> dict:
        """``charges`` counts charges that went through (money moved, even if
        the connection was then reset); ``charges_attempted`` every
        ``POST /v1/charges`` received, refused or not."""
        counts = self._store.counts
        return {
            "charges": counts["charges"],
            "charges_attempted": sum(
                1 for r in self._log if r["method"] == "POST" and r["path"] == "/v1/charges"
            ),
            "refunds": counts["refunds"],
            "payment_intents_confirmed": counts["payment_intents_confirmed"],
            "transfers": counts["transfers"],
            "payouts": counts["payouts"],
            "requests": len(self._log),
        }

    def _get_faults(self, request: Request) -> dict:
        return dataclasses.asdict(self._faults)

    def _set_faults(self, request: Request) -> dict:
        try:
            spec = json.loads(request.body or b"{}")
        except ValueError:
            raise invalid_request("The fault configuration must be valid JSON.") from None
        self._faults = FaultConfig.from_json(spec)
        self._release.set()
        self._release = threading.Event()
        return self._get_faults(request)

    def _delete_faults(self, request: Request) -> dict:
        self._faults = FaultConfig()
        self._release.set()
        return self._get_faults(request)

    def _release_held(self, request: Request) -> dict:
        self._release.set()
        return {"released": True}


# --------------------------------------------------------------------------
# HTTP


class BadFraming(Exception):
    """The request body could not be read; the connection cannot be reused."""


class StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandinServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Keep quiet: stdout carries only the READY line."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer HTTP-level errors (bad request line, unknown method...) in Stripe's shape."""
        self.close_connection = True
        error = StripeError(code, "invalid_request_error", message or HTTPStatus(code).phrase)
        self._send(Reply.error(error))

    def _serve(self) -> None:
        app = self.server.app
        try:
            body = self._read_body()
        except BadFraming as problem:
            self.close_connection = True
            self._send(Reply.error(invalid_request(f"Invalid request: {problem}")))
            return
        path, _, query = self.path.partition("?")
        reply = app.handle(Request(self.command, path, query, self._header_dict(), body))
        if reply.hold is not None:
            reply.hold.wait(timeout=600)
        if reply.delay_ms:
            time.sleep(reply.delay_ms / 1000)
        if reply.reset:
            self._reset_connection()
            app.completed(reply, None)
            return
        # Recorded as answered before the answer leaves, so a client that reads
        # the log right after its answer always finds the status.
        app.completed(reply, reply.status)
        try:
            self._send(reply)
        except OSError:
            self.close_connection = True
            app.completed(reply, None)

    def _header_dict(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length", "0").strip()
        if not length.isdecimal():
            raise BadFraming(f"bad Content-Length '{length}'.")
        return self._read_exactly(int(length))

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise BadFraming("bad chunk size.") from None
            if size == 0:
                break
            chunks.append(self._read_exactly(size))
            self.rfile.readline(8)  # the CRLF after the chunk
            if sum(map(len, chunks)) > MAX_BODY_BYTES:
                raise BadFraming("body too large.")
        while self.rfile.readline(1024).strip():  # trailers up to the blank line
            pass
        return b"".join(chunks)

    def _read_exactly(self, size: int) -> bytes:
        if size > MAX_BODY_BYTES:
            raise BadFraming("body too large.")
        data = self.rfile.read(size)
        if len(data) < size:
            raise BadFraming("body shorter than announced.")
        return data

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Request-Id", reply.request_id)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _reset_connection(self) -> None:
        """Drop the connection without answering: SO_LINGER 0 makes close()
        send a TCP RST. The socket is really closed when finish() releases
        rfile, before the server's own shutdown (whose error it ignores)."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: Standin):
        super().__init__(address, StandinHandler)
        self.app = app

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is not an error worth reporting."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--expect-key", required=True, help="the only API key accepted")
    parser.add_argument(
        "--honor-idempotency", action="store_true",
        help="replay responses for a repeated Idempotency-Key, as Stripe does (default: ignore it)",
    )
    parser.add_argument(
        "--lenient", action="store_true",
        help="read requests the way forgiving frameworks do (see the module's docstring)",
    )
    args = parser.parse_args(argv)
    global LENIENT
    LENIENT = args.lenient
    server = StandinServer((args.host, args.port), Standin(args.expect_key, args.honor_idempotency))
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
