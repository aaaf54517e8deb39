"""Past one machine: two control replicas and two Envoys sharing one
PostgreSQL. Caps, idempotency and the audit chain hold across all of them,
because the database's own atomicity decides, not any one process."""
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support.cluster import Cluster, fresh_database, postgres_url
from support.stack import ADMIN_KEY, wait_for

if not postgres_url():
    if os.environ.get("KEYBRAKE_REQUIRE_POSTGRES"):
        raise RuntimeError("KEYBRAKE_REQUIRE_POSTGRES is set but KEYBRAKE_TEST_DATABASE_URL is not")
    pytest.skip("needs a PostgreSQL server: set KEYBRAKE_TEST_DATABASE_URL (scripts/test.sh starts one)",
                allow_module_level=True)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "cluster", fresh_database(postgres_url())).start()
    yield c
    c.stop()


def charge(c: Cluster, envoy: int, vk: str, customer: str, amount: int = 1000, **headers) -> httpx.Response:
    return httpx.post(f"{c.url(envoy)}/stripe/v1/charges", headers={"Authorization": f"Bearer {vk}", **headers},
                      data={"amount": amount, "currency": "usd", "customer": customer}, timeout=30)


def charged_cents(c: Cluster) -> int:
    return sum(int(r["params"]["amount"]) for r in c.upstream_requests(method="POST", path="/v1/charges"))


def test_200_concurrent_charges_over_two_envoys_and_two_replicas_stop_at_the_cap(cluster):
    key = cluster.issue_key(label="multi-cohort")
    barrier = threading.Barrier(200)

    def one(i: int) -> int:
        barrier.wait()
        return charge(cluster, i % 2, key["vault_key"], f"cus_{i}").status_code

    with ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes.count(200) == 100 and codes.count(429) == 100, sorted(set(codes))
    assert len(cluster.upstream_requests(method="POST", path="/v1/charges")) == 100
    assert charged_cents(cluster) == 100_000
    shown = cluster.admin("GET", f"/admin/vault_keys/{key['id']}").json()
    assert (shown["spent_today_usd"], shown["reserved_usd"]) == (1000.0, 0.0)
    assert cluster.admin("GET", "/admin/audit/verify").json()["ok"]


def test_the_same_idempotency_key_at_both_envoys_at_once_is_forwarded_once(cluster):
    key = cluster.issue_key(label="multi-idem", dedup="idempotency_key")
    # The call that wins is held at the upstream until the other was answered,
    # so the other one surely meets it in flight (409), however slow the machine.
    cluster.set_faults(hold=True, match_path="/v1/charges")
    barrier = threading.Barrier(2)
    codes = [0, 0]

    def one(envoy: int):
        barrier.wait()
        codes[envoy] = charge(cluster, envoy, key["vault_key"], "cus_same", **{"Idempotency-Key": "order-9"}).status_code

    try:
        threads = [threading.Thread(target=one, args=(e,)) for e in (0, 1)]
        for t in threads:
            t.start()
        wait_for(lambda: 409 in codes, what="the second call refused while the first is in flight")
    finally:
        cluster.clear_faults()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    assert len(cluster.upstream_requests(method="POST", path="/v1/charges")) == 1
    again = charge(cluster, 1, key["vault_key"], "cus_same", **{"Idempotency-Key": "order-9"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"


def test_a_replica_killed_mid_run_loses_nothing(cluster):
    key = cluster.issue_key(label="multi-kill", daily_usd_cap=100000)
    stop = threading.Event()
    codes: list[int] = []

    def worker(w: int):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                codes.append(charge(cluster, w % 2, key["vault_key"], f"cus_{w}_{n}").status_code)
            except httpx.HTTPError:
                codes.append(-1)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(codes) >= 60, what="load running")
    cluster.kill("control1")
    killed_at = len(codes)
    wait_for(lambda: len(codes) >= killed_at + 60, timeout=60, what="load continuing on the surviving replica")
    stop.set()
    for t in threads:
        t.join()

    assert codes[-20:].count(200) == 20, "the surviving replica serves everything after the kill"
    upstream = charged_cents(cluster)

    def accounted():
        shown = cluster.admin("GET", f"/admin/vault_keys/{key['id']}").json()
        counted = round((shown["spent_today_usd"] + shown["uncertain_usd"]) * 100)
        return shown["reserved_usd"] == 0 and counted >= upstream and shown

    shown = wait_for(accounted, timeout=30, what="every upstream charge accounted for")
    assert round(shown["spent_today_usd"] * 100) <= upstream, "nothing counted that the upstream did not see"
    assert codes.count(200) * 1000 <= upstream
    assert cluster.admin("GET", "/admin/audit/verify").json()["ok"]


def test_a_revocation_on_one_replica_stops_cached_reads_at_every_envoy(cluster):
    key = cluster.issue_key(label="multi-revoke", allowed_endpoints=["GET /v1/charges/*"])
    for i in range(16):
        for envoy in (0, 1):
            r = httpx.get(f"{cluster.url(envoy)}/stripe/v1/charges/ch_{i}", headers={"Authorization": f"Bearer {key['vault_key']}"})
            assert r.status_code == 404
    revoked = cluster.admin("POST", "/admin/vault_keys/revoke", {"label_prefix": "multi-revoke"}).json()
    assert revoked["revoked"] == 1 and revoked["propagated"] is True
    for i in range(16):
        for envoy in (0, 1):
            r = httpx.get(f"{cluster.url(envoy)}/stripe/v1/charges/ch_{i}", headers={"Authorization": f"Bearer {key['vault_key']}"})
            assert r.status_code == 401, (envoy, r.text)


def test_a_console_session_is_known_to_every_replica_and_logout_ends_it_everywhere(cluster):
    """Sessions live in the shared database: a browser logged in through one
    replica is logged in at the other (a load balancer may send it to either),
    and logging out at one ends the session at both."""
    replica = [f"http://127.0.0.1:{port}" for port in cluster.http_ports]
    login = httpx.post(f"{replica[0]}/admin/ui/login", data={"admin_key": ADMIN_KEY}, timeout=10)
    assert login.status_code == 303 and login.headers["location"] == "/admin/ui/keys"
    cookies = {"keybrake_console": login.cookies["keybrake_console"]}
    page = httpx.get(f"{replica[1]}/admin/ui/keys", cookies=cookies, timeout=10)
    assert page.status_code == 200 and "Vault keys" in page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
    out = httpx.post(f"{replica[1]}/admin/ui/logout", data={"csrf": csrf}, cookies=cookies, timeout=10)
    assert out.status_code == 303 and out.headers["location"] == "/admin/ui/login"
    for url in replica:
        after = httpx.get(f"{url}/admin/ui/keys", cookies=cookies, timeout=10)
        assert after.status_code == 303 and after.headers["location"] == "/admin/ui/login", url


def test_a_suspension_at_one_gateway_stops_the_key_at_every_gateway(cluster):
    """A call through one Envoy and one replica moves more than was priced: the
    key's very next call, through the other Envoy (and replica), is refused."""
    key = cluster.issue_key(label="multi-suspend", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])
    warm = httpx.get(f"{cluster.url(1)}/stripe/v1/charges/ch_0", headers={"Authorization": f"Bearer {key['vault_key']}"})
    assert warm.status_code == 404, "a read the other gateway's workers may now decide from their cache"
    cluster.set_faults(overcharge_factor=100, match_path="/v1/charges")
    try:
        moved = charge(cluster, 0, key["vault_key"], "cus_over")
    finally:
        cluster.clear_faults()
    assert moved.status_code == 200 and moved.json()["amount"] == 100_000
    for envoy in (1, 0, 1):
        r = charge(cluster, envoy, key["vault_key"], f"cus_next_{envoy}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "vault_key_suspended", (envoy, r.text)
        read = httpx.get(f"{cluster.url(envoy)}/stripe/v1/charges/ch_0",
                         headers={"Authorization": f"Bearer {key['vault_key']}"})
        assert read.status_code == 401, (envoy, read.text)
    assert len(cluster.upstream_requests(method="POST", path="/v1/charges")) == 1


def test_a_replica_paused_through_a_revocation_does_not_decide_from_its_stale_cache(cluster):
    """Found by the chaos run: a replica frozen (SIGSTOP) longer than the
    revokers wait for a silent replica missed the revocation; resumed, it
    decided the calls queued meanwhile from the key it had cached before. A
    replica now decides from its cache only while it keeps up with the
    revocation log."""
    key = cluster.issue_key(label="multi-paused", daily_usd_cap=100000)
    for i in range(8):  # both replicas cache the key (Envoy spreads calls over them)
        assert charge(cluster, i % 2, key["vault_key"], f"cus_warm_{i}").status_code == 200
    paused = cluster.procs["control1"]
    paused.popen.send_signal(signal.SIGSTOP)
    codes: list[int] = []
    try:
        revoked = httpx.delete(f"http://127.0.0.1:{cluster.http_ports[0]}/admin/vault_keys/{key['id']}",
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        cluster.kill("control0")  # from now on Envoy can only reach the replica that was paused
        before = len(cluster.upstream_requests(method="POST", path="/v1/charges"))
        # Calls that queue at the frozen replica, decided the moment it resumes.
        threads = [threading.Thread(target=lambda i=i: codes.append(
            charge(cluster, i % 2, key["vault_key"], f"cus_after_{i}").status_code)) for i in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(_active_control_requests(cluster, e) for e in (0, 1)) >= 4, what="calls queued")
    finally:
        paused.popen.send_signal(signal.SIGCONT)
    for t in threads:
        t.join()
    assert set(codes) <= {401, 503} and 401 in codes, codes
    assert len(cluster.upstream_requests(method="POST", path="/v1/charges")) == before, "nothing forwarded"


def _active_control_requests(cluster, envoy: int) -> int:
    stats = httpx.get(f"http://127.0.0.1:{cluster.admin_ports[envoy]}/stats?filter=keybrake_control.upstream_rq_active",
                      timeout=5).text
    return sum(int(line.rsplit(" ", 1)[1]) for line in stats.splitlines() if line.strip())
