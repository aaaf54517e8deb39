"""The admin API counts failed authentications per client address, and takes
that address from `X-Forwarded-For` only when the connection comes from a
trusted proxy: Envoy over the control service's admin socket, or a TCP peer
listed in --trusted-proxies. A direct TCP client's header is ignored (SECURITY.md,
"Guessing is slow").

Every client here connects from an address of its own in 127.0.0.0/8
(`client_from`), so the tests share one stack without sharing a budget.
"""
from __future__ import annotations

import pytest

from support.stack import ADMIN_KEY, Stack, client_from

WRONG = {"Authorization": "Bearer kb_admin_wrong_guess_000000"}
RIGHT = {"Authorization": f"Bearer {ADMIN_KEY}"}
# A TCP peer the stack trusts as a proxy (--trusted-proxies).
PROXY = "127.0.0.61"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("proxies"), control_env={"KEYBRAKE_TRUSTED_PROXIES": PROXY}).start()
    yield s
    s.stop()


def direct(s: Stack) -> str:
    return f"http://127.0.0.1:{s.http_port}"


def fail_ten_times(client, url: str, forwarded_for=lambda i: None) -> None:
    for i in range(10):
        xff = forwarded_for(i)
        r = client.get(f"{url}/admin/vault_keys", headers={**WRONG, **({"X-Forwarded-For": xff} if xff else {})})
        assert r.status_code == 401, (i, r.text)


def test_a_direct_client_rotating_x_forwarded_for_is_still_limited(stack):
    """Before: each made-up address had its own ten guesses, so guessing was
    unlimited. Now the direct peer is the source, whatever the header says."""
    with client_from("127.0.0.31") as c:
        fail_ten_times(c, direct(stack), lambda i: f"203.0.113.{i + 1}")
        blocked = c.get(f"{direct(stack)}/admin/vault_keys", headers={**RIGHT, "X-Forwarded-For": "203.0.113.200"})
        assert blocked.status_code == 429, blocked.text
        assert blocked.json()["error"]["code"] == "too_many_failed_attempts"
        # The console's login shares the limiter and the source.
        login = c.post(f"{direct(stack)}/admin/ui/login", data={"admin_key": ADMIN_KEY},
                       headers={"X-Forwarded-For": "203.0.113.201"})
        assert login.status_code == 429 and "set-cookie" not in login.headers
    with client_from("127.0.0.32") as other:
        assert other.get(f"{direct(stack)}/admin/vault_keys", headers=RIGHT).status_code == 200, "per source"


def test_forged_failures_do_not_lock_out_the_address_envoy_reports(stack):
    """Ten failures sent straight to the control service in the name of a
    victim (its address in X-Forwarded-For) count against the sender, and the
    victim, calling through Envoy, is not locked out."""
    victim, attacker = "127.0.0.42", "127.0.0.41"
    with client_from(attacker) as c:
        fail_ten_times(c, direct(stack), lambda i: victim)
        assert c.get(f"{direct(stack)}/admin/vault_keys", headers=RIGHT).status_code == 429, "the sender is limited"
    with client_from(victim) as v:
        r = v.get(f"{stack.url}/admin/vault_keys", headers=RIGHT)
        assert r.status_code == 200, r.text
        assert v.post(f"{stack.url}/admin/ui/login", data={"admin_key": ADMIN_KEY}).status_code == 303


def test_through_envoy_the_limiter_counts_each_client(stack):
    """Through Envoy (over the admin socket) the source is the address Envoy
    appended, not what the client wrote: a client rotating its own
    X-Forwarded-For through the gateway is limited after ten failures, and
    another client of the same gateway is not."""
    with client_from("127.0.0.51") as c:
        fail_ten_times(c, stack.url, lambda i: f"198.51.100.{i + 1}")
        blocked = c.get(f"{stack.url}/admin/vault_keys", headers={**RIGHT, "X-Forwarded-For": "198.51.100.99"})
        assert blocked.status_code == 429, blocked.text
    with client_from("127.0.0.52") as other:
        assert other.get(f"{stack.url}/admin/vault_keys", headers=RIGHT).status_code == 200
    # Not the direct peer either: the gateway's own requests were never counted as one source.
    with client_from("127.0.0.53") as third:
        assert third.get(f"{stack.url}/admin/vault_keys", headers=RIGHT).status_code == 200


def test_a_tcp_peer_in_trusted_proxies_is_believed(stack):
    """--trusted-proxies: from the listed peer, the last X-Forwarded-For
    element is the client; the same header from an unlisted peer is ignored."""
    with client_from(PROXY) as proxy:
        fail_ten_times(proxy, direct(stack), lambda i: "192.0.2.71")
        # The client it named is limited; the proxy's other clients are not.
        named = proxy.get(f"{direct(stack)}/admin/vault_keys", headers={**RIGHT, "X-Forwarded-For": "192.0.2.71"})
        assert named.status_code == 429
        fine = proxy.get(f"{direct(stack)}/admin/vault_keys",
                         headers={**RIGHT, "X-Forwarded-For": "192.0.2.71, 192.0.2.72"})
        assert fine.status_code == 200, "the proxy's own element is the last one"
    with client_from("127.0.0.62") as unlisted:
        r = unlisted.get(f"{direct(stack)}/admin/vault_keys", headers={**RIGHT, "X-Forwarded-For": "192.0.2.73"})
        assert r.status_code == 200
        fail_ten_times(unlisted, direct(stack), lambda i: "192.0.2.73")
        assert unlisted.get(f"{direct(stack)}/admin/vault_keys", headers=RIGHT).status_code == 429
    with client_from(PROXY) as proxy:
        r = proxy.get(f"{direct(stack)}/admin/vault_keys", headers={**RIGHT, "X-Forwarded-For": "192.0.2.73"})
        assert r.status_code == 200, "the unlisted peer's header named nobody"
