"""Faults, end to end: the control service killed under load, the upstream
resetting or stalling after it took a charge, Envoy restarted mid-run, the
database's disk full or read-only, audit storage failing. Money-moving calls
fail closed, nothing is forwarded without a durable reservation, and nothing
reserved is lost."""
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from support.stack import Stack, wait_for


def charge(s: Stack, vk: str, customer: str, amount: int = 1000, **kw) -> httpx.Response:
    return s.call("POST", "/stripe/v1/charges", vk, data={"amount": amount, "currency": "usd", "customer": customer}, **kw)


def usage(s: Stack, key_id: str) -> dict:
    return s.admin("GET", f"/admin/vault_keys/{key_id}").json()


def intents_cover_every_upstream_charge(s: Stack, key_id: str) -> None:
    """Each charge the upstream saw carries the derived Idempotency-Key of an
    intent row that was durable before it was forwarded."""
    intents = {r["forwarded_idempotency_key"] for r in s.audit(key_id=key_id) if r["stage"] == "intent"}
    seen = [r["headers"].get("idempotency-key") for r in s.upstream_requests(method="POST", path="/v1/charges")]
    assert seen and all(k in intents for k in seen), "a charge reached the upstream without a recorded intent"


@pytest.fixture
def tmpfs(tmp_path):
    """A small filesystem of the test's own (needs root, as CI runs here)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill or freeze needs root")
    mounts = []

    def make(size: str) -> Path:
        path = tmp_path / f"fs{len(mounts)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_killing_the_control_service_under_load_fails_closed_and_loses_nothing(fresh_stack):
    s: Stack = fresh_stack()
    key = s.issue_key(label="kill-under-load", daily_usd_cap=100000)
    stop = threading.Event()
    calls: list[tuple[str, float, float, int]] = []  # (customer, start, end, status) of every call
    lock = threading.Lock()

    def worker(w: int):
        n = 0
        while not stop.is_set():
            n += 1
            customer, start = f"cus_{w}_{n}", time.monotonic()
            try:
                code = charge(s, key["vault_key"], customer).status_code
            except httpx.HTTPError:
                code = -1
            with lock:
                calls.append((customer, start, time.monotonic(), code))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: s.upstream_counts()["charges"] >= 30, what="charges flowing")
    s.stop_process("control", signal.SIGKILL)
    killed = time.monotonic()
    # Calls made while it is down; how many depends on the machine's speed, not whether they fail closed.
    wait_for(lambda: sum(1 for _, start, _, _ in list(calls) if start > killed) >= 16, what="calls while it is down")
    restarting = time.monotonic()
    s.start_control()
    wait_for(lambda: [c for *_, c in calls[-10:]].count(200) == 10, what="recovery")
    stop.set()
    for t in threads:
        t.join()

    # Calls made entirely while the control service was down failed closed, every one, and reached nothing.
    while_down = {customer: code for customer, start, end, code in calls if start > killed and end < restarting}
    assert while_down and set(while_down.values()) == {503}, f"calls while down must fail closed: {while_down}"
    reached = {r["params"]["customer"] for r in s.upstream_requests(method="POST", path="/v1/charges")}
    assert not reached & set(while_down), f"forwarded while the control service was down: {reached & set(while_down)}"
    intents_cover_every_upstream_charge(s, key["id"])
    upstream_cents = sum(int(r["params"]["amount"]) for r in s.upstream_requests(method="POST", path="/v1/charges"))

    def settled():
        u = usage(s, key["id"])
        return u["reserved_usd"] == 0 and round((u["spent_today_usd"] + u["uncertain_usd"]) * 100) == upstream_cents and u

    wait_for(settled, what=f"every reservation settled or counted as uncertain ({upstream_cents} cents upstream)")


def test_an_upstream_slow_past_the_timeout_is_uncertain_and_its_retry_charges_once(fresh_stack):
    s: Stack = fresh_stack(stripe_timeout="1s", upstream_args=["--honor-idempotency"])
    key = s.issue_key(label="slow-upstream")
    s.set_faults(delay_ms=1500, match_path="/v1/charges")
    try:
        slow = charge(s, key["vault_key"], "cus_slow", 2500)
    finally:
        s.clear_faults()
    assert slow.status_code == 504
    u = usage(s, key["id"])
    assert (u["uncertain_usd"], u["spent_today_usd"]) == (25.0, 0.0), "the money may have moved: it stays counted"
    retry = charge(s, key["vault_key"], "cus_slow", 2500)
    assert retry.status_code == 200
    assert s.upstream_counts()["charges"] == 1, "the retry went out with the same key: Stripe returned the original"
    u = usage(s, key["id"])
    assert (u["uncertain_usd"], u["spent_today_usd"]) == (0.0, 25.0)


def test_restarting_envoy_under_load_charges_each_customer_once(fresh_stack):
    """Clients retry what failed, as the SDKs and schedulers do. Calls cut by the
    restart stay uncertain until their lease runs out, then go out again with
    the same upstream key: each customer is charged exactly once."""
    s: Stack = fresh_stack(upstream_args=["--honor-idempotency"], control_env={"KEYBRAKE_LEASE_SECONDS": "3"})
    key = s.issue_key(label="envoy-restart", daily_usd_cap=100000)
    done: dict[str, str] = {}
    customers = [f"cus_{i}" for i in range(40)]

    def client(batch: list[str]):
        for customer in batch:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    r = charge(s, key["vault_key"], customer)
                    if r.status_code == 200:
                        done[customer] = r.json()["id"]
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(customers[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 8, what="charges before the restart")
    s.stop_process("envoy", signal.SIGKILL)
    time.sleep(0.5)
    s.start_envoy()
    for t in threads:
        t.join()
    assert sorted(done) == sorted(customers)
    per_customer: dict[str, int] = {}
    for r in s.upstream_requests(method="POST", path="/v1/charges"):
        if r["status"] == 200 and r["headers"].get("idempotent-replayed") is None:
            per_customer[r["params"]["customer"]] = per_customer.get(r["params"]["customer"], 0) + 1
    assert s.upstream_counts()["charges"] == 40, "one charge per customer at the upstream"
    wait_for(lambda: usage(s, key["id"])["spent_today_usd"] + usage(s, key["id"])["uncertain_usd"] == 400.0,
             timeout=30, what="every charge counted")


def reloads(s: Stack) -> int:
    stats = s.envoy_stats()
    return int(stats.split("extension_config_discovery.http_filter.keybrake.config_reload: ", 1)[1].split()[0])


def test_reloading_the_filter_under_load_loses_nothing(fresh_stack):
    """The filter swapped three times under load through Envoy's extension
    config discovery, as Istio rolls out a new WasmPlugin: each version runs
    in VMs of its own while requests already inside the old one finish there.
    Every call is answered, charged once, settled and audited, with an id of its own."""
    s: Stack = fresh_stack(filter_discovery=True)
    key = s.issue_key(label="filter-reload", daily_usd_cap=100000)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(w: int):
        n = 0
        while not stop.is_set():
            n += 1
            r = charge(s, key["vault_key"], f"cus_{w}_{n}")
            with lock:
                results.append((r.status_code, r.headers.get("keybrake-call-id", "")))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        assert reloads(s) == 1
        for version in range(1, 4):
            wait_for(lambda: len(results) >= 40 * version, what="charges between reloads")
            s.reload_filter(f"keybrake-v{version}")
            wait_for(lambda: reloads(s) == 1 + version, what=f"version {version} loaded")
        wait_for(lambda: len(results) >= 160, what="charges after the last reload")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert [code for code, _ in results] == [200] * len(results)
    ids = [call_id for _, call_id in results]
    assert len(set(ids)) == len(results), "a call id was given twice"
    # Four versions of the filter, each in VMs of its own (one per worker).
    assert len({i[:21] for i in ids}) >= 4
    assert s.upstream_counts()["charges"] == len(results), "one upstream charge per answered call"
    expected_usd = 10.0 * len(results)
    wait_for(lambda: usage(s, key["id"])["spent_today_usd"] == expected_usd, timeout=30, what="every charge settled")
    assert usage(s, key["id"])["uncertain_usd"] == 0
    intents_cover_every_upstream_charge(s, key["id"])
    settled = {r["call_id"] for r in s.audit(key_id=key["id"], limit=1000) if r["stage"] in ("outcome", "call")}
    assert set(ids) <= settled, "a call without its outcome in the audit log"


def test_a_full_disk_fails_closed_with_a_clear_error_and_recovers(fresh_stack, tmpfs):
    """With the disk full, SQLite keeps writing into the space its WAL already
    owns (and reuses it after a checkpoint), so some calls may still be
    recorded, durably, and go through, in any order with the refusals. What
    holds whatever the order: every call is either recorded and forwarded, or
    refused with a clear error and not forwarded."""
    fs = tmpfs("6m")
    s: Stack = fresh_stack(control_env={"KEYBRAKE_DATA_DIR": str(fs / "data")})
    key = s.issue_key(label="disk-full", daily_usd_cap=100000)
    assert charge(s, key["vault_key"], "cus_before").status_code == 200
    filler = fs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
    answered: dict[str, int] = {"cus_before": 200}
    refused = 0
    for i in range(400):
        customer = f"cus_full_{i}"
        r = charge(s, key["vault_key"], customer)
        answered[customer] = r.status_code
        if r.status_code != 200:
            assert r.status_code == 503 and r.json()["error"]["code"] == "keybrake_storage_unavailable", \
                f"a call the full disk could not record must be refused with the storage error, got {r.status_code}: {r.text}"
            refused += 1
            if refused == 5:
                break
    assert refused == 5, f"with the disk full, calls must end up refused; answers: {sorted(answered.values())}"
    upstream = [r["params"]["customer"] for r in s.upstream_requests(method="POST", path="/v1/charges")]
    forwarded_refusals = [c for c in upstream if answered.get(c) != 200]
    assert not forwarded_refusals, f"refused calls reached the upstream: {forwarded_refusals}"
    assert sorted(upstream) == sorted(c for c, code in answered.items() if code == 200), \
        "every call answered 200 was forwarded once, and nothing else"
    intents_cover_every_upstream_charge(s, key["id"])
    assert "full" in (s.workdir / "control.log").read_text().lower()
    filler.unlink()
    wait_for(lambda: charge(s, key["vault_key"], f"cus_after_{uuid.uuid4().hex[:6]}").status_code == 200,
             timeout=60, what="recovery once space is back")


def test_a_read_only_database_fails_closed_and_recovers(fresh_stack):
    """The database files become unwritable under the running service (the
    immutable attribute stops even root's open descriptors)."""
    if os.geteuid() != 0:
        pytest.skip("setting the immutable attribute needs root")
    s: Stack = fresh_stack()
    key = s.issue_key(label="read-only")
    assert charge(s, key["vault_key"], "cus_rw").status_code == 200
    # The database and its WAL (written with write()); not the -shm index, which
    # SQLite memory-maps: freezing it would kill the process (SIGBUS), not test it.
    files = [str(s.workdir / "data" / f) for f in ("keybrake.db", "keybrake.db-wal")]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        before = s.upstream_counts()["charges_attempted"]
        for i in range(3):
            r = charge(s, key["vault_key"], f"cus_ro_{i}")
            assert r.status_code == 503 and r.json()["error"]["code"] == "keybrake_storage_unavailable", r.text
        assert s.upstream_counts()["charges_attempted"] == before
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    wait_for(lambda: charge(s, key["vault_key"], f"cus_rw_{uuid.uuid4().hex[:6]}").status_code == 200,
             timeout=20, what="recovery once writable")


def test_failing_audit_storage_refuses_money_moving_calls(fresh_stack):
    """The audit row of a call's intent is written in the same transaction as
    its reservation: if the audit log cannot take it, the call is refused."""
    s: Stack = fresh_stack()
    key = s.issue_key(label="audit-down", allowed_endpoints=["POST /v1/charges", "GET /v1/charges/*"])
    ok = charge(s, key["vault_key"], "cus_ok")
    db = sqlite3.connect(s.workdir / "data" / "keybrake.db", timeout=10)
    db.execute("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit storage failing'); END")
    db.commit()
    try:
        before = s.upstream_counts()["charges_attempted"]
        r = charge(s, key["vault_key"], "cus_unrecorded")
        assert r.status_code == 503 and r.json()["error"]["code"] == "keybrake_storage_unavailable"
        assert s.upstream_counts()["charges_attempted"] == before, "not forwarded unrecorded"
        assert usage(s, key["id"])["reserved_usd"] == 0.0, "the reservation rolled back with the audit row"
    finally:
        db.execute("DROP TRIGGER audit_down")
        db.commit()
        db.close()
    assert charge(s, key["vault_key"], "cus_back").status_code == 200
    assert ok.status_code == 200
