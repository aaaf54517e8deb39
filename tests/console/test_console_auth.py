"""The console without a browser (httpx): it opens no hole. Every page and
action needs a session, every action the session's CSRF token; the login
checks the admin key like the API and counts failures in the same limiter;
no page carries the admin key; creating a key shows the API's own
validation messages."""
from __future__ import annotations

import html
import re

import httpx
import pytest

from console_support import csrf_of, login
from support.stack import ADMIN_KEY, REAL_KEY, Stack, client_from

PAGES = ["/admin/ui/", "/admin/ui/keys", "/admin/ui/keys?label_prefix=x", "/admin/ui/keys/revoke?label_prefix=x",
         "/admin/ui/audit", "/admin/ui/audit?decision=denied", "/admin/ui/audit/1", "/admin/ui/health",
         "/admin/ui/no-such-page"]
ACTIONS = ["/admin/ui/keys", "/admin/ui/keys/key_0123/revoke", "/admin/ui/keys/key_0123/reinstate",
           "/admin/ui/keys/revoke", "/admin/ui/logout"]


def anonymous(stack: Stack, cookie: str | None = None) -> httpx.Client:
    cookies = {"keybrake_console": cookie} if cookie else None
    return httpx.Client(base_url=stack.url, follow_redirects=False, timeout=30, cookies=cookies)


@pytest.mark.parametrize("cookie", [None, "0" * 64, "not-a-session"])
def test_every_page_and_action_needs_a_session(console_stack, cookie):
    with anonymous(console_stack, cookie) as c:
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/admin/ui/login", path
        assert c.get("/admin/ui/api/activity").status_code == 401
        for path in ACTIONS:
            r = c.post(path, data={"csrf": "0" * 64, "label": "x", "label_prefix": "x"})
            assert r.status_code == 401, path
        assert c.get("/admin/ui").status_code in (301, 303, 307, 308)
        # The two static files are the same in every build and hold no data.
        assert c.get("/admin/ui/assets/console.css").headers["content-type"].startswith("text/css")
        assert c.get("/admin/ui/assets/console.js").status_code == 200
        login_page = c.get("/admin/ui/login")
        assert login_page.status_code == 200 and 'name="admin_key"' in login_page.text


def test_login_sets_a_strict_session_cookie_and_logout_ends_it(console_stack):
    with anonymous(console_stack) as c:
        refused = c.post("/admin/ui/login", data={"admin_key": "kb_admin_wrong_but_long_enough"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        ok = c.post("/admin/ui/login", data={"admin_key": ADMIN_KEY})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert re.match(r"keybrake_console=[0-9a-f]{64}; ", cookie)
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin/ui", "Max-Age=28800"):
            assert attribute in cookie
        assert "Secure" not in cookie, "plain http: a Secure cookie would never come back"
        assert ADMIN_KEY not in cookie
        keys = c.get("/admin/ui/keys")
        assert keys.status_code == 200
        for header in ("content-security-policy", "x-frame-options", "cache-control"):
            assert header in keys.headers
        assert "script-src 'self'" in keys.headers["content-security-policy"]
        assert keys.headers["cache-control"] == "no-store"
        old = c.cookies["keybrake_console"]
        out = c.post("/admin/ui/logout", data={"csrf": csrf_of(keys.text)})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    with anonymous(console_stack, old) as c:
        assert c.get("/admin/ui/keys").status_code == 303, "the session ended on the server, not just in the browser"


def test_the_cookie_is_secure_when_the_proxy_says_https(console_stack):
    # Straight to the control service, as a TLS-terminating proxy would reach it.
    direct = f"http://127.0.0.1:{console_stack.http_port}"
    headers = {"X-Forwarded-Proto": "https"}
    r = httpx.post(f"{direct}/admin/ui/login", data={"admin_key": ADMIN_KEY}, headers=headers)
    assert r.status_code == 303 and r.headers["set-cookie"].endswith("; Secure")


def test_actions_need_the_sessions_csrf_token(console_stack, session):
    label = "console-csrf-1"
    form = {"label": label, "vendor": "stripe", "allowed_endpoints": "POST /v1/charges", "expires_in_seconds": "600"}
    page = session.get("/admin/ui/keys").text
    token = csrf_of(page)
    other = login(console_stack.url)
    other_token = csrf_of(other.get("/admin/ui/keys").text)
    assert other_token != token, "each session has its own token"
    for bad in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": other_token}):
        assert session.post("/admin/ui/keys", data={**form, **bad}).status_code == 403
    assert console_stack.admin("GET", "/admin/vault_keys", params={"label_prefix": label}).json()["data"] == []

    key = console_stack.issue_key(label="console-csrf-2")
    assert session.post(f"/admin/ui/keys/{key['id']}/revoke", data={"csrf": other_token}).status_code == 403
    assert session.post(f"/admin/ui/keys/{key['id']}/reinstate", data={"csrf": other_token}).status_code == 403
    assert session.post("/admin/ui/keys/revoke", data={"label_prefix": "console-csrf-"}).status_code == 403
    assert console_stack.admin("GET", f"/admin/vault_keys/{key['id']}").json()["state"] == "active"
    assert session.post("/admin/ui/logout", data={}).status_code == 403
    assert session.get("/admin/ui/keys").status_code == 200, "a refused logout leaves the session"

    # With the token, the same actions go through.
    made = session.post("/admin/ui/keys", data={**form, "csrf": token})
    assert made.status_code == 201 and 'id="vault-key">vk_' in made.text
    assert made.headers["cache-control"] == "no-store", "the page with the new vault key stays out of caches"
    revoked = session.post(f"/admin/ui/keys/{key['id']}/revoke", data={"csrf": token})
    assert revoked.status_code == 303
    assert console_stack.admin("GET", f"/admin/vault_keys/{key['id']}").json()["state"] == "revoked"
    confirm = session.get("/admin/ui/keys/revoke", params={"label_prefix": "console-csrf-"})
    assert 'data-count="1"' in confirm.text and "This will stop <strong>1 key</strong>" in confirm.text
    done = session.post("/admin/ui/keys/revoke", data={"csrf": token, "label_prefix": "console-csrf-"})
    assert done.status_code == 200 and 'data-count="1"' in done.text
    other.close()


BAD_REQUESTS = [
    {"allowed_endpoints": ["POST v1/charges"]},
    {"allowed_endpoints": ["GET /admin/audit"]},
    {"vendor": "paypal"},
    {"daily_usd_cap": "-1"},
    {"daily_usd_cap": "1e3"},
    {"expires_in_seconds": 0},
    {"expires_in_seconds": 99999999},
    {"label": "   "},
    {"dedup": "sometimes"},
    {"allowed_accounts": ["cus_1"]},
]


@pytest.mark.parametrize("change", BAD_REQUESTS, ids=lambda c: next(iter(c)))
def test_creating_a_key_shows_the_apis_own_validation_message(console_stack, session, change):
    body = {"label": "console-invalid", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
            "daily_usd_cap": "10", "expires_in_seconds": 600, **change}
    api = console_stack.admin("POST", "/admin/vault_keys", body)
    assert api.status_code == 400
    error = api.json()["error"]
    form = {k: "\n".join(v) if isinstance(v, list) else str(v) for k, v in body.items()}
    ui = session.post("/admin/ui/keys", data={**form, "csrf": csrf_of(session.get("/admin/ui/keys").text)})
    assert ui.status_code == 400
    shown = re.search(r'<p class="error" id="create-error" data-param="([^"]*)">(.*?)</p>', ui.text)
    assert shown, ui.text[:2000]
    assert html.unescape(shown.group(1)) == error["param"]
    assert html.unescape(shown.group(2)) == error["message"]
    assert 'class="invalid"' in ui.text


def test_no_page_carries_the_admin_key_and_the_vault_key_is_shown_once(console_stack, session):
    token = csrf_of(session.get("/admin/ui/keys").text)
    made = session.post("/admin/ui/keys", data={"csrf": token, "label": "console-secrets", "vendor": "stripe",
                                                "allowed_endpoints": "POST /v1/charges", "daily_usd_cap": "20",
                                                "expires_in_seconds": "600"})
    vault_key = re.search(r'id="vault-key">(vk_[^<]+)<', made.text).group(1)
    key_id = re.search(r'id="created-id">(key_[0-9a-f]+)<', made.text).group(1)
    assert console_stack.call("POST", "/stripe/v1/charges", vault_key,
                              data={"amount": 500, "currency": "usd"}).status_code == 200
    rows = console_stack.wait_audit(lambda rs: any(r["stage"] == "outcome" for r in rs), key_id=key_id)
    pages = ["/admin/ui/keys", "/admin/ui/keys?label_prefix=console-secrets",
             "/admin/ui/keys/revoke?label_prefix=console-secrets", f"/admin/ui/audit?key_id={key_id}",
             "/admin/ui/audit", f"/admin/ui/audit/{rows[-1]['seq']}", "/admin/ui/health",
             f"/admin/ui/api/activity?key_id={key_id}"]
    for path in pages:
        r = session.get(path)
        assert r.status_code == 200, (path, r.status_code)
        for secret in (ADMIN_KEY, REAL_KEY, vault_key):
            assert secret not in r.text, (path, secret[:6])
    assert ADMIN_KEY not in made.text and REAL_KEY not in made.text

    activity = session.get("/admin/ui/api/activity", params={"key_id": key_id, "hours": 1}).json()
    assert activity["minutes"] == 60 and sum(activity["spend_micros"]) == 5_000_000 and sum(activity["allowed"]) == 1
    assert session.get("/admin/ui/api/activity", params={"hours": 25}).status_code == 400
    health = session.get("/admin/ui/health").text
    assert 'id="storage" data-ok="true"' in health and 'id="chain" data-ok="true"' in health
    assert 'data-counter="wasmcustom.keybrake.requests_allowed"' in health


def test_wrong_logins_are_refused_and_counted_with_the_apis(console_stack):
    # Straight to the control service from a loopback address of this test's
    # own, so the limiter (per source, shared with the admin API) blocks no
    # other test. (X-Forwarded-For from a direct client is ignored.)
    direct = f"http://127.0.0.1:{console_stack.http_port}"
    with client_from("127.0.0.23") as me:
        for _ in range(10):
            r = me.post(f"{direct}/admin/ui/login", data={"admin_key": "kb_admin_guess_0123456789"})
            assert r.status_code == 401 and "set-cookie" not in r.headers
        blocked = me.post(f"{direct}/admin/ui/login", data={"admin_key": ADMIN_KEY})
        assert blocked.status_code == 429 and "set-cookie" not in blocked.headers, "even the right key, for the window"
        api = me.get(f"{direct}/admin/vault_keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert api.status_code == 429, "one limiter for the console and the API"
    with client_from("127.0.0.24") as elsewhere:
        assert elsewhere.post(f"{direct}/admin/ui/login", data={"admin_key": ADMIN_KEY}).status_code == 303
    metrics = httpx.get(f"{direct}/metrics").text
    assert re.search(r'keybrake_errors_total\{kind="admin_auth_failed"\} (\d+)', metrics)


def test_refusals_leave_connections_reusable(console_stack):
    # A refusal sent before the body is read would close the connection under
    # Envoy's pool, and Envoy could answer the next request on it with a 503.
    with anonymous(console_stack) as c:
        for _ in range(300):
            assert c.post("/admin/ui/keys", data={"label": "x" * 500}).status_code == 401
            assert c.get("/admin/ui/keys").status_code == 303
        api = c.get("/admin/ui/api/activity")
        assert api.status_code == 401 and api.json()["error"]["code"] == "no_session"
