"""The parser-differential oracle: bodies sent through the real gateway to a
deliberately lenient Stripe stand-in (JSON-first whatever the Content-Type,
gzip/deflate inflated, the declared charset, ';' as a separator, the last of
repeated parameters, booleans in any case, numbers with signs, spaces,
underscores, exponents or other scripts' digits).

For every body, one of two things must hold:
  - it was refused: nothing reached the upstream, the client got a Stripe-shaped
    4xx, and the refusal is in the audit log; or
  - the upstream's reading of amount, currency, confirmation and account is
    exactly what the gateway priced (its audit intent row).
A hand-written corpus (over 100 bodies) and generated ones (hypothesis,
derandomized: the same bodies every run) go through the same check. The
gateway forwards its own re-encoding of what it priced, so no body can make
the two readings differ; this test is what shows it."""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from support.stack import Stack

FORM = "application/x-www-form-urlencoded"
UNCONFIRMED = ("requires_payment_method", "requires_confirmation", "canceled")
ACCT = "acct_1DiffAAAAAAAAAAAAAA"


@dataclass(frozen=True)
class Body:
    id: str
    path: str  # /v1/charges or /v1/payment_intents
    body: bytes
    content_type: str | None = FORM
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def form(**kw) -> bytes:
    return "&".join(f"{k}={v}" for k, v in kw.items()).encode()


def corpus() -> list[Body]:
    out: list[Body] = []
    charge, intent = "/v1/charges", "/v1/payment_intents"
    big = "100000"

    def add(i: str, path: str, body: bytes | str, content_type: str | None = FORM, *headers: tuple[str, str]):
        out.append(Body(i, path, body.encode() if isinstance(body, str) else body, content_type, tuple(headers)))

    # Baselines that must go through, read alike.
    add("plain-charge", charge, "amount=100&currency=usd")
    add("charge-with-metadata", charge, "amount=250&currency=usd&metadata[order]=o-1&description=tea+for+two")
    add("charge-charset-utf8", charge, "amount=100&currency=usd", FORM + "; charset=utf-8")
    add("charge-charset-quoted", charge, "amount=100&currency=usd", FORM + '; charset="UTF-8"')
    add("charge-eur", charge, "amount=100&currency=eur")
    add("charge-jpy", charge, "amount=1000&currency=jpy")
    add("charge-upper-currency", charge, "amount=100&currency=USD")
    add("charge-uncaptured", charge, "amount=100&currency=usd&capture=false")
    add("charge-expand", charge, "amount=100&currency=usd&expand[]=customer&expand[]=balance_transaction")
    add("charge-trailing-amp", charge, "amount=100&currency=usd&")
    add("charge-empty-pairs", charge, "&&amount=100&&currency=usd")
    add("charge-plus-space", charge, "amount=100&currency=usd&description=a+b+c")
    add("charge-newline-value", charge, "amount=100&currency=usd&description=line1%0Aline2")
    add("charge-encoded-name", charge, "%61mount=100&currency=usd")
    add("charge-encoded-brackets", charge, "amount=100&currency=usd&metadata%5Bk%5D=v")
    add("charge-semicolon-in-value", charge, f"description=x%3Bamount%3D{big}&amount=100&currency=usd")
    add("charge-ampersand-in-value", charge, f"description=x%26amount%3D{big}&amount=100&currency=usd")
    add("charge-equals-in-value", charge, "amount=100&currency=usd&description=a%3Db")
    add("charge-unicode-value", charge, "amount=100&currency=usd&description=caf%C3%A9")
    add("intent-unconfirmed", intent, "amount=500&currency=usd")
    add("intent-confirm-false", intent, "amount=500&currency=usd&confirm=false")
    add("intent-confirmed", intent, "amount=500&currency=usd&confirm=true&payment_method=pm_card_visa")
    add("intent-manual-capture", intent,
        "amount=500&currency=usd&confirm=true&capture_method=manual&payment_method=pm_card_visa")
    add("charge-account", charge, "amount=100&currency=usd", FORM, ("Stripe-Account", ACCT))
    add("charge-context", charge, "amount=100&currency=usd", FORM, ("Stripe-Context", ACCT))
    add("charge-account-and-context", charge, "amount=100&currency=usd", FORM,
        ("Stripe-Account", ACCT), ("Stripe-Context", ACCT))

    # A JSON document, under every content type (a lenient upstream reads the JSON).
    doc = json.dumps({"amount": int(big), "currency": "usd", "x": "a=1&amount=1&currency=usd"})
    add("json-under-form", charge, doc)
    add("json-under-form-utf8", charge, doc, FORM + "; charset=utf-8")
    add("json-under-json", charge, doc, "application/json")
    add("json-under-text", charge, doc, "text/plain")
    add("json-no-content-type", charge, doc, None)
    add("json-array", charge, json.dumps([{"amount": int(big)}]))
    add("json-padded", charge, "  \n" + doc)
    add("json-with-form-tail", charge, doc + "&amount=1&currency=usd")
    add("form-hidden-in-json-key", charge, '{"amount=1&currency=usd&x": "' + big + '"}')
    add("form-under-json", charge, "amount=100&currency=usd", "application/json")
    add("form-under-text", charge, "amount=100&currency=usd", "text/plain")
    add("form-under-multipart", charge, "amount=100&currency=usd", "multipart/form-data; boundary=x")
    add("form-under-form-suffix", charge, "amount=100&currency=usd", FORM + "x")
    add("form-two-content-types", charge, "amount=100&currency=usd", FORM + ", application/json")
    add("intent-json-confirm", intent, json.dumps({"amount": 500, "currency": "usd", "confirm": True,
                                                   "payment_method": "pm_card_visa"}))

    # Bodies that inflate into something else.
    inner = form(amount=big, currency="usd").decode()
    outer = form(amount="1", currency="usd")
    add("deflate", charge, zlib.compress(inner.encode()), FORM, ("Content-Encoding", "deflate"))
    add("gzip", charge, gzip.compress(inner.encode()), FORM, ("Content-Encoding", "gzip"))
    add("gzip-upper", charge, gzip.compress(inner.encode()), FORM, ("Content-Encoding", "GZIP"))
    add("raw-deflate", charge, zlib.compress(inner.encode())[2:-4], FORM, ("Content-Encoding", "deflate"))
    add("gzip-plain-body", charge, outer, FORM, ("Content-Encoding", "gzip"))
    add("br-plain-body", charge, outer, FORM, ("Content-Encoding", "br"))
    add("identity", charge, outer, FORM, ("Content-Encoding", "identity"))
    add("encoding-list", charge, gzip.compress(inner.encode()), FORM, ("Content-Encoding", "identity, gzip"))

    # Charsets the gateway does not read.
    add("charset-utf16", charge, inner.encode("utf-16"), FORM + "; charset=utf-16")
    add("charset-latin1", charge, "amount=100&currency=usd&description=caf\xe9".encode("latin-1"),
        FORM + "; charset=iso-8859-1")
    add("charset-utf16-ascii-body", charge, outer, FORM + "; charset=utf-16")
    add("charset-unknown", charge, outer, FORM + "; charset=x-unknown")
    add("charset-empty", charge, outer, FORM + "; charset=")
    add("extra-media-param", charge, outer, FORM + "; boundary=x")
    add("invalid-utf8", charge, b"amount=100&currency=usd&description=%FF%FE")
    add("bom", charge, b"\xef\xbb\xbf" + outer)

    # One name, two shapes.
    for i, body in enumerate([
        f"amount=1&amount[]={big}&currency=usd", f"amount[]={big}&amount=1&currency=usd",
        f"amount=1&amount[0]={big}&currency=usd", f"amount=1&amount[x]={big}&currency=usd",
        f"amount[x]={big}&amount=1&currency=usd", f"currency=usd&currency[]=eur&amount=1",
        f"amount=1&currency=usd&metadata=x&metadata[k]=v", "amount=1&currency=usd&expand=a&expand[]=b",
        f"amount=1&currency=usd&items[0]=a&items[x]=b", f"amount=1&currency=usd&items[]=a&items[0]=b",
    ]):
        add(f"two-shapes-{i}", charge, body)
    add("intent-confirm-two-shapes", intent, "amount=500&currency=usd&confirm=false&confirm[]=true")

    # Repeated names (the last one wins upstream).
    for i, body in enumerate([
        f"amount=1&amount={big}&currency=usd", f"amount=1&currency=usd&amount={big}",
        f"amount=1&currency=usd&currency=eur", f"amount=1&currency=usd;amount={big}",
        f"amount=1;amount={big}&currency=usd", "amount=1&amount=1&currency=usd",
        f"amount=1&currency=usd&%61mount={big}", f"amount=1&currency=usd&amount%3D{big}",
    ]):
        add(f"repeated-{i}", charge, body)
    add("intent-confirm-repeated", intent, "amount=500&currency=usd&confirm=false&confirm=true&payment_method=pm_card_visa")

    # Names outside Stripe's grammar.
    for i, name in enumerate(["am ount", "amount.x", "a.b", "amount[", "amount]", "amount[x", "[amount]",
                              "amount[][x]", "amount[x]y", "amount[x.y]", "amount%00", "amount[%00]",
                              "amount%20", "%20amount", "ámount", "amount[x][y][z][a][b][c][d][e][f]"]):
        add(f"bad-name-{i}", charge, f"{name}={big}&amount=1&currency=usd")
    add("sparse-index", charge, f"amount=1&currency=usd&items[0]=a&items[2]={big}")
    add("leading-zero-index", charge, f"amount=1&currency=usd&items[0]=a&items[01]={big}")

    # Amounts read one way only.
    for i, amount in enumerate(["0100", "%20100", "100%20", "+100", "1_000", "%EF%BC%91%EF%BC%90%EF%BC%90", "1e5",
                                "100.0", "0x64", "100%00", "-100", "", "1" * 20, "%31%30%30", "10%2C000"]):
        add(f"amount-{i}", charge, f"amount={amount}&currency=usd")
    for i, currency in enumerate(["usd%20", "%20usd", "us%20d", "xxx", "US%C2%A0", "u", "usdd", ""]):
        add(f"currency-{i}", charge, f"amount=100&currency={currency}")

    # Booleans that price a call.
    for i, value in enumerate(["True", "TRUE", "1", "yes", "on", "t", "", "true%20", "%74rue", "True%00"]):
        add(f"confirm-{i}", intent, f"amount=500&currency=usd&confirm={value}&payment_method=pm_card_visa")
    add("confirm-bare", intent, "amount=500&currency=usd&confirm&payment_method=pm_card_visa")
    add("confirm-false-upper", intent, "amount=500&currency=usd&confirm=FALSE&payment_method=pm_card_visa")

    # Account headers.
    for i, value in enumerate([ACCT.upper(), f"{ACCT}.x", f"{ACCT},acct_1Other", "acct_", "acct_1%41", "x"]):
        add(f"account-{i}", charge, "amount=100&currency=usd", FORM, ("Stripe-Account", value))
    add("account-context-differ", charge, "amount=100&currency=usd", FORM,
        ("Stripe-Account", ACCT), ("Stripe-Context", "acct_1Other"))

    # Headers a lenient server might honour instead of the request line.
    add("original-url", charge, "amount=100&currency=usd", FORM, ("X-Original-URL", "/v1/payouts"))
    add("rewrite-url", charge, "amount=100&currency=usd", FORM, ("X-Rewrite-URL", "/v1/payouts"))
    add("method-override", charge, "amount=100&currency=usd", FORM, ("X-HTTP-Method-Override", "PUT"))
    return out


CORPUS = corpus()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory) -> Stack:
    s = Stack(tmp_path_factory.mktemp("lenient"), upstream_args=["--lenient"]).start()
    r = s.admin("PUT", "/admin/fx_rates", {"as_of": "2026-12-01", "rates": {"eur": "1.08", "jpy": "0.0067"}})
    assert r.status_code == 200, r.text
    yield s
    s.stop()


def check(s: Stack, case: Body) -> str:
    """Sends one body through the gateway and checks the oracle; returns what happened."""
    key = s.issue_key(label=f"diff-{case.id}", allowed_endpoints=[f"POST {case.path}"], daily_usd_cap=10_000_000,
                      dedup="idempotency_key")
    marker = f"diff/{case.id}/{key['id']}"  # the upstream's record of this very request
    headers = {"Authorization": f"Bearer {key['vault_key']}", "User-Agent": marker}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    headers.update(dict(case.headers))
    r = httpx.post(f"{s.url}/stripe{case.path}", content=case.body, headers=headers, timeout=30)
    seen = [rec for rec in s.upstream_requests(method="POST", path=case.path)
            if rec["headers"].get("user-agent") == marker]
    rows = s.audit(key_id=key["id"])
    shown = s.admin("GET", f"/admin/vault_keys/{key['id']}").json()
    assert shown["state"] != "suspended", \
        f"{case.id}: the gateway found that more moved than it priced: {[r for r in rows if r['stage'] == 'reconcile']}"
    if not seen:
        assert 400 <= r.status_code < 500, f"{case.id}: nothing forwarded, yet {r.status_code}: {r.text[:300]}"
        error = r.json()["error"]
        assert {"type", "code", "message"} <= set(error), f"{case.id}: not Stripe-shaped: {r.text[:300]}"
        # Refusals the filter makes itself reach the audit log in its next batch.
        denied = s.wait_audit(lambda found: any(row["decision"] == "denied" for row in found), key_id=key["id"])
        assert error["code"] in [row["reason"] for row in denied], f"{case.id}: audited as {denied}"
        return f"refused {error['code']}"
    assert len(seen) == 1, f"{case.id}: forwarded {len(seen)} times"
    upstream = seen[0]
    intent = [row for row in rows if row["stage"] == "intent"]
    assert len(intent) == 1, f"{case.id}: a forwarded call without its one intent row: {rows}"
    priced = intent[0]
    assert upstream["headers"].get("stripe-account", "") == (case_header(case, "Stripe-Account") or ""), case.id
    assert upstream["headers"].get("stripe-context", "") == (case_header(case, "Stripe-Context") or ""), case.id
    for leaked in ("x-original-url", "x-rewrite-url", "x-http-method-override", "content-encoding"):
        assert leaked not in upstream["headers"], f"{case.id}: {leaked} reached the upstream"
    answer = upstream.get("answer")
    if answer is None:
        # The upstream refused what it read: nothing moved, whatever it read.
        assert upstream["status"] and upstream["status"] >= 400, f"{case.id}: {upstream}"
        return f"forwarded, refused upstream {upstream['status']}"
    if case.path == "/v1/payment_intents":
        confirmed = answer["status"] not in UNCONFIRMED
        assert confirmed == (priced["amount"] is not None), \
            f"{case.id}: upstream read confirm={confirmed}, gateway priced {priced['amount']} {priced['currency']}"
        if not confirmed:
            return "forwarded, unconfirmed, priced free"
    assert (answer["amount"], answer["currency"]) == (priced["amount"], priced["currency"]), \
        f"{case.id}: upstream moved {answer['amount']} {answer['currency']}, gateway priced " \
        f"{priced['amount']} {priced['currency']} (sent {case.body[:120]!r}, forwarded {upstream['body'][:120]!r})"
    return "forwarded, read alike"


def case_header(case: Body, name: str) -> str | None:
    return next((v for k, v in case.headers if k.lower() == name.lower()), None)


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CORPUS) >= 100
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_a_lenient_upstream_reads_what_was_priced_or_nothing_reaches_it(lenient: Stack, case: Body):
    check(lenient, case)


def test_the_corpus_exercises_both_outcomes(lenient: Stack):
    """Guard against an oracle that passes by refusing everything (or nothing)."""
    by_id = {c.id: c for c in CORPUS}
    outcome = {i: check(lenient, by_id[i]) for i in (
        "plain-charge", "intent-confirmed", "intent-unconfirmed", "json-under-form", "deflate", "two-shapes-0",
        "repeated-0", "confirm-0")}
    assert outcome.pop("plain-charge") == outcome.pop("intent-confirmed") == "forwarded, read alike"
    assert outcome.pop("intent-unconfirmed") == "forwarded, unconfirmed, priced free"
    assert all(o.startswith("refused") for o in outcome.values()), outcome


# Generated bodies: random pairs from names, values and separators that
# frameworks read differently, under random content types and encodings.
NAMES = ["amount", "currency", "confirm", "capture", "description", "metadata[k]", "amount[]", "amount[0]",
         "amount[x]", "currency[]", "%61mount", "amount%5B%5D", "a.b", "am ount", "payment_method", "expand[]",
         "items[0]", "items[1]", "items[x]"]
VALUES = ["100", "1", "100000", "0100", " 100", "+100", "1_000", "1e5", "usd", "USD", "eur", "jpy", "true", "True",
          "1", "yes", "false", "pm_card_visa", "x%26amount%3D100000", "a;amount=100000", "%FF", "", "caf%C3%A9"]
SEPARATORS = ["&", "&", "&", ";", "&&"]
CONTENT_TYPES = [FORM, FORM, FORM + "; charset=utf-8", FORM + "; charset=utf-16", "application/json", "text/plain",
                 None]
ENCODINGS = [None, None, None, "gzip", "deflate", "identity"]


@st.composite
def generated(draw) -> Body:
    pairs = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), min_size=1, max_size=8))
    if draw(st.booleans()):
        pairs = [("amount", draw(st.sampled_from(["100", "250", "1000"]))), ("currency", "usd"), *pairs]
    text = ""
    for i, (k, v) in enumerate(pairs):
        text += (draw(st.sampled_from(SEPARATORS)) if i else "") + (f"{k}={v}" if v or draw(st.booleans()) else k)
    if draw(st.integers(0, 9)) == 0:
        text = json.dumps(dict((k, v) for k, v in pairs))
    body = text.encode()
    encoding = draw(st.sampled_from(ENCODINGS))
    headers: tuple[tuple[str, str], ...] = ()
    if encoding == "gzip":
        body, headers = gzip.compress(body), (("Content-Encoding", "gzip"),)
    elif encoding == "deflate":
        body, headers = zlib.compress(body), (("Content-Encoding", "deflate"),)
    elif encoding == "identity":
        headers = (("Content-Encoding", "identity"),)
    path = draw(st.sampled_from(["/v1/charges", "/v1/payment_intents"]))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    digest = hashlib.sha256(repr((body, headers, path, content_type)).encode()).hexdigest()[:16]
    return Body(f"gen-{digest}", path, body, content_type, headers)


@hypothesis.settings(max_examples=150, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(case=generated())
def test_generated_bodies_are_read_alike_or_refused(lenient: Stack, case: Body):
    check(lenient, case)
