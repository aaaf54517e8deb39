"""The scope-bypass corpus: crafted requests against vault keys with narrow
scopes, each with the verdict the gateway must reach.

Every case is plain data: how to send it (protocol, method, the raw request
target, the header list — names may repeat —, the body) and what must happen:

* ``Forward(method, target)``: the request reaches the upstream, exactly as
  this method and canonical ``path[?query]`` (the form the upstream stand-in
  records), with the real key;
* ``Refuse(status, code)``: it never reaches the upstream, and the client
  gets ``status`` (``None``: no HTTP response at all, e.g. an HTTP/2 stream
  reset) with Stripe-shaped ``error.code`` ``code`` when the gateway (the
  filter, the control service or the admin API) answers; ``code=None`` when
  Envoy answers by itself before the filter runs (400/404/413/431), or for
  HEAD (no body).

The keys the cases run against (issued by the test, see ``KEYS``):

* ``scoped``: ``POST /v1/charges`` and ``GET /v1/charges/*``;
* ``acct``: the same scopes with ``allowed_accounts`` (``ACCOUNTS``);
* ``acctself``: the same with one account and ``"self"`` (the platform's own account);
* ``wild``: ``POST /v1/charges/*/capture`` and ``GET /v1/customers/*/sources``,
  no cap: a wildcard followed by a literal, where a segment that turns into
  something else on the way upstream would reach another endpoint.

Placeholders, replaced by the test when sending (in the target, header values
and body): ``$VK`` the case's vault key; ``$VK_BASIC`` base64 of ``$VK:``;
``$VK_BASIC_NOCOLON`` base64 of ``$VK``; ``$VK_BASIC_PW`` base64 of
``$VK:secret``; ``$VK_BASIC_PWONLY`` base64 of ``:$VK``; ``$VK_TYPO`` the key
with one character changed (checksum fails); ``$VK_PCT`` the key
percent-encoded character by character; ``$VK_PCT1`` the key with only its
``v`` percent-encoded; ``$OTHER_VK`` another live key's secret; ``$REAL`` the
real Stripe key; ``$PORT`` the gateway's port.

Families are generated systematically (every encoding variant at every
position, every protocol); a case id reads ``family/variant/protocol``.
Cases are sent one at a time, each on its own connection.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import quote

KEYS: dict[str, dict] = {
    "scoped": {"allowed_endpoints": ["POST /v1/charges", "GET /v1/charges/*"], "daily_usd_cap": 1000},
    "acct": {
        "allowed_endpoints": ["POST /v1/charges", "GET /v1/charges/*"],
        "daily_usd_cap": 1000,
        "allowed_accounts": ["acct_1AllowedAAAAAAAAA", "acct_1AllowedBBBBBBBBB"],
    },
    "wild": {"allowed_endpoints": ["POST /v1/charges/*/capture", "GET /v1/customers/*/sources"]},
}
KEYS["acctself"] = {**KEYS["acct"], "allowed_accounts": ["acct_1AllowedAAAAAAAAA", "self"]}
ACCOUNTS = KEYS["acct"]["allowed_accounts"]
ACCT_A, ACCT_B = ACCOUNTS
ACCT_EVIL = "acct_1EvilCCCCCCCCCCCCC"

PROTOCOLS = ("h1", "h2")
CASE_HEADER = "user-agent"  # set to the case id on every request, to find it in the upstream's log (the gateway forwards it)


@dataclass(frozen=True)
class Forward:
    method: str
    target: str  # path[?query], as the upstream must receive it

    def __str__(self) -> str:
        return f"forward {self.method} {self.target}"


@dataclass(frozen=True)
class Refuse:
    status: int | None
    code: str | None = None

    def __str__(self) -> str:
        return f"refuse {self.status or 'without a response'}{' ' + self.code if self.code else ''}"


@dataclass(frozen=True)
class Case:
    id: str
    tries: str
    protocol: str  # "h1" or "h2"
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    expect: Forward | Refuse
    key: str = "scoped"
    version: str = "HTTP/1.1"  # HTTP/1.x request-line version
    # HTTP/2 only: the whole header block (pseudo-headers included) instead of
    # the one built from method, target and headers.
    h2_block: tuple[tuple[str, str], ...] | None = None
    # HTTP/1.1 only: send exactly `headers` (no Host, Content-Length added).
    raw_headers: bool = False
    note: str = ""


# --------------------------------------------------------------------------
# Building blocks

BEARER = (("Authorization", "Bearer $VK"),)
FORM = (("Content-Type", "application/x-www-form-urlencoded"),)

# Verdicts used over and over.
PATH_INVALID = Refuse(400, "path_invalid")
NOT_ALLOWED = Refuse(403, "endpoint_not_allowed")
METHOD_NOT_ALLOWED = Refuse(403, "method_not_allowed")
OVERRIDE = Refuse(400, "method_override_refused")
# A query is read like a form body (strict names, one shape per name) before the scope is decided.
QUERY_MALFORMED = Refuse(400, "query_malformed")
# Account headers must be account ids, and agree with each other, or nothing is decided on them.
ACCOUNT_INVALID = Refuse(400, "account_header_invalid")
AMBIGUOUS = Refuse(400, "credentials_ambiguous")
ENVOY_400 = Refuse(400)
ENVOY_404 = Refuse(404)  # no route: the filter never sees it, nothing goes upstream
ENVOY_431 = Refuse(431)
NO_RESPONSE = Refuse(None)
POST_CHARGES = Forward("POST", "/v1/charges")


def get_charge(charge: str = "ch_1") -> Forward:
    return Forward("GET", f"/v1/charges/{charge}")


def charge_body(case_id: str, extra: str = "") -> bytes:
    """A small priced charge, unique per case (the gateway de-duplicates identical charges)."""
    return f"amount=100&currency=usd&description={quote(case_id, safe='')}{extra}".encode()


def _case(family: str, variant: str, protocol: str, method: str, target: str, expect: Forward | Refuse, *,
          tries: str, headers: tuple | None = None, body: bytes | None = None, body_extra: str = "",
          key: str = "scoped", **kw) -> Case:
    case_id = f"{family}/{variant}/{protocol}"
    if body is None:
        body = charge_body(case_id, body_extra) if method.upper() == "POST" else b""
    if headers is None:
        headers = BEARER + (FORM if body else ())
    return Case(case_id, tries, protocol, method, target, tuple(headers), body, expect, key=key, **kw)


def both(family: str, variant: str, method: str, target: str, expect: Forward | Refuse, *,
         expect_h2: Forward | Refuse | None = None, **kw) -> list[Case]:
    """The same request over HTTP/1.1 and HTTP/2."""
    return [
        _case(family, variant, "h1", method, target, expect, **kw),
        _case(family, variant, "h2", method, target, expect_h2 or expect, **kw),
    ]


def h1_only(family: str, variant: str, method: str, target: str, expect: Forward | Refuse, **kw) -> list[Case]:
    return [_case(family, variant, "h1", method, target, expect, **kw)]


def h2_only(family: str, variant: str, method: str, target: str, expect: Forward | Refuse, **kw) -> list[Case]:
    return [_case(family, variant, "h2", method, target, expect, **kw)]


# --------------------------------------------------------------------------
# Families


def baseline() -> list[Case]:
    """Plain requests: the two in scope go through, everything else is 403."""
    out = []
    out += both("baseline", "post-charges", "POST", "/stripe/v1/charges", POST_CHARGES, tries="the scope itself")
    out += both("baseline", "get-charge", "GET", "/stripe/v1/charges/ch_1", get_charge(), tries="the wildcard scope")
    for variant, method, target in [
        ("post-refunds", "POST", "/stripe/v1/refunds"),
        ("get-charges-list", "GET", "/stripe/v1/charges"),
        ("delete-charge", "DELETE", "/stripe/v1/charges/ch_1"),
        ("get-customer", "GET", "/stripe/v1/customers/cus_1"),
        ("post-charge-update", "POST", "/stripe/v1/charges/ch_1"),
        ("post-charge-capture", "POST", "/stripe/v1/charges/ch_1/capture"),
        ("get-charge-refunds", "GET", "/stripe/v1/charges/ch_1/refunds"),
    ]:
        out += both("baseline", variant, method, target, NOT_ALLOWED, tries="an endpoint outside the scope")
    return out


# Ways to write "/" or "\" that some server might take for a separator.
SLASH_ENCODINGS = {
    "pct2f": "%2f", "pct2F": "%2F", "double-2f": "%252f", "triple-2f": "%25252f",
    "pct5c": "%5c", "pct5C": "%5C", "overlong-c0af": "%c0%af", "fullwidth-efbc8f": "%ef%bc%8f",
}


def encoded_separators() -> list[Case]:
    """Every encoded slash at every position: refused outright (never decoded into a separator)."""
    out = []
    for name, enc in SLASH_ENCODINGS.items():
        positions = [
            ("v1-charges", "POST", f"/stripe/v1{enc}charges", "an encoded separator inside the scoped path"),
            ("charges-id", "GET", f"/stripe/v1/charges{enc}ch_1", "an encoded separator before the id"),
            ("climb-to-refunds", "POST", f"/stripe/v1/charges{enc}..{enc}refunds",
             "an encoded separator with '..' to climb out of /v1/charges"),
            ("escape-route", "GET", f"/stripe/v1{enc}..{enc}..{enc}admin{enc}vault_keys",
             "encoded separators to climb out of the /stripe route"),
        ]
        for pos, method, target, tries in positions:
            out += both("enc-sep", f"{name}.{pos}", method, target, PATH_INVALID, tries=f"{tries} ({enc})")
    return out


# Ways to write "..": decoded once they are dot segments, resolved before the scope check.
DOTDOT_RESOLVED = {"plain": "..", "pct2e2e": "%2e%2e", "pct2E2E": "%2E%2E", "dot-pct2e": ".%2e",
                   "pct2e-dot": "%2e.", "pct2E-dot": "%2E."}
# ... or refused: double encoding, overlong UTF-8, IIS %u, a stray '%'.
DOTDOT_REFUSED = {"double-252e": "%252e%252e", "overlong-c0ae": "%c0%ae%c0%ae", "iis-u002e": "%u002e%u002e",
                  "bad-pct-pct": "%%2e%2e"}


def dot_segments_encoded() -> list[Case]:
    """'..' in every encoding at every position."""
    out = []
    templates = [
        ("charges-to-refunds", "POST", "/stripe/v1/charges/{D}/refunds", NOT_ALLOWED,
         "climb from the scope to POST /v1/refunds"),
        ("refunds-to-charges", "POST", "/stripe/v1/refunds/{D}/charges", POST_CHARGES,
         "an out-of-scope prefix that resolves into the scope (forwarded canonically)"),
        ("customers-to-charge", "GET", "/stripe/v1/customers/{D}/charges/ch_1", get_charge(),
         "resolves to GET /v1/charges/ch_1 (forwarded canonically)"),
        ("charge-to-customer", "GET", "/stripe/v1/charges/ch_1/{D}/{D}/customers/cus_1", NOT_ALLOWED,
         "climb from the wildcard scope to GET /v1/customers/cus_1"),
        ("above-route", "GET", "/stripe/{D}/admin/vault_keys", PATH_INVALID,
         "climb above the /stripe route to the admin API"),
    ]
    for name, dots in {**DOTDOT_RESOLVED, **DOTDOT_REFUSED}.items():
        for pos, method, template, expect, tries in templates:
            if name in DOTDOT_REFUSED:
                expect = PATH_INVALID
            out += both("dotdot", f"{name}.{pos}", method, template.replace("{D}", dots), expect,
                        tries=f"{tries} with {dots!r}")
    return out


def dot_segments_literal() -> list[Case]:
    out = []
    for variant, method, target, expect in [
        ("v1-dot-charges", "POST", "/stripe/v1/./charges", POST_CHARGES),
        ("dot-v1-charges", "POST", "/stripe/./v1/charges", POST_CHARGES),
        ("charges-dot", "POST", "/stripe/v1/charges/.", POST_CHARGES),
        ("many-dots", "POST", "/stripe/v1/./././charges/./.", POST_CHARGES),
        ("charge-dot", "GET", "/stripe/v1/charges/ch_1/.", get_charge()),
        ("charge-pct2e", "GET", "/stripe/v1/charges/ch_1/%2e", get_charge()),
        ("get-charge-dotdot-list", "GET", "/stripe/v1/charges/ch_1/..", NOT_ALLOWED),
        ("post-charge-dotdot", "POST", "/stripe/v1/charges/ch_1/..", POST_CHARGES),
        ("capture-dotdot", "POST", "/stripe/v1/charges/ch_1/capture/..", NOT_ALLOWED),
        ("three-dots-id", "GET", "/stripe/v1/charges/...", get_charge("...")),
        ("three-dots-post", "POST", "/stripe/v1/charges/...", NOT_ALLOWED),
        ("above-root", "POST", "/stripe/../stripe/v1/charges", PATH_INVALID),
        ("above-root-deep", "POST", "/stripe/v1/../../stripe/v1/charges", PATH_INVALID),
        ("above-root-admin", "GET", "/stripe/v1/../../admin/vault_keys", PATH_INVALID),
    ]:
        out += both("dots", variant, method, target, expect, tries="literal dot segments, resolved or refused")
    return out


def unreserved_encoding() -> list[Case]:
    """Percent-encoded letters and digits are the same path: decoded, then checked."""
    out = []
    for variant, method, target, expect in [
        ("v1", "POST", "/stripe/%76%31/charges", POST_CHARGES),
        ("c-of-charges", "POST", "/stripe/v1/%63harges", POST_CHARGES),
        ("all-charges", "POST", "/stripe/v1/%63%68%61%72%67%65%73", POST_CHARGES),
        ("upper-hex", "POST", "/stripe/v1/%63%68%61%72%67%65%73".upper().replace("/STRIPE/V1", "/stripe/v1"),
         POST_CHARGES),
        ("id", "GET", "/stripe/v1/charges/%63h_1", get_charge()),
        ("capital-C", "POST", "/stripe/v1/%43harges", NOT_ALLOWED),
        ("refunds", "POST", "/stripe/v1/%72efunds", NOT_ALLOWED),
        ("route-prefix", "POST", "/%73tripe/v1/charges", ENVOY_404),
        ("route-slash", "POST", "/stripe%2fv1/charges", ENVOY_404),
    ]:
        out += both("unreserved", variant, method, target, expect, tries="percent-encoded unreserved characters")
    return out


# Characters percent-encoded inside the wildcard segment (an object id).
ID_CHARACTERS = {
    # Decoded into a control, space or separator: refused.
    "nul-00": ("%00", PATH_INVALID), "tab-09": ("%09", PATH_INVALID), "lf-0a": ("%0a", PATH_INVALID),
    "cr-0d": ("%0d", PATH_INVALID), "space-20": ("%20", PATH_INVALID), "del-7f": ("%7f", PATH_INVALID),
    "semicolon-3b": ("%3b", PATH_INVALID), "non-ascii-c3a9": ("%c3%a9", PATH_INVALID),
    # Decoded into a query or fragment delimiter: must be refused (or kept encoded),
    # never forwarded as a real '?' or '#': that would change the resource upstream.
    "question-3f": ("%3f", PATH_INVALID), "question-3F": ("%3F", PATH_INVALID),
    "hash-23": ("%23", PATH_INVALID),
    # Decoded into anything else outside the unreserved set: refused too. Stripe's
    # paths need only letters, digits, '-', '.', '_', '~', so nothing else is
    # ever forwarded in a path, encoded or not.
    "at-40": ("%40", PATH_INVALID), "colon-3a": ("%3a", PATH_INVALID),
    "plus-2b": ("%2b", PATH_INVALID), "equals-3d": ("%3d", PATH_INVALID),
    "amp-26": ("%26", PATH_INVALID), "star-2a": ("%2a", PATH_INVALID),
    "lt-3c": ("%3c", PATH_INVALID), "quote-22": ("%22", PATH_INVALID),
    "brackets-5b5d": ("%5b%5d", PATH_INVALID),
    # Decoded into an unreserved character: the same id, forwarded in its plain form.
    "tilde-7e": ("%7e", get_charge("ch_1~")), "letter-41": ("%41", get_charge("ch_1A")),
}


def id_characters() -> list[Case]:
    out = []
    for name, (enc, expect) in ID_CHARACTERS.items():
        out += both("id-char", name, "GET", f"/stripe/v1/charges/ch_1{enc}", expect,
                    tries=f"{enc} decoded inside the object id")
    for variant, target in [("bad-pct-end", "%"), ("bad-pct-short", "%2"), ("bad-pct-zz", "%zz"),
                            ("bad-pct-g0", "%g0")]:
        out += both("id-char", variant, "GET", f"/stripe/v1/charges/ch_1{target}", PATH_INVALID,
                    tries="a malformed percent-encoding")
    return out


def wildcard_then_literal() -> list[Case]:
    """A '*' followed by a literal: an id that decodes to '?' or '#' would make the
    upstream see a shorter path — another endpoint — if it were forwarded as is."""
    out = []
    out += both("wild", "capture", "POST", "/stripe/v1/charges/ch_1/capture", Forward("POST", "/v1/charges/ch_1/capture"),
                key="wild", tries="the scope itself")
    out += both("wild", "sources", "GET", "/stripe/v1/customers/cus_1/sources",
                Forward("GET", "/v1/customers/cus_1/sources"), key="wild", tries="the scope itself")
    for name, enc in [("question-3f", "%3f"), ("question-3F", "%3F"), ("hash-23", "%23"), ("double-253f", "%253f")]:
        out += both("wild", f"capture-id-{name}", "POST", f"/stripe/v1/charges/ch_1{enc}/capture", PATH_INVALID,
                    key="wild", tries=f"{enc} in the id to turn POST /v1/charges/*/capture into POST /v1/charges/ch_1")
        out += both("wild", f"sources-id-{name}", "GET", f"/stripe/v1/customers/cus_1{enc}/sources", PATH_INVALID,
                    key="wild", tries=f"{enc} in the id to turn GET /v1/customers/*/sources into GET /v1/customers/cus_1")
    out += both("wild", "sources-real-query", "GET", "/stripe/v1/customers/cus_1?/sources", QUERY_MALFORMED, key="wild",
                tries="a real '?' before the literal: the path is /v1/customers/cus_1, the query a malformed name")
    out += both("wild", "sources-real-query-named", "GET", "/stripe/v1/customers/cus_1?x=/sources", NOT_ALLOWED,
                key="wild", tries="a real '?' before the literal, in a well-formed query: the path is /v1/customers/cus_1")
    out += both("wild", "capture-star-id", "POST", "/stripe/v1/charges/%2a/capture", PATH_INVALID, key="wild",
                tries="'*' as the id itself (a scope's wildcard, never a real id)")
    out += both("wild", "capture-dotdot-id", "POST", "/stripe/v1/charges/ch_1/../capture", NOT_ALLOWED, key="wild",
                tries="'..' eats the id: POST /v1/charges/capture")
    return out


def slashes() -> list[Case]:
    out = []
    for variant, method, target, expect in [
        ("dup-after-route", "POST", "/stripe//v1/charges", POST_CHARGES),
        ("dup-middle", "POST", "/stripe/v1//charges", POST_CHARGES),
        ("trailing", "POST", "/stripe/v1/charges/", POST_CHARGES),
        ("trailing-dup", "POST", "/stripe/v1/charges//", POST_CHARGES),
        ("everywhere", "POST", "/stripe///v1///charges///", POST_CHARGES),
        ("dup-before-id", "GET", "/stripe/v1/charges//ch_1", get_charge()),
        ("id-trailing", "GET", "/stripe/v1/charges/ch_1/", get_charge()),
        ("id-trailing-dup", "GET", "/stripe/v1/charges/ch_1//", get_charge()),
        ("list-trailing", "GET", "/stripe/v1/charges/", NOT_ALLOWED),
        ("list-empty-id", "GET", "/stripe/v1/charges//", NOT_ALLOWED),
        ("leading-dup-route", "POST", "//stripe/v1/charges", ENVOY_404),
        ("backslash", "POST", "/stripe/v1\\charges", PATH_INVALID),
        ("backslash-climb", "GET", "/stripe/v1/charges/ch_1\\..\\..\\refunds", PATH_INVALID),
    ]:
        out += both("slashes", variant, method, target, expect, tries="duplicate, trailing and back slashes")
    return out


def path_parameters() -> list[Case]:
    out = []
    for variant, method, target, expect in [
        ("on-v1", "POST", "/stripe/v1;x=1/charges", PATH_INVALID),
        ("on-charges", "POST", "/stripe/v1/charges;x=1", PATH_INVALID),
        ("bare", "POST", "/stripe/v1/charges;", PATH_INVALID),
        ("on-id", "GET", "/stripe/v1/charges/ch_1;jsessionid=abc", PATH_INVALID),
        ("own-segment", "GET", "/stripe/v1/charges/;/ch_1", PATH_INVALID),
        ("then-dotdot", "GET", "/stripe/v1/charges/ch_1;/../../refunds", PATH_INVALID),
        ("encoded-3b", "POST", "/stripe/v1/charges%3bx=1", PATH_INVALID),
        ("encoded-3B", "GET", "/stripe/v1/charges/ch_1%3Bx", PATH_INVALID),
        ("on-route", "POST", "/stripe;x=1/v1/charges", ENVOY_404),
    ]:
        out += both("semicolon", variant, method, target, expect, tries="';' path parameters")
    return out


def letter_case() -> list[Case]:
    out = []
    for variant, method, target, expect, expect_h2 in [
        # Envoy's HTTP/1.1 parser takes only upper-case methods; over HTTP/2 the
        # filter reads the method case-insensitively and forwards the canonical one.
        ("method-post", "post", "/stripe/v1/charges", ENVOY_400, POST_CHARGES),
        ("method-Post", "Post", "/stripe/v1/charges", ENVOY_400, POST_CHARGES),
        ("method-pOsT", "pOsT", "/stripe/v1/charges", ENVOY_400, POST_CHARGES),
        ("method-get", "get", "/stripe/v1/charges/ch_1", ENVOY_400, get_charge()),
        ("method-delete", "delete", "/stripe/v1/charges/ch_1", ENVOY_400, NOT_ALLOWED),
        ("path-V1", "POST", "/stripe/V1/charges", NOT_ALLOWED, None),
        ("path-CHARGES", "POST", "/stripe/v1/CHARGES", NOT_ALLOWED, None),
        ("path-Charges-id", "GET", "/stripe/v1/Charges/ch_1", NOT_ALLOWED, None),
        ("id-upper", "GET", "/stripe/v1/charges/CH_1", get_charge("CH_1"), None),
        ("route-STRIPE", "POST", "/STRIPE/v1/charges", ENVOY_404, None),
        ("route-Stripe", "POST", "/Stripe/v1/charges", ENVOY_404, None),
    ]:
        out += both("case", variant, method, target, expect, expect_h2=expect_h2,
                    tries="mixed case in the method or path")
    return out


def absolute_form() -> list[Case]:
    """Absolute-form request targets (HTTP/1.1), and their HTTP/2 relatives."""
    out = []
    for variant, method, target, expect in [
        ("gateway-host", "POST", "http://127.0.0.1:$PORT/stripe/v1/charges", POST_CHARGES),
        ("other-host", "POST", "http://evil.example/stripe/v1/charges", POST_CHARGES),
        ("stripe-host", "GET", "http://api.stripe.com/stripe/v1/charges/ch_1", get_charge()),
        ("https-scheme", "POST", "https://gateway/stripe/v1/charges", Refuse(403)),  # Envoy: https on a plain listener
        ("upper-scheme-host", "POST", "HTTP://GATEWAY/stripe/v1/charges", POST_CHARGES),
        ("refunds", "POST", "http://gateway/stripe/v1/refunds", NOT_ALLOWED),
        ("dotdot", "POST", "http://gateway/stripe/v1/charges/../refunds", NOT_ALLOWED),
        ("pct-dotdot", "POST", "http://gateway/stripe/v1/charges/%2e%2e/refunds", NOT_ALLOWED),
        ("encoded-slash", "POST", "http://gateway/stripe/v1%2fcharges", PATH_INVALID),
        ("no-path", "GET", "http://gateway", ENVOY_404),
        ("userinfo", "POST", "http://user:pw@gateway/stripe/v1/charges", POST_CHARGES),  # Envoy drops the userinfo
        ("admin-climb", "POST", "http://gateway/admin/../stripe/v1/refunds", NOT_ALLOWED),
        ("query-path", "GET", "http://gateway/stripe/v1/charges/ch_1?/../../refunds", QUERY_MALFORMED),
        ("scheme-relative", "POST", "//gateway/stripe/v1/charges", ENVOY_404),
    ]:
        out += h1_only("absolute", variant, method, target, expect, tries="an absolute-form request target")
    # HTTP/2: the target is split into :scheme, :authority and :path.
    block = lambda path, scheme="http", authority="gateway": (  # noqa: E731
        (":method", "POST"), (":scheme", scheme), (":authority", authority), (":path", path),
        ("authorization", "Bearer $VK"), ("content-type", "application/x-www-form-urlencoded"))
    for variant, h2_block, expect in [
        ("https-scheme", block("/stripe/v1/charges", scheme="https"), POST_CHARGES),
        ("stripe-authority", block("/stripe/v1/charges", authority="api.stripe.com"), POST_CHARGES),
        ("absolute-path", block("http://gateway/stripe/v1/charges"), NO_RESPONSE),
        ("absolute-path-refunds", block("http://gateway/stripe/v1/refunds"), NO_RESPONSE),
    ]:
        out += h2_only("absolute", variant, "POST", h2_block[3][1], expect, h2_block=h2_block,
                       tries="HTTP/2 :scheme, :authority and an absolute :path")
    return out


def query_strings() -> list[Case]:
    out = []
    for variant, method, target, expect in [
        ("dotdot", "GET", "/stripe/v1/charges/ch_1?/../../refunds", QUERY_MALFORMED),
        # Forwarded re-encoded: a value's '/' can never read as part of the path upstream.
        ("path-param", "GET", "/stripe/v1/charges/ch_1?path=/v1/refunds",
         Forward("GET", "/v1/charges/ch_1?path=%2Fv1%2Frefunds")),
        ("encoded-climb", "GET", "/stripe/v1/charges/ch_1?%2f..%2f..%2frefunds", QUERY_MALFORMED),
        ("list-with-id-query", "GET", "/stripe/v1/charges?/ch_1", QUERY_MALFORMED),
        ("list-with-id-param", "GET", "/stripe/v1/charges?id=ch_1", NOT_ALLOWED),
        ("double-question", "GET", "/stripe/v1/charges/ch_1??x=1", QUERY_MALFORMED),
        ("empty-query", "GET", "/stripe/v1/charges/ch_1?", get_charge()),
        ("expand", "GET", "/stripe/v1/charges/ch_1?expand[]=customer", Forward("GET", "/v1/charges/ch_1?expand[]=customer")),
        ("repeated", "GET", "/stripe/v1/charges/ch_1?a=1&a=2", Refuse(400, "parameter_duplicated")),
        ("scalar-and-list", "GET", "/stripe/v1/charges/ch_1?expand=a&expand[]=b", QUERY_MALFORMED),
        ("re-encoded", "GET", "/stripe/v1/charges/ch_1?expand[]=data.customer&a=b+c%2a",
         Forward("GET", "/v1/charges/ch_1?expand[]=data.customer&a=b%20c%2A")),
        ("fragment", "GET", "/stripe/v1/charges/ch_1#/../../refunds", ENVOY_400),
        ("query-fragment", "GET", "/stripe/v1/charges/ch_1?x=1#/../refunds", ENVOY_400),
        ("post-query-climb", "POST", "/stripe/v1/charges?/../refunds", Refuse(400, "query_on_post")),
        ("post-query-amount", "POST", "/stripe/v1/charges?amount=99999999", Refuse(400, "query_on_post")),
        ("post-refunds-query-charges", "POST", "/stripe/v1/refunds?/../charges", Refuse(400, "query_on_post")),
        ("space-in-query", "GET", "/stripe/v1/charges/ch_1?a=b%20c", Forward("GET", "/v1/charges/ch_1?a=b%20c")),
    ]:
        out += both("query", variant, method, target, expect, tries="a query string that imitates a path")
    return out


def method_overrides() -> list[Case]:
    out = []
    for variant, header, value in [
        ("x-http-method-override-get", "X-HTTP-Method-Override", "GET"),
        ("x-http-method-override-delete", "X-HTTP-Method-Override", "DELETE"),
        ("x-http-method-override-put", "X-HTTP-Method-Override", "PUT"),
        ("x-http-method-override-lower", "x-http-method-override", "DELETE"),
        ("x-http-method-override-empty", "X-HTTP-Method-Override", ""),
        ("x-http-method", "X-HTTP-Method", "DELETE"),
        ("x-method-override", "X-Method-Override", "DELETE"),
    ]:
        out += both("override", f"post-{variant}", "POST", "/stripe/v1/charges", OVERRIDE,
                    headers=BEARER + FORM + ((header, value),), tries=f"{header}: {value} on an allowed POST")
    out += both("override", "get-x-http-method-override-post", "GET", "/stripe/v1/charges/ch_1", OVERRIDE,
                headers=BEARER + (("X-HTTP-Method-Override", "POST"),), tries="override header on an allowed GET")
    for variant, query in [("lower", "_method=DELETE"), ("upper", "_METHOD=delete"), ("second", "x=1&_method=POST"),
                           ("no-value", "_method")]:
        out += both("override", f"get-query-{variant}", "GET", f"/stripe/v1/charges/ch_1?{query}", OVERRIDE,
                    tries=f"'{query}' in the query string")
    out += both("override", "get-query-encoded", "GET", "/stripe/v1/charges/ch_1?%5fmethod=DELETE", OVERRIDE,
                tries="'_method' percent-encoded in the query")
    for variant, extra in [("last", "&_method=GET"), ("encoded", "&%5Fmethod=GET"), ("upper", "&_METHOD=DELETE")]:
        expect = OVERRIDE
        out += both("override", f"post-body-{variant}", "POST", "/stripe/v1/charges", expect, body_extra=extra,
                    tries=f"'{extra[1:]}' in the form body",
                    note="" if variant != "upper" else "form keys are case-sensitive; Stripe ignores _METHOD")
    return out


def methods() -> list[Case]:
    out = []
    for variant, method, target, expect in [
        ("head-charge", "HEAD", "/stripe/v1/charges/ch_1", Refuse(403)),
        ("head-charges", "HEAD", "/stripe/v1/charges", Refuse(403)),
        ("options-charges", "OPTIONS", "/stripe/v1/charges", METHOD_NOT_ALLOWED),
        ("options-star", "OPTIONS", "*", ENVOY_404),
        ("trace", "TRACE", "/stripe/v1/charges/ch_1", METHOD_NOT_ALLOWED),
        ("put", "PUT", "/stripe/v1/charges", METHOD_NOT_ALLOWED),
        ("patch", "PATCH", "/stripe/v1/charges/ch_1", METHOD_NOT_ALLOWED),
        ("propfind", "PROPFIND", "/stripe/v1/charges/ch_1", METHOD_NOT_ALLOWED),
    ]:
        out += both("method", variant, method, target, expect, tries=f"{method}, which no scope can name",
                    body=b"")
    # Envoy's HTTP/1.1 parser knows only registered methods; HTTP/2 passes any token to the filter.
    out += both("method", "made-up", "CHARGE", "/stripe/v1/charges", ENVOY_400, expect_h2=METHOD_NOT_ALLOWED,
                body=b"", tries="a made-up method")
    out += h1_only("method", "connect-authority", "CONNECT", "api.stripe.com:443", ENVOY_404,
                   headers=BEARER, body=b"", tries="CONNECT tunnel through the gateway")
    out += h1_only("method", "connect-path", "CONNECT", "/stripe/v1/charges", ENVOY_400,
                   headers=BEARER, body=b"", tries="CONNECT with a path")
    out += h2_only("method", "connect-authority", "CONNECT", "", ENVOY_404, body=b"",
                   h2_block=((":method", "CONNECT"), (":authority", "api.stripe.com:443"),
                             ("authorization", "Bearer $VK")),
                   tries="HTTP/2 CONNECT tunnel through the gateway")
    return out


def credentials() -> list[Case]:
    out = []
    post = lambda *h: tuple(h) + FORM  # noqa: E731
    for variant, headers, expect in [
        ("two-bearer-same", post(("Authorization", "Bearer $VK"), ("Authorization", "Bearer $VK")), AMBIGUOUS),
        ("bearer-then-basic", post(("Authorization", "Bearer $VK"), ("Authorization", "Basic $VK_BASIC")), AMBIGUOUS),
        # Envoy joins repeated Authorization headers with ',' before the filter sees them:
        # "Basic <b64>,Bearer vk_..." is not valid base64, so the scheme is refused.
        ("basic-then-bearer", post(("Authorization", "Basic $VK_BASIC"), ("Authorization", "Bearer $VK")),
         Refuse(401, "authorization_scheme_unsupported")),
        ("scheme-then-key", post(("Authorization", "Bearer"), ("Authorization", "$VK")),
         Refuse(401, "authorization_scheme_unsupported")),
        # ... and drops an empty one: one credential is left, so this one goes through.
        ("bearer-then-empty", post(("Authorization", "Bearer $VK"), ("Authorization", "")), POST_CHARGES),
        ("bearer-and-real-key", post(("Authorization", "Bearer $VK"), ("Authorization", "Bearer $REAL")), AMBIGUOUS),
        ("two-different-keys", post(("Authorization", "Bearer $VK"), ("Authorization", "Bearer $OTHER_VK")), AMBIGUOUS),
        ("bearer-basic-one-header", post(("Authorization", "Bearer $VK, Basic $VK_BASIC")), AMBIGUOUS),
        ("two-keys-one-bearer", post(("Authorization", "Bearer $VK $VK")), AMBIGUOUS),
        ("basic", post(("Authorization", "Basic $VK_BASIC")), POST_CHARGES),
        ("basic-no-colon", post(("Authorization", "Basic $VK_BASIC_NOCOLON")), POST_CHARGES),
        ("basic-with-password", post(("Authorization", "Basic $VK_BASIC_PW")), AMBIGUOUS),
        ("basic-key-as-password", post(("Authorization", "Basic $VK_BASIC_PWONLY")), AMBIGUOUS),
        ("basic-not-base64", post(("Authorization", "Basic !!!")), Refuse(401, "authorization_scheme_unsupported")),
        ("bearer-lower", post(("Authorization", "bearer $VK")), POST_CHARGES),
        ("bearer-upper", post(("Authorization", "BEARER $VK")), POST_CHARGES),
        ("bearer-two-spaces", post(("Authorization", "Bearer  $VK")), POST_CHARGES),
        ("token-scheme", post(("Authorization", "Token $VK")), Refuse(401, "authorization_scheme_unsupported")),
        ("bare-key", post(("Authorization", "$VK")), Refuse(401, "authorization_scheme_unsupported")),
        ("bearer-empty", post(("Authorization", "Bearer")), Refuse(401, "vault_key_missing")),
        ("none", post(), Refuse(401, "vault_key_missing")),
        ("proxy-authorization", post(("Proxy-Authorization", "Bearer $VK")), Refuse(401, "vault_key_missing")),
        ("real-key", post(("Authorization", "Bearer $REAL")), Refuse(401, "vault_key_malformed")),
        ("typo-key", post(("Authorization", "Bearer $VK_TYPO")), Refuse(401, "vault_key_malformed")),
        ("padded-key", post(("Authorization", "Bearer $VK" + "A" * 4000)), Refuse(401, "vault_key_malformed")),
    ]:
        out += both("auth", variant, "POST", "/stripe/v1/charges", expect, headers=headers,
                    tries="how the vault key is presented")
    # The vault key in the query string.
    for variant, target, headers, expect in [
        ("query-only", "/stripe/v1/charges/ch_1?key=$VK", (), Refuse(401, "vault_key_missing")),
        ("query-and-header", "/stripe/v1/charges/ch_1?key=$VK", BEARER, Refuse(400, "vault_key_in_query")),
        ("query-api-key-post", "/stripe/v1/charges?api_key=$VK", BEARER, Refuse(400, "vault_key_in_query")),
        ("query-other-key", "/stripe/v1/charges/ch_1?key=$OTHER_VK", BEARER, Refuse(400, "vault_key_in_query")),
        ("query-pct-encoded", "/stripe/v1/charges/ch_1?key=$VK_PCT", BEARER, Refuse(400, "vault_key_in_query")),
        ("query-pct-first-char", "/stripe/v1/charges/ch_1?key=$VK_PCT1", BEARER, Refuse(400, "vault_key_in_query")),
    ]:
        method = "POST" if "post" in variant else "GET"
        headers = headers + (FORM if method == "POST" else ())
        out += both("auth", variant, method, target, expect, headers=headers,
                    tries="a vault key in the request target",
                    note="a vault key anywhere in the target would be sent to Stripe (and its logs)")
    # Framing of the Authorization header itself (HTTP/1.1 only).
    for variant, headers, expect in [
        ("obs-fold", (("Authorization", "Bearer\r\n $VK"),), POST_CHARGES),  # Envoy unfolds it to "Bearer vk_..."
        ("space-before-colon", (("Authorization ", "Bearer $VK"),), ENVOY_400),
        ("nul-in-value", (("Authorization", "Bearer $VK\x00"),), ENVOY_400),
    ]:
        out += h1_only("auth", variant, "POST", "/stripe/v1/charges", expect, headers=headers + FORM,
                       tries="a malformed Authorization header line")
    # HTTP/2: header names must be lower case; a capitalised one is a protocol error.
    out += h2_only("auth", "h2-capitalised-name", "POST", "/stripe/v1/charges", NO_RESPONSE,
                   h2_block=((":method", "POST"), (":scheme", "http"), (":authority", "gateway"),
                             (":path", "/stripe/v1/charges"), ("Authorization", "Bearer $VK"),
                             ("content-type", "application/x-www-form-urlencoded")),
                   tries="a capitalised header name in HTTP/2")
    return out


def accounts() -> list[Case]:
    out = []
    acct = lambda *values: BEARER + FORM + tuple(("Stripe-Account", v) for v in values)  # noqa: E731
    context = lambda *values: BEARER + FORM + tuple(("Stripe-Context", v) for v in values)  # noqa: E731
    for variant, headers, expect in [
        ("allowed-a", acct(ACCT_A), POST_CHARGES),
        ("allowed-b", acct(ACCT_B), POST_CHARGES),
        # The list is complete: the platform's own account only when it lists "self".
        ("none", acct(), Refuse(403, "account_not_allowed")),
        ("not-allowed", acct(ACCT_EVIL), Refuse(403, "account_not_allowed")),
        ("upper-case", acct(ACCT_A.upper()), ACCOUNT_INVALID),
        ("prefix-of-allowed", acct(ACCT_A[:-1]), Refuse(403, "account_not_allowed")),
        ("allowed-plus-suffix", acct(ACCT_A + "X"), Refuse(403, "account_not_allowed")),
        ("comma-list", acct(f"{ACCT_A},{ACCT_EVIL}"), ACCOUNT_INVALID),
        ("comma-list-allowed-last", acct(f"{ACCT_EVIL}, {ACCT_A}"), ACCOUNT_INVALID),
        ("two-headers", acct(ACCT_A, ACCT_EVIL), Refuse(400, "header_repeated")),
        ("two-headers-evil-first", acct(ACCT_EVIL, ACCT_A), Refuse(400, "header_repeated")),
        ("two-headers-same", acct(ACCT_A, ACCT_A), Refuse(400, "header_repeated")),
        ("too-long", acct(ACCT_A + "A" * 300), Refuse(400, "header_too_long")),
        ("pct-encoded", acct(ACCT_A.replace("_", "%5F")), ACCOUNT_INVALID),
        # Stripe-Context (organization keys) names the account too, under the same list.
        ("context-allowed", context(ACCT_A), POST_CHARGES),
        ("context-not-allowed", context(ACCT_EVIL), Refuse(403, "account_not_allowed")),
        ("context-and-account-agree", acct(ACCT_A) + (("Stripe-Context", ACCT_A),), POST_CHARGES),
        ("context-and-account-differ", acct(ACCT_A) + (("Stripe-Context", ACCT_EVIL),), ACCOUNT_INVALID),
        ("context-differs-from-allowed-account", acct(ACCT_EVIL) + (("Stripe-Context", ACCT_A),), ACCOUNT_INVALID),
        ("context-malformed", context(f"{ACCT_A}/../x"), Refuse(400, "account_header_invalid")),
        ("two-contexts", context(ACCT_A, ACCT_EVIL), Refuse(400, "header_repeated")),
    ]:
        out += both("account", variant, "POST", "/stripe/v1/charges", expect, headers=headers, key="acct",
                    tries="the Stripe-Account header against allowed_accounts")
    out += both("account", "get-not-allowed", "GET", "/stripe/v1/charges/ch_1", Refuse(403, "account_not_allowed"),
                headers=BEARER + (("Stripe-Account", ACCT_EVIL),), key="acct", tries="a read on another account")
    out += both("account", "get-allowed", "GET", "/stripe/v1/charges/ch_1", get_charge(),
                headers=BEARER + (("Stripe-Account", ACCT_B),), key="acct", tries="a read on an allowed account")
    out += both("account", "no-list-any-account", "POST", "/stripe/v1/charges", POST_CHARGES,
                headers=acct(ACCT_EVIL), key="scoped", tries="a key without allowed_accounts: any account")
    out += both("account", "self-listed-platform", "POST", "/stripe/v1/charges", POST_CHARGES, headers=acct(),
                key="acctself", tries="a list naming \"self\": the platform's own account")
    out += both("account", "self-listed-other", "POST", "/stripe/v1/charges", Refuse(403, "account_not_allowed"),
                headers=acct(ACCT_B), key="acctself", tries="a list naming \"self\" and one account, another account")
    # Whitespace around the value: HTTP/1.1 strips it (RFC 9110); HTTP/2 forbids it.
    out += h1_only("account", "padded", "POST", "/stripe/v1/charges", POST_CHARGES, headers=acct(f"  {ACCT_A}  "),
                   key="acct", tries="spaces around an allowed account (stripped by the HTTP/1.1 parser)")
    # Underscore instead of dash: the gateway's Envoy rejects header names with
    # underscores (headers_with_underscores_action: REJECT_REQUEST), so no header
    # can pass as a second Stripe-Account.
    out += both("account", "underscore-name", "POST", "/stripe/v1/charges", ENVOY_400, expect_h2=NO_RESPONSE, key="acct",
                headers=BEARER + FORM + (("Stripe_Account", ACCT_EVIL),),
                tries="Stripe_Account (underscore) for an account not on the list")
    out += h2_only("account", "padded", "POST", "/stripe/v1/charges", ACCOUNT_INVALID,
                   headers=acct(f" {ACCT_A} "), key="acct",
                   tries="spaces around an allowed account (HTTP/2 keeps them: not the same account)")
    return out


def oversized() -> list[Case]:
    out = []
    long_id = "ch_" + "a" * 1900
    for variant, method, target, headers, expect, expect_h2 in [
        ("id-1900", "GET", f"/stripe/v1/charges/{long_id}", None, get_charge(long_id), None),
        ("target-2049", "GET", "/stripe/v1/charges/" + "a" * (2049 - len("/v1/charges/")), None, PATH_INVALID, None),
        ("dots-2100", "POST", "/stripe/v1" + "/." * 1050 + "/charges", None, PATH_INVALID, None),
        ("segments-40", "GET", "/stripe" + "/a" * 40, None, PATH_INVALID, None),
        ("slashes-1000", "POST", "/stripe/v1" + "/" * 1000 + "charges", None, POST_CHARGES, None),
        ("path-70k", "GET", "/stripe/v1/charges/" + "a" * 70_000, None, ENVOY_431, NO_RESPONSE),
        ("header-70k", "GET", "/stripe/v1/charges/ch_1", BEARER + (("X-Pad", "p" * 70_000),), ENVOY_431, NO_RESPONSE),
        ("auth-70k", "GET", "/stripe/v1/charges/ch_1", (("Authorization", "Bearer $VK" + "A" * 70_000),),
         ENVOY_431, NO_RESPONSE),
        ("headers-150", "GET", "/stripe/v1/charges/ch_1", BEARER + tuple((f"X-H{i}", "1") for i in range(150)),
         ENVOY_431, NO_RESPONSE),
        ("idempotency-key-300", "POST", "/stripe/v1/charges", BEARER + FORM + (("Idempotency-Key", "k" * 300),),
         Refuse(400, "header_too_long"), None),
    ]:
        out += both("long", variant, method, target, expect, expect_h2=expect_h2, headers=headers,
                    tries="over-long paths and headers")
    out += both("long", "body-70k", "POST", "/stripe/v1/charges", Refuse(400, "body_too_large"),
                body_extra="&metadata[pad]=" + "b" * 70_000, tries="a body over the filter's 64 KiB limit")
    return out


def routes() -> list[Case]:
    """Targets that are not under /stripe/ as Envoy routes them, or climb out of it."""
    out = []
    for variant, method, target, expect in [
        ("admin-climb-to-stripe", "POST", "/admin/../stripe/v1/refunds", NOT_ALLOWED),
        ("admin-with-vault-key", "GET", "/admin/vault_keys", NOT_ALLOWED),
        ("stripex", "POST", "/stripex/v1/charges", ENVOY_404),
        ("no-trailing-slash", "POST", "/stripe", ENVOY_404),
        ("standin-hook", "GET", "/__standin/requests", ENVOY_404),
        ("stripe-climb-to-standin-hook", "GET", "/stripe/v1/../__standin/requests", NOT_ALLOWED),
        ("stripe-climb-to-admin", "GET", "/stripe/../admin/vault_keys", PATH_INVALID),
    ]:
        out += both("route", variant, method, target, expect, tries="route confusion outside /stripe/",
                    note="NOT_ALLOWED from /admin/ is the admin API refusing a vault key")
    return out


def framing() -> list[Case]:
    """HTTP/1.1 framing: a valid chunked body goes through; ambiguous framing never does."""
    out = []
    body = charge_body("framing/chunked/h1")
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    out += h1_only("framing", "chunked", "POST", "/stripe/v1/charges", POST_CHARGES, raw_headers=True, body=chunked,
                   headers=(("Host", "gateway"),) + BEARER + FORM + (("Transfer-Encoding", "chunked"),),
                   tries="a chunked form body")
    out += h1_only("framing", "http10", "GET", "/stripe/v1/charges/ch_1", Refuse(426), version="HTTP/1.0",
                   tries="an HTTP/1.0 request (Envoy: 426 Upgrade Required)")
    body = charge_body("framing/cl-and-te/h1")
    out += h1_only("framing", "cl-and-te", "POST", "/stripe/v1/charges", ENVOY_400, raw_headers=True,
                   body=f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n",
                   headers=(("Host", "gateway"),) + BEARER + FORM + (("Content-Length", "4"),
                                                                      ("Transfer-Encoding", "chunked")),
                   tries="Content-Length and Transfer-Encoding together (request smuggling)")
    body = charge_body("framing/two-content-lengths/h1")
    out += h1_only("framing", "two-content-lengths", "POST", "/stripe/v1/charges", ENVOY_400, raw_headers=True,
                   body=body, headers=(("Host", "gateway"),) + BEARER + FORM + (("Content-Length", str(len(body))),
                                                                                 ("Content-Length", "4")),
                   tries="two different Content-Length headers")
    first = charge_body("framing/pipelined-out-of-scope/h1")
    second = ("POST /stripe/v1/refunds HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer $VK\r\n"
              f"Content-Type: application/x-www-form-urlencoded\r\n{CASE_HEADER}: framing/pipelined-out-of-scope/h1\r\n"
              "Content-Length: 9\r\n\r\ncharge=ch")
    out += h1_only("framing", "pipelined-out-of-scope", "POST", "/stripe/v1/charges", POST_CHARGES, raw_headers=True,
                   body=first + second.encode(),
                   headers=(("Host", "gateway"),) + BEARER + FORM + (("Content-Length", str(len(first))),),
                   tries="a second, out-of-scope request pipelined after the first (only the first may go)")
    out += h1_only("framing", "lower-version", "GET", "/stripe/v1/charges/ch_1", ENVOY_400, version="http/1.1",
                   tries="a lower-case HTTP version")
    return out


def h2_framing() -> list[Case]:
    """HTTP/2 header blocks no HTTP/1.1 request can express: repeated or misplaced
    pseudo-headers, a path that is not origin-form, CR/LF inside a value."""
    out = []
    start = ((":method", "POST"), (":scheme", "http"), (":authority", "gateway"))
    rest = (("authorization", "Bearer $VK"), ("content-type", "application/x-www-form-urlencoded"))
    for variant, block, expect in [
        ("two-paths", start + ((":path", "/stripe/v1/charges"), (":path", "/stripe/v1/refunds")) + rest, NO_RESPONSE),
        ("two-paths-out-first", start + ((":path", "/stripe/v1/refunds"), (":path", "/stripe/v1/charges")) + rest,
         NO_RESPONSE),
        ("two-methods", ((":method", "POST"), (":method", "DELETE"), (":scheme", "http"), (":authority", "gateway"),
                         (":path", "/stripe/v1/charges")) + rest, NO_RESPONSE),
        ("pseudo-after-regular", start + rest + ((":path", "/stripe/v1/charges"),), NO_RESPONSE),
        ("no-path", start + rest, NO_RESPONSE),
        ("empty-path", start + ((":path", ""),) + rest, NO_RESPONSE),
        ("relative-path", start + ((":path", "stripe/v1/charges"),) + rest, NO_RESPONSE),
        ("crlf-in-value", start + ((":path", "/stripe/v1/charges"),) + rest
         + (("stripe-account", f"{ACCT_A}\r\nstripe-account: {ACCT_EVIL}"),), NO_RESPONSE),
        ("connection-header", start + ((":path", "/stripe/v1/charges"),) + rest + (("connection", "close"),),
         NO_RESPONSE),
        ("unknown-pseudo", start + ((":path", "/stripe/v1/charges"), (":protocol", "websocket")) + rest, NO_RESPONSE),
    ]:
        out += h2_only("h2-block", variant, "POST", "", expect, h2_block=block,
                       tries="a malformed HTTP/2 header block")
    return out


FAMILIES = (baseline, encoded_separators, dot_segments_encoded, dot_segments_literal, unreserved_encoding,
            id_characters, wildcard_then_literal, slashes, path_parameters, letter_case, absolute_form,
            query_strings, method_overrides, methods, credentials, accounts, oversized, routes, framing, h2_framing)


ROUTE_PREFIX = "/stripe"
API_ROOTS = ("/v1/", "/v2/")


def at_root(case: Case) -> Case | None:
    """The same case through the root route (`/v1/...` for `/stripe/v1/...`),
    as SDKs that take only a host and a port send it; None for a case about
    the prefix itself. The verdict must be the same: scope checks see the same
    canonical path whichever route the call came in on."""
    def strip(target: str) -> str | None:
        for scheme in ("", "http://gateway", "http://127.0.0.1:$PORT"):
            for root in API_ROOTS:
                if target.startswith(scheme + ROUTE_PREFIX + root):
                    return scheme + target[len(scheme) + len(ROUTE_PREFIX):]
        return None

    target = strip(case.target)
    if target is None or case.raw_headers:
        # Raw framing cases carry their own Content-Length: they are about HTTP, not the route.
        return None
    block = None
    if case.h2_block is not None:
        block = tuple((k, strip(v) or v) if k == ":path" else (k, v) for k, v in case.h2_block)
        if block == case.h2_block:
            return None
    new_id = f"root-{case.id}"
    body = case.body.replace(f" {ROUTE_PREFIX}/v".encode(), b" /v")  # a pipelined second request line
    # A charge's description names its case: a new one, or the gateway would replay the first.
    body = body.replace(quote(case.id, safe="").encode(), quote(new_id, safe="").encode())
    body = body.replace(case.id.encode(), new_id.encode())
    return replace(case, id=new_id, target=target, h2_block=block, body=body)


def cases() -> list[Case]:
    via_prefix = [c for family in FAMILIES for c in family()]
    out = via_prefix + [r for c in via_prefix if (r := at_root(c)) is not None]
    ids = [c.id for c in out]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {sorted(duplicates)}"
    return out


def family_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in cases():
        family = c.id.split("/", 1)[0].removeprefix("root-")
        counts[family] = counts.get(family, 0) + 1
    return counts


if __name__ == "__main__":
    all_cases = cases()
    for name, n in family_counts().items():
        print(f"{name:12} {n}")
    print(f"{'total':12} {len(all_cases)} "
          f"({sum(isinstance(c.expect, Forward) for c in all_cases)} forward, "
          f"{sum(isinstance(c.expect, Refuse) for c in all_cases)} refuse)")
