"""Operable: the `keybrake` CLI against a running gateway, Prometheus
metrics from the control service and from the filter inside Envoy, health
endpoints, structured logs without secrets, and the OpenAPI document."""
import json
import os
import subprocess

import httpx
import pytest

from support.stack import ADMIN_KEY, REAL_KEY, Stack, control_binary, wait_for


def cli(stack: Stack, *args: str, key: str | None = ADMIN_KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEYBRAKE_URL": stack.url}
    env.pop("KEYBRAKE_ADMIN_KEY", None)
    if key:
        env["KEYBRAKE_ADMIN_KEY"] = key
    return subprocess.run([str(control_binary()), *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_cli_issues_lists_shows_and_revokes_keys(stack):
    made = cli(stack, "keys", "create", "--label", "cli-batch-1", "--endpoint", "POST /v1/charges",
               "--endpoint", "GET /v1/charges/*", "--daily-usd-cap", "32.99", "--expires-in", "600")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["vault_key"].startswith("vk_") and key["daily_usd_cap"] == 32.99
    assert stack.call("POST", "/stripe/v1/charges", key["vault_key"], data={"amount": 500, "currency": "usd"}).status_code == 200

    listed = cli(stack, "keys", "list", "--label-prefix", "cli-batch-")
    assert listed.returncode == 0 and key["id"] in listed.stdout and "$32.99" in listed.stdout and "$5.00" in listed.stdout
    shown = json.loads(cli(stack, "keys", "show", key["id"]).stdout)
    assert shown["spent_today_usd"] == 5.0 and key["vault_key"] not in json.dumps(shown)

    cli(stack, "keys", "create", "--label", "cli-batch-2", "--endpoint", "POST /v1/charges")
    revoked = json.loads(cli(stack, "keys", "revoke", "--label-prefix", "cli-batch-").stdout)
    assert revoked["revoked"] == 2
    again = json.loads(cli(stack, "keys", "revoke", key["id"]).stdout)
    assert again["state"] == "revoked"


def test_the_cli_reports_the_apis_errors_and_exits_non_zero(stack):
    bad = cli(stack, "keys", "create", "--label", "x", "--endpoint", "POST v1/charges")
    assert bad.returncode == 2 and "path must start with '/'" in bad.stderr
    assert cli(stack, "keys", "list", key=None).returncode == 2
    wrong = cli(stack, "keys", "list", key="not-the-admin-key")
    assert wrong.returncode == 2 and "401" in wrong.stderr
    assert cli(stack, "keys", "show", "key_missing").returncode == 2


def test_the_cli_reads_usage_audit_and_sets_fx(stack):
    key = stack.issue_key(label="cli-usage", daily_usd_cap=100)
    stack.call("POST", "/stripe/v1/charges", key["vault_key"], data={"amount": 4200, "currency": "usd"},
               headers={"Idempotency-Key": "cli-inv-1"})
    usage = cli(stack, "usage")
    assert usage.returncode == 0 and "cli-usage" in usage.stdout and "$42.00" in usage.stdout
    query = cli(stack, "audit", "query", "--idempotency-key", "cli-inv-1")
    assert query.returncode == 0 and "outcome" in query.stdout and "committed" in query.stdout
    raw = json.loads(cli(stack, "audit", "query", "--key-id", key["id"], "--json").stdout)
    assert {r["stage"] for r in raw["data"]} == {"intent", "outcome"}
    export = cli(stack, "audit", "export", "--key-id", key["id"])
    lines = [json.loads(line) for line in export.stdout.splitlines()]
    assert [r["stage"] for r in lines] == ["intent", "outcome"]
    verify = cli(stack, "audit", "verify")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True
    fx = cli(stack, "fx", "set", "--as-of", "2026-11-26", "JPY=0.0067", "eur=1.08")
    assert fx.returncode == 0, fx.stderr
    rates = {r["currency"]: r["usd_per_unit"] for r in json.loads(cli(stack, "fx", "list").stdout)["data"]}
    assert rates["jpy"] == "0.0067" and rates["eur"] == "1.08"
    assert cli(stack, "fx", "set", "--as-of", "yesterday", "eur=1").returncode == 2


def test_help_teaches_with_examples():
    out = subprocess.run([str(control_binary()), "--help"], capture_output=True, text=True).stdout
    assert "keys create" in out and "audit verify" in out
    create = subprocess.run([str(control_binary()), "keys", "create", "--help"], capture_output=True, text=True).stdout
    assert "--daily-usd-cap" in create and "Example" in create


def test_metrics_from_the_control_service_and_the_filter(stack):
    key = stack.issue_key(label="metrics", daily_usd_cap=10)
    stack.call("POST", "/stripe/v1/charges", key["vault_key"], data={"amount": 900, "currency": "usd"})
    stack.call("POST", "/stripe/v1/charges", key["vault_key"], data={"amount": 900, "currency": "usd", "customer": "c2"})
    stack.call("POST", "/stripe/v1/refunds", key["vault_key"], data={"charge": "ch_1"})
    stack.call("POST", "/stripe/v1/charges", "vk_nonsense", data={"amount": 1, "currency": "usd"})
    control = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics").text
    assert 'keybrake_decisions_total{decision="denied",reason="spend_cap_exceeded"}' in control
    assert 'keybrake_decisions_total{decision="denied",reason="endpoint_not_allowed"}' in control
    assert 'keybrake_reservations_total{result="reserved"}' in control
    assert 'keybrake_settlements_total{verdict="committed"}' in control
    assert "keybrake_store_seconds_bucket" in control
    envoy = wait_for(lambda: (t := httpx.get(f"http://127.0.0.1:{stack.envoy_admin_port}/stats/prometheus").text)
                     and "keybrake_requests_denied_reason_vault_key_malformed" in t and t, what="filter metrics")
    for name in ("keybrake_requests_allowed", "keybrake_requests_denied_reason_spend_cap_exceeded", "keybrake_outbox_queued"):
        assert name in envoy
    for secret in (key["vault_key"], REAL_KEY, ADMIN_KEY):
        assert secret not in control and secret not in envoy


def test_health_and_readiness(stack):
    assert httpx.get(f"http://127.0.0.1:{stack.http_port}/healthz").text == "ok"
    ready = httpx.get(f"http://127.0.0.1:{stack.http_port}/readyz")
    assert ready.status_code == 200 and ready.json()["storage"] == stack.backend


def test_a_control_service_that_cannot_open_its_storage_refuses_to_start(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    proc = subprocess.run([str(control_binary()), "serve"], env={**os.environ, "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY,
                          "KEYBRAKE_ADMIN_KEY": ADMIN_KEY, "KEYBRAKE_DATA_DIR": str(blocker),
                          "KEYBRAKE_HTTP_LISTEN": "127.0.0.1:0"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and str(blocker) in proc.stderr and "READY" not in proc.stdout


def test_an_empty_database_url_refuses_to_start_rather_than_fall_back_to_sqlite(tmp_path):
    """A PostgreSQL deployment whose URL secret was left empty must not run
    each replica on a SQLite file of its own (each would keep its own caps)."""
    proc = subprocess.run([str(control_binary()), "serve"], env={**os.environ, "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY,
                          "KEYBRAKE_ADMIN_KEY": ADMIN_KEY, "KEYBRAKE_DATA_DIR": str(tmp_path / "data"),
                          "KEYBRAKE_DATABASE_URL": "", "KEYBRAKE_HTTP_LISTEN": "127.0.0.1:0"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "READY" not in proc.stdout
    assert "KEYBRAKE_DATABASE_URL" in proc.stderr and "empty" in proc.stderr
    assert not (tmp_path / "data" / "keybrake.db").exists()


def test_json_logs_carry_no_secret(fresh_stack):
    s: Stack = fresh_stack(control_env={"KEYBRAKE_LOG_FORMAT": "json", "KEYBRAKE_LOG": "debug"})
    key = s.issue_key(label="logs")
    s.call("POST", "/stripe/v1/charges", key["vault_key"], data={"amount": 100, "currency": "usd"})
    s.call("POST", "/stripe/v1/charges", key["vault_key"] + "x", data={"amount": 100, "currency": "usd"})
    s.admin("GET", "/admin/vault_keys", key="wrong-admin-key")
    s.stop()
    lines = [l for l in (s.workdir / "control.log").read_text().splitlines() if l.strip()]
    assert lines and all(json.loads(l)["level"] for l in lines), "every log line is a JSON object"
    text = s.logs()
    for secret in (key["vault_key"], REAL_KEY, ADMIN_KEY):
        assert secret not in text


def test_the_openapi_document_describes_the_admin_api(stack):
    doc = httpx.get(f"{stack.url}/admin/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [("/admin/vault_keys", "post"), ("/admin/vault_keys", "get"), ("/admin/vault_keys/{id}", "delete"),
                         ("/admin/vault_keys/revoke", "post"), ("/admin/usage", "get"), ("/admin/audit", "get"),
                         ("/admin/audit/verify", "get"), ("/admin/fx_rates", "put")]:
        assert method in paths[path], (path, method)
    create = doc["components"]["schemas"]["CreateKey"]
    assert set(create["required"]) == {"label", "vendor", "allowed_endpoints", "expires_in_seconds"}
    assert "bearer" in json.dumps(doc["components"]["securitySchemes"]).lower()
