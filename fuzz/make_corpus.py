#!/usr/bin/env python3
"""Writes the seed corpus of Keybrake's fuzz targets (fuzz/corpus/<target>/).

The seeds are what the code really sees: form bodies as Stripe's Python SDK
encodes them (its own encoder is used when the `stripe` package is
importable, e.g. with the project's .venv/bin/python; a copy of its rules
otherwise), request targets with the encodings clients and attackers use,
scopes, plugin configurations from envoy/, admin requests from the README
and the tests, FX files. Each target's input format is described at the top
of its fuzz_targets/<target>.rs.

    .venv/bin/python fuzz/make_corpus.py      # rewrites fuzz/corpus/*/<named seeds>

Seeds are named for what they are; files libFuzzer adds to a copy of the
corpus (named by SHA-1) are never committed (scripts/fuzz.sh fuzzes a
temporary copy).
"""
import json
import os
import struct
import sys
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

try:  # the SDK's own encoder: exactly what `stripe` sends
    from stripe._encode import _api_encode  # type: ignore
except Exception:  # the same rules, for machines without the SDK
    def _api_encode(data, prefix=None):
        for key, value in data.items():
            name = key if prefix is None else f"{prefix}[{key}]"
            if value is None:
                continue
            if isinstance(value, dict):
                yield from _api_encode(value, name)
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    item = f"{name}[{i}]"
                    if isinstance(v, dict):
                        yield from _api_encode(v, item)
                    else:
                        yield item, v
            elif isinstance(value, bool):
                yield name, str(value).lower()
            else:
                yield name, value


def sdk(params: dict) -> str:
    """A form body exactly as stripe-python sends it."""
    return urlencode(list(_api_encode(params)))


# Requests the SDK makes (path, params), from Stripe's API reference and the tests.
SDK_CALLS = {
    "charge-create": ("/v1/charges", {"amount": 2999, "currency": "usd", "customer": "cus_123",
                                      "description": "Subscription 2026-06", "metadata": {"order_id": "6735"}}),
    "charge-uncaptured": ("/v1/charges", {"amount": 3000, "currency": "usd", "capture": False,
                                          "source": "tok_visa", "statement_descriptor_suffix": "ORDER 42"}),
    "charge-jpy": ("/v1/charges", {"amount": 1000, "currency": "jpy", "customer": "cus_NffrFeUfNV2Hib"}),
    "charge-kwd": ("/v1/charges", {"amount": 1250, "currency": "KWD", "customer": "cus_1"}),
    "charge-capture-partial": ("/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15/capture", {"amount": 2000}),
    "charge-capture-full": ("/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15/capture", {}),
    "charge-update": ("/v1/charges/ch_1", {"metadata": {"shipping": "express"}}),
    "charge-refund-legacy": ("/v1/charges/ch_1/refunds", {"amount": 500, "reason": "duplicate"}),
    "payment-intent-create": ("/v1/payment_intents", {"amount": 2000, "currency": "usd",
                                                      "automatic_payment_methods": {"enabled": True}}),
    "payment-intent-confirmed": ("/v1/payment_intents", {
        "amount": 1099, "currency": "eur", "confirm": True, "payment_method": "pm_card_visa",
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "expand": ["latest_charge", "customer"]}),
    "payment-intent-update-amount": ("/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa", {"amount": 1500}),
    "payment-intent-increment": ("/v1/payment_intents/pi_1/increment_authorization", {"amount": 2500}),
    "payment-intent-capture": ("/v1/payment_intents/pi_1/capture", {"amount_to_capture": 750}),
    "payment-intent-confirm": ("/v1/payment_intents/pi_1/confirm", {"payment_method": "pm_card_visa",
                                                                   "return_url": "https://example.com/return"}),
    "refund-charge": ("/v1/refunds", {"charge": "ch_3MmlLrLkdIwHu7ix0snN0B15", "amount": 1000,
                                      "reason": "requested_by_customer"}),
    "refund-payment-intent-full": ("/v1/refunds", {"payment_intent": "pi_1"}),
    "transfer": ("/v1/transfers", {"amount": 400, "currency": "usd", "destination": "acct_1032D82eZvKYlo2C",
                                   "transfer_group": "ORDER_95"}),
    "transfer-reversal": ("/v1/transfers/tr_1/reversals", {"amount": 100}),
    "payout-ugx": ("/v1/payouts", {"amount": 500000, "currency": "ugx", "method": "standard"}),
    "topup": ("/v1/topups", {"amount": 2000, "currency": "usd", "description": "Top-up for week of May 31"}),
    "invoiceitem-amount": ("/v1/invoiceitems", {"customer": "cus_NeZwdNtLEOXuvB", "amount": 1500,
                                                "currency": "usd", "description": "One-time setup fee"}),
    "invoiceitem-credit": ("/v1/invoiceitems", {"customer": "cus_1", "amount": -500, "currency": "usd"}),
    "invoiceitem-price-data": ("/v1/invoiceitems", {"customer": "cus_1", "quantity": 3, "price_data": {
        "currency": "eur", "unit_amount": 250, "product": "prod_NWjs8kKbJWmuuc"}}),
    "invoiceitem-price": ("/v1/invoiceitems", {"customer": "cus_1", "price": "price_1MtGUsLkdIwHu7ix1be5Ljaj"}),
    "invoice-pay": ("/v1/invoices/in_1MtHbELkdIwHu7ixl4OzzPMv/pay", {}),
    "invoice-finalize": ("/v1/invoices/in_1/finalize", {"auto_advance": False}),
    "checkout-session": ("/v1/checkout/sessions", {
        "mode": "payment", "success_url": "https://example.com/success?session_id={CHECKOUT_SESSION_ID}",
        "line_items": [
            {"price_data": {"currency": "usd", "product_data": {"name": "T-shirt"}, "unit_amount": 2000},
             "quantity": 2},
            {"price_data": {"currency": "usd", "product_data": {"name": "Mug \u2615"}, "unit_amount": 1250}},
        ]}),
    "checkout-session-price": ("/v1/checkout/sessions", {
        "mode": "payment", "success_url": "https://example.com/s",
        "line_items": [{"price": "price_1", "quantity": 1}]}),
    "checkout-session-subscription": ("/v1/checkout/sessions", {
        "mode": "subscription", "line_items": [{"price": "price_1", "quantity": 1}]}),
    "subscription": ("/v1/subscriptions", {"customer": "cus_1", "items": [{"price": "price_1", "quantity": 2}],
                                           "payment_behavior": "default_incomplete",
                                           "expand": ["latest_invoice.payment_intent"]}),
    "customer-create": ("/v1/customers", {"email": "jenny.rosen@example.com", "name": "Jenny Rosen",
                                          "address": {"line1": "510 Townsend St", "postal_code": "98140",
                                                      "city": "San Francisco", "country": "US"},
                                          "metadata": {"note": "caf\u00e9 & cr\u00e8me = 100%"}}),
    "customer-unset-metadata": ("/v1/customers/cus_1", {"metadata": {"old": ""}, "description": ""}),
}

# Hand-written bodies: encodings the SDK does not produce but clients do.
RAW_BODIES = {
    "brackets-unencoded": "amount=2999&currency=usd&metadata[order_id]=o+1&expand[]=customer&expand[]=invoice",
    "empty-pairs": "&&amount=100&&currency=usd&",
    "key-without-value": "amount=100&currency=usd&capture",
    "plus-and-percent-spaces": "description=a+b%20c&name=Jenny%2BRosen",
    "utf8": "description=Caf%C3%A9%20%E2%98%95%F0%9F%92%B3",
    "duplicate-amount": "amount=100&currency=usd&amount=100000",
    "duplicate-encoded": "amount=100&%61mount=100000&currency=usd",
    "expand-append": "expand[]=a&expand[]=b&expand%5B%5D=c",
    "deep-nesting": "a[b][c][d][e][f][g][h]=1&a[b][c][d][e][f][g][h][i]=2",
    "bad-percent": "amount=%zz&currency=usd",
    "bad-percent-truncated": "amount=100%2",
    "bad-utf8": "description=%FF%FE",
    "stray-bracket": "metadata[x=1&metadata]y=2",
    "empty-name": "=1&[a]=2",
    "method-override": "amount=1&currency=usd&_method=GET",
    "control-character": "meta%0Ddata=1",
    "line-items-odd-indices": "line_items[00][price_data][unit_amount]=1&line_items[0][price_data][currency]=usd"
                              "&line_items[+1][quantity]=2&line_items[4294967296][price_data][unit_amount]=9",
    "large-amount": "amount=999999999999999&currency=usd",
    "too-large-amount": "amount=99999999999999999999999&currency=usd",
    "leading-zeros": "amount=0000002999&currency=usd",
    "negative-amount": "amount=-5&currency=usd",
}

TARGETS = [
    "/v1/charges", "/v1//charges/", "/v1/./charges", "/v1/charges/../refunds", "/v1/%63harges",
    "/v1/charges/%2e%2e/refunds", "/", "/v1/charges?limit=3&starting_after=ch_1",
    "/v1/customers/cus_1?expand[]=default_source", "/v1/charges%2F..%2Frefunds", "/v1/charges%5c",
    "/v1/%252e%252e/refunds", "/v1/charges%zz", "/v1/charges%2", "/v1/charges;x=1", "/v1/charges%3bx",
    "/../v1/charges", "v1/charges", "/v1/charges#x", "/v1/char ges", "/v1/charges%00", "/v1\\charges",
    "/V1/Charges", "/v1/charges/ch_1/../../..", "/v1/charges/ch_1/capture", "/v1/checkout/sessions",
    "/v1/payment_intents/pi_1/confirm?", "/v1/charges/%E2%82%AC", "/" + "a/" * 33,
]

SCOPES = [
    ("POST /v1/charges", "/v1/charges"),
    ("post /v1/charges", "/v1//charges/"),
    ("POST /v1/charges/*/capture", "/v1/charges/ch_1/capture"),
    ("GET /v1/charges/*", "/v1/charges/ch_123"),
    ("GET /v1/charges/*", "/v1/charges"),
    ("GET /v1/charges/*", "/v1/charges/ch_1/refunds"),
    ("POST /v1/refunds", "/v1/charges/../refunds"),
    ("DELETE /v1/customers/*", "/v1/customers/cus_1"),
    ("GET /admin/audit", "/admin/audit?limit=10"),
    ("GET /v1/customers", "/v1/%63ustomers?limit=3"),
    ("POST /v1/payment_intents/*/capture", "/v1/payment_intents/pi_1/capture"),
    ("GET /v2/core/events/*", "/v2/core/events/evt_1"),
    ("POST /v1/charges", "/V1/Charges"),
    ("PUT /v1/charges", "/v1/charges"),
    ("POST  /v1/charges", "/v1/charges"),
    ("POST /v1//charges", "/v1/charges"),
    ("POST /v1/../refunds", "/v1/refunds"),
    ("POST /v1/ch%61rges", "/v1/charges"),
    ("POST /v1/char*", "/v1/charges"),
    ("GET /", "/"),
    ("GET /v1/*/*/*", "/v1/a/b/c"),
]

FILTER_CONFIGS = {
    "empty": "",
    "whitespace": " \n\t",
    "local": '{"control_cluster": "keybrake_control"}',
    "istio": '{"control_cluster": "outbound|50051||keybrake-control.keybrake.svc.cluster.local"}',
    "dedup-test": '{"control_cluster": "keybrake_control", "audit_flush_interval_ms": 2000}',
    "full": json.dumps({
        "control_cluster": "keybrake_control",
        "routes": [{"prefix": "/stripe", "vendor": "stripe"}, {"prefix": "/api/stripe", "vendor": "stripe"}],
        "authorize_timeout_ms": 3000, "settle_timeout_ms": 5000, "max_request_body_bytes": 65536,
        "max_response_body_bytes": 65536, "audit_flush_interval_ms": 100, "audit_batch_size": 256,
        "audit_queue_limit": 20000}, indent=2),
    "limits-max": json.dumps({"authorize_timeout_ms": 60000, "settle_timeout_ms": 60000,
                              "max_request_body_bytes": 16777216, "max_response_body_bytes": 0,
                              "audit_batch_size": 10000, "audit_queue_limit": 10000000}),
    "unknown-field": '{"control_cluster": "x", "no_such_field": 1}',
    "zero-timeout": '{"authorize_timeout_ms": 0}',
    "huge-number": '{"max_request_body_bytes": 18446744073709551616}',
    "negative": '{"audit_batch_size": -1}',
    "float": '{"settle_timeout_ms": 1.5e3}',
    "bad-prefix": '{"routes": [{"prefix": "stripe", "vendor": "stripe"}]}',
    "trailing-slash": '{"routes": [{"prefix": "/stripe/", "vendor": "stripe"}]}',
    "other-vendor": '{"routes": [{"prefix": "/x", "vendor": "paypal"}]}',
    "no-routes": '{"routes": []}',
    "empty-cluster": '{"control_cluster": ""}',
    "truncated": '{"control_cluster": "keybrake',
    "not-object": '["control_cluster"]',
    "null": "null",
    "duplicate-field": '{"control_cluster": "a", "control_cluster": "b"}',
    "escapes": '{"control_cluster": "k\\u00e9y\\ud83d\\ude00", "routes": [{"prefix": "/\\u0073tripe", "vendor": "stripe"}]}',
    "deep": "[" * 200 + "]" * 200,
}

SDK_HEADERS = [
    ("user-agent", "Stripe/v1 PythonBindings/16.1.0"),
    ("stripe-version", "2025-10-29.clover"),
    ("x-stripe-client-user-agent", '{"bindings_version": "16.1.0", "lang": "python", "publisher": "stripe"}'),
]


def request(method, path, auth, body=b"", extra=(), config=None):
    lines = []
    if config is not None:
        lines.append("#config " + config)
    lines += [f":method: {method}", f":path: {path}", ":authority: 127.0.0.1:10000", ":scheme: http"]
    if auth is not None:
        lines.append(f"authorization: {auth}")
    lines += [f"{k}: {v}" for k, v in extra]
    if isinstance(body, str):
        body = body.encode()
    return ("\n".join(lines) + "\n\n").encode() + body


def request_seeds():
    form = [("content-type", "application/x-www-form-urlencoded")]
    charge = sdk(SDK_CALLS["charge-create"][1])
    seeds = {
        "sdk-charge": request("POST", "/stripe/v1/charges", "Bearer {vk}", charge,
                              SDK_HEADERS + form + [("idempotency-key", "3b7e1c4a-6f0e-4b8c-9a7d-2d1f0e6c5b4a")]),
        "curl-basic-charge": request("POST", "/stripe/v1/charges", "Basic {vk-basic}", charge,
                                     [("content-type", "application/x-www-form-urlencoded; charset=utf-8")]),
        "get-charge": request("GET", "/stripe/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15", "Bearer {vk}"),
        "list-with-query": request("GET", "/stripe/v1/charges?limit=3&starting_after=ch_1&expand[]=data.customer",
                                   "bearer {vk}"),
        "delete-customer": request("DELETE", "/stripe/v1/customers/cus_1", "Bearer {vk}"),
        "connect-account": request("POST", "/stripe/v1/transfers", "Bearer {vk}", sdk(SDK_CALLS["transfer"][1]),
                                   form + [("stripe-account", "acct_1032D82eZvKYlo2C")]),
        "lowercase-method": request("post", "/stripe/v1//charges/", "Bearer {vk}", "amount=100&currency=usd", form),
        "checkout": request("POST", "/stripe/v1/checkout/sessions", "Bearer {vk}",
                            sdk(SDK_CALLS["checkout-session"][1]), form),
        "confirm-pi": request("POST", "/stripe/v1/payment_intents/pi_1/confirm", "Bearer {vk}", "", form),
        "dot-segments": request("GET", "/stripe/v1/charges/%2e%2e/refunds", "Bearer {vk}"),
        "multi-route-config": request("GET", "/api/stripe/v1/balance", "Bearer {vk}",
                                      config=FILTER_CONFIGS["full"].replace("\n", "")),
        # Refusals.
        "missing-key": request("POST", "/stripe/v1/charges", None, "amount=1&currency=usd", form),
        "two-keys": request("GET", "/stripe/v1/charges", "Bearer {vk}", extra=[("Authorization", "Bearer {vk}")]),
        "secret-key": request("GET", "/stripe/v1/charges", "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
        "basic-with-password": request("GET", "/stripe/v1/charges", "Basic dmtfYWJjOnNlY3JldA=="),
        "key-in-query": request("GET", "/stripe/v1/charges?key=vk_abc", "Bearer {vk}"),
        "method-override": request("POST", "/stripe/v1/charges", "Bearer {vk}", "amount=1&currency=usd",
                                   form + [("x-http-method-override", "GET")]),
        "query-on-post": request("POST", "/stripe/v1/charges?amount=1", "Bearer {vk}", "currency=usd", form),
        "json-body": request("POST", "/stripe/v1/charges", "Bearer {vk}", '{"amount": 1}',
                             [("content-type", "application/json")]),
        "get-with-body": request("GET", "/stripe/v1/charges", "Bearer {vk}", "x=1"),
        "head": request("HEAD", "/stripe/v1/charges", "Bearer {vk}"),
        "repeated-idempotency-key": request("POST", "/stripe/v1/charges", "Bearer {vk}", "amount=1&currency=usd",
                                            form + [("idempotency-key", "a"), ("Idempotency-Key", "b")]),
        "long-idempotency-key": request("POST", "/stripe/v1/charges", "Bearer {vk}", "amount=1&currency=usd",
                                        form + [("idempotency-key", "k" * 300)]),
        "duplicate-param": request("POST", "/stripe/v1/charges", "Bearer {vk}",
                                   "amount=1&currency=usd&amount=100000", form),
        "not-a-vendor-route": request("GET", "/admin/vault_keys", "Bearer {vk}"),
    }
    return seeds


ADMIN = {
    "readme": {"label": "ray-billing-cus_123", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
               "daily_usd_cap": 32.99, "expires_in_seconds": 3600},
    "all-fields": {"label": "kestra-flow-42", "vendor": "stripe",
                   "allowed_endpoints": ["POST /v1/charges", "GET /v1/charges/*", "POST /v1/charges/*/capture",
                                         "post /v1/refunds"],
                   "daily_usd_cap": "1000.000001", "expires_in_seconds": 2592000,
                   "max_amount_per_call_usd": "50", "allow_unpriced_calls": True, "dedup": "idempotency_key",
                   "dedup_window_seconds": 604800, "allowed_accounts": ["acct_1032D82eZvKYlo2C"]},
    "audit-key": {"label": "preflight-audit", "vendor": "keybrake", "allowed_endpoints": ["GET /admin/audit"],
                  "expires_in_seconds": 60},
    "audit-key-wrong-scope": {"label": "x", "vendor": "keybrake", "allowed_endpoints": ["GET /admin/vault_keys"],
                              "expires_in_seconds": 60},
    "null-cap": {"label": "no-cap", "vendor": "stripe", "allowed_endpoints": ["GET /v1/balance"],
                 "daily_usd_cap": None, "expires_in_seconds": 1},
    "negative-cap": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                     "daily_usd_cap": -1, "expires_in_seconds": 3600},
    "exponent-cap": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                     "daily_usd_cap": 1e3, "expires_in_seconds": 3600},
    "fractional-ttl": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                       "expires_in_seconds": 1.5},
    "bad-scope": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["FETCH /v1/charges"],
                  "expires_in_seconds": 3600},
    "unknown-field": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                      "expires_in_seconds": 3600, "surprise": 1},
    "blank-label": {"label": "  ", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                    "expires_in_seconds": 3600},
    "bad-account": {"label": "x", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                    "expires_in_seconds": 3600, "allowed_accounts": ["cus_1"]},
}

FX = {
    "tests": {"as_of": "2026-11-26", "rates": {"jpy": "0.0067", "kwd": 3.25, "isk": "0.0072"}},
    "eur-number": {"as_of": "2026-11-26", "rates": {"eur": 1.08, "GBP": "1.27"}},
    "negative": {"as_of": "2026-11-26", "rates": {"eur": -1}},
    "usd": {"as_of": "2026-11-26", "rates": {"usd": "1"}},
    "bad-date": {"as_of": "2026-02-30", "rates": {"eur": "1.08"}},
    "empty-rates": {"as_of": "2026-11-26", "rates": {}},
    "huge-rate": {"as_of": "2026-11-26", "rates": {"kwd": "999999999999999999.999999999999"}},
    "too-precise": {"as_of": "2026-11-26", "rates": {"jpy": "0.0000000000001"}},
}


def money_seeds():
    texts = ["32.99", "1000", "0.000001", "-1", "1e3", "1.", ".5", "0.0000001", "99999999999999999999",
             "0.0067", "0.333333333333", "000000000000000000000001.5", "1.2.3", "", "+1", " 1",
             "999999999999999999.999999999999", "USD", "jpy", "kwd", "ugx", "isk", "u$d", "usdx"]
    seeds = {"text-lines": b"t" + "\n".join(texts).encode()}
    # (mode, amount, exponent index, rate text); exponent index: 0 -> 0, 1 -> 2, 2 -> 3.
    conversions = {
        "usd-2999": (2999, 1, "1"),
        "jpy-1000": (1000, 0, "0.0067"),
        "kwd-1250": (1250, 2, "3.25"),
        "third": (100, 1, "0.333333333333"),
        "max-minor": (2**63 - 1, 1, "1"),
        "max-rate": (999_999_999_999_999, 2, "999999999999999999.999999999999"),
        "negative": (-1, 1, "1"),
    }
    for name, (minor, exp, rate) in conversions.items():
        seeds["convert-" + name] = b"c" + struct.pack("<q", minor) + bytes([exp]) + rate.encode()
    return seeds


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for name, (path, params) in SDK_CALLS.items():
        body = sdk(params)
        write("form_body", "sdk-" + name, body)
        write("pricing", "sdk-" + name, f"POST {path}\n{body}")
    for name, body in RAW_BODIES.items():
        write("form_body", name, body)
        write("pricing", name, f"POST /v1/charges\n{body}")
    write("pricing", "get-charge", "GET /v1/charges/ch_1\n")
    write("pricing", "delete-customer", "DELETE /v1/customers/cus_1\n")
    write("pricing", "unnormalised-path", "POST /v1//charges/./\namount=100&currency=usd")
    write("pricing", "mixed-currencies",
          "POST /v1/checkout/sessions\nline_items[0][price_data][unit_amount]=1&line_items[0][price_data][currency]=usd"
          "&line_items[1][price_data][unit_amount]=1&line_items[1][price_data][currency]=eur")
    for i, t in enumerate(TARGETS):
        write("path_scope", f"target-{i:02}", "\n" + t)
    for i, (scope, t) in enumerate(SCOPES):
        write("path_scope", f"scope-{i:02}", f"{scope}\n{t}")
    for name, text in FILTER_CONFIGS.items():
        write("filter_config", name, text)
    for name, data in request_seeds().items():
        write("request_headers", name, data)
    for name, body in ADMIN.items():
        write("admin_requests", "key-" + name, json.dumps(body))
    write("admin_requests", "key-number-ttl-exponent",
          '{"label":"x","vendor":"stripe","allowed_endpoints":["POST /v1/charges"],"expires_in_seconds":3.6e3}')
    write("admin_requests", "key-big-number",
          '{"label":"x","vendor":"stripe","allowed_endpoints":["POST /v1/charges"],'
          '"daily_usd_cap":123456789012345678901234567890.5,"expires_in_seconds":18446744073709551616}')
    for name, body in FX.items():
        write("admin_requests", "fx-" + name, json.dumps(body))
    for name, data in money_seeds().items():
        write("money", name, data)


if __name__ == "__main__":
    sys.exit(main())
