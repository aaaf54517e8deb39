"""API robustness: schemathesis generates inputs for every operation of the
admin API's own OpenAPI document (`/admin/openapi.json`, served without auth)
and sends them through Envoy to a stack of this module's own. No input — valid
(positive) or not (negative) — may get a 5xx, an undocumented status code or
content type, or a body or headers that violate the documented response.

Every request carries the admin key (the API allows 10 failed authentications a
minute per source, then answers 429 even to the right key). Only the checks in
CHECKS run — none of schemathesis's authentication probes, which would send
bad credentials — and `admin_key_accepted` fails the run if a response says the
key was refused, so it cannot quietly test nothing but the 401 path.

schemathesis's own pytest loader (`schemathesis.pytest.from_fixture`) does not
work with pytest 9.2 (it sets `Node._nodeid`, gone in 9.2), so this uses the
Python API: the schema is loaded from the running stack in a fixture, and each
operation's Hypothesis strategy is run with `@given` inside a parametrised test.
The operation list is spelled out for readable test ids; a test checks that it
is exactly the document's.
"""
from __future__ import annotations

from dataclasses import dataclass

import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.stack import ADMIN_KEY, Stack

MAX_EXAMPLES = 50
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

OPERATIONS = [
    "POST /admin/vault_keys",
    "GET /admin/vault_keys",
    "GET /admin/vault_keys/{id}",
    "DELETE /admin/vault_keys/{id}",
    "POST /admin/vault_keys/{id}/reinstate",
    "POST /admin/vault_keys/revoke",
    "GET /admin/usage",
    "GET /admin/audit",
    "GET /admin/audit/verify",
    "GET /admin/fx_rates",
    "PUT /admin/fx_rates",
]


def admin_key_accepted(ctx, response, case) -> None:
    """The admin key was accepted: otherwise the run tested nothing past authentication."""
    if response.status_code in (401, 403, 429):
        raise AssertionError(f"{case.method} {case.formatted_path} got {response.status_code}: "
                             f"{response.text[:300]} — the admin key was not accepted (locked out?)")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, admin_key_accepted]


@dataclass
class Admin:
    schema: schemathesis.BaseSchema
    key_ids: list[str]


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Admin:
    # Keys, spend and an audit trail, so that reads have something to return.
    key_ids = []
    for i in range(8):
        issued = stack.issue_key(label=f"fuzz-seed-{i}", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])
        key_ids.append(issued["id"])
        r = stack.call("POST", "/stripe/v1/charges", issued["vault_key"],
                       data={"amount": 100 + i, "currency": "usd", "customer": "cus_1"})
        assert r.status_code == 200, r.text
    schema = schemathesis.openapi.from_url(f"{stack.url}/admin/openapi.json")
    schema.config.update(base_url=stack.url)
    # Generate no Authorization header of schemathesis's own (negative mode would
    # send missing or malformed credentials): every request carries AUTH.
    schema.config.generation.update(with_security_parameters=False)
    return Admin(schema, key_ids)


# Inputs the API accepts, which the document cannot express (the vendor's name,
# the scope grammar, ISO currencies, dates): without them a random body is
# almost always refused, and the success responses would go unchecked.
SCOPES = ["POST /v1/charges", "GET /v1/charges/*", "POST /v1/refunds", "POST /v1/charges/*/capture",
          "GET /v1/customers/*", "DELETE /v1/customers/*", "POST /v2/core/events", "get /v1/balance"]
decimals = st.one_of(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False),
                     st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False))
money = st.one_of(st.none(), decimals.map(float), decimals.map(str))
stripe_key = st.fixed_dictionaries(
    {"label": st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=40)
     .filter(str.strip),
     "vendor": st.just("stripe"),
     "allowed_endpoints": st.lists(st.sampled_from(SCOPES), min_size=1, max_size=8),
     "expires_in_seconds": st.integers(1, 2_592_000)},
    optional={"daily_usd_cap": money,
              "max_amount_per_call_usd": money,
              "dedup": st.sampled_from([None, "content", "idempotency_key"]),
              "dedup_window_seconds": st.one_of(st.none(), st.integers(1, 604_800)),
              "allow_unpriced_calls": st.booleans(),
              "allowed_accounts": st.lists(st.one_of(st.from_regex(r"acct_[A-Za-z0-9]{1,30}", fullmatch=True),
                                                     st.just("self")), max_size=3)})
audit_key = st.fixed_dictionaries(
    {"label": st.just("fuzz-audit"), "vendor": st.just("keybrake"), "allowed_endpoints": st.just(["GET /admin/audit"]),
     "expires_in_seconds": st.integers(1, 2_592_000)})
CURRENCIES = ["eur", "gbp", "jpy", "chf", "cad", "aud", "sek", "krw", "bhd", "clp"]
rates = st.fixed_dictionaries(
    {"as_of": st.dates().map(str),
     "rates": st.dictionaries(st.sampled_from(CURRENCIES),
                              st.decimals(min_value="0.000001", max_value=100000, places=6).map(float),
                              min_size=1, max_size=5)})


def valid_strategy(admin: Admin, label: str, operation):
    if label == "POST /admin/vault_keys":
        return st.one_of(stripe_key, audit_key).flatmap(lambda body: operation.as_strategy(body=body))
    if label in ("GET /admin/vault_keys/{id}", "DELETE /admin/vault_keys/{id}", "POST /admin/vault_keys/{id}/reinstate"):
        return st.sampled_from(admin.key_ids).flatmap(lambda i: operation.as_strategy(path_parameters={"id": i}))
    if label == "PUT /admin/fx_rates":
        return rates.flatmap(lambda body: operation.as_strategy(body=body))
    raise KeyError(label)


def test_every_operation_of_the_document_is_fuzzed(admin: Admin) -> None:
    found = [result.ok().label for result in admin.schema.get_all_operations()]
    assert sorted(found) == sorted(OPERATIONS)


# Negative data (wrong types, values out of range, missing or unknown fields)
# exists only for operations with a query or a body: a path id is any string.
WITH_INPUT = [
    "POST /admin/vault_keys",
    "GET /admin/vault_keys",
    "POST /admin/vault_keys/revoke",
    "GET /admin/audit",
    "PUT /admin/fx_rates",
]
# Operations a random input hardly ever gets through (see valid_strategy).
WITH_VALID = ["POST /admin/vault_keys", "GET /admin/vault_keys/{id}", "DELETE /admin/vault_keys/{id}",
              "POST /admin/vault_keys/{id}/reinstate", "PUT /admin/fx_rates"]
RUNS = (
    [pytest.param(label, "positive", id=f"{label} positive") for label in OPERATIONS]
    + [pytest.param(label, "negative", id=f"{label} negative") for label in WITH_INPUT]
    + [pytest.param(label, "valid", id=f"{label} valid") for label in WITH_VALID]
)


@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_admin_api(admin: Admin, label: str, mode: str) -> None:
    operation = admin.schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the OpenAPI document"
    if mode == "valid":
        strategy = valid_strategy(admin, label, operation)
    else:
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @hypothesis.given(case=strategy)
    def run(case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)

    run()
