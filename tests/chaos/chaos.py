#!/usr/bin/env python3
"""A chaos run of the real stack: two Envoys with the filter, two control
replicas on one PostgreSQL, the Stripe stand-in without deduplication (every
duplicate the gateway let through would show), and clients using the official
Stripe SDK the way our users' jobs do — while a nemesis kills and pauses
replicas, restarts PostgreSQL and Envoy, fills PostgreSQL's disk, and makes
the upstream lose answers after it charged.

Afterwards everything is healed, every call settles (or its lease runs out),
and a checker reads the stand-in's record and the ledger:

  1. money accepted upstream per key and UTC day <= the key's cap;
  2. each logical operation accepted upstream at most once;
  3. every accepted call carries the derived or caller key of an intent row
     that was durable before it was forwarded (nothing forwarded unrecorded);
  4. the ledger never counts less than what moved (committed + uncertain);
  5. no call is authorized after its key's revocation was acknowledged;
  6. every call a client saw succeed is in the audit log.

    scripts/chaos.sh [MINUTES]        (or: .venv/bin/python tests/chaos/chaos.py --minutes M --seed S)

Loopback only; the run is bounded in time, and its faults by their count per
minute. The seed drives the workload and the nemesis's choices (the
machine's timing does the rest: a failure is reproduced by its invariants,
not replayed; sim/ is the deterministic counterpart). Exit code 0 when
every invariant held."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import stripe  # noqa: E402

from support import processes  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.stack import ADMIN_KEY  # noqa: E402

LEASE_SECONDS = 3


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------
# A PostgreSQL of the run's own (so it can be restarted and its disk filled)


class Postgres:
    def __init__(self, workdir: Path):
        self.bin = self._bin()
        self.dir = workdir / "pg"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmpfs = os.geteuid() == 0  # a small filesystem of its own, to fill
        self.data = self.dir / "data"
        self.port = 0

    @staticmethod
    def _bin() -> Path:
        for v in sorted(os.listdir("/usr/lib/postgresql"), reverse=True):
            b = Path("/usr/lib/postgresql") / v / "bin"
            if (b / "pg_ctl").exists():
                return b
        raise RuntimeError("PostgreSQL is missing: scripts/setup.sh postgres")

    def _as_owner(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, **kw)

    def start(self) -> str:
        if self.tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(self.dir)], check=True)
            shutil.chown(self.dir, "postgres")
        init = self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", "keybrake", "--auth=trust",
                              "-E", "UTF8")
        assert init.returncode == 0, init.stderr
        from support.stack import free_port
        self.port = free_port()
        self.pg_ctl("start")
        return f"postgres://keybrake@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=32MB"
        return self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                              "-t", "300", "-m", "fast", "-o", opts, action, *extra)

    def fill(self) -> Path | None:
        if not self.tmpfs:
            return None
        filler = self.dir / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        return filler

    def stop(self) -> None:
        self.pg_ctl("stop")
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.dir)], check=False)


# --------------------------------------------------------------------------
# What happened


@dataclass
class History:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    # key id -> cap in cents (None: no cap)
    caps: dict[str, int | None] = field(default_factory=dict)
    # call ids of calls a client saw succeed (status 200 with a call id)
    succeeded: list[tuple[str, str]] = field(default_factory=list)  # (key id, call id)
    # key id -> wall time its revocation was acknowledged
    revoked: dict[str, float] = field(default_factory=dict)
    faults: Counter = field(default_factory=Counter)
    # Retries of uncertain calls the stand-in executed again under the same key (Stripe would not).
    repeated_same_key: int = 0

    def note(self, outcome: str, key_id: str = "", call_id: str = "") -> None:
        with self.lock:
            self.calls += 1
            self.outcomes[outcome] += 1
            if outcome == "200" and call_id:
                self.succeeded.append((key_id, call_id))


# --------------------------------------------------------------------------
# The jobs


class Jobs:
    """Clients that behave like our users' jobs, over both gateways."""

    def __init__(self, cluster: Cluster, history: History, rng: random.Random):
        self.c = cluster
        self.h = history
        self.seed = rng.randrange(1 << 30)
        self.stop = threading.Event()

    def admin(self, method: str, path: str, body=None) -> httpx.Response:
        """The admin API of any live replica (the gateways route /admin/ to replica 0 only)."""
        last = None
        for attempt in range(200):
            for i in range(self.c.replicas):
                if f"control{i}" not in self.c.procs:
                    continue
                try:
                    r = httpx.request(method, f"http://127.0.0.1:{self.c.http_ports[i]}{path}", json=body, timeout=10,
                                      headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                    if r.status_code < 500:
                        return r
                    last = r
                except httpx.HTTPError as e:
                    last = e
            time.sleep(0.1)
        raise RuntimeError(f"no replica answered {method} {path}: {last!r}")

    def issue(self, label: str, cap_usd: float | None, dedup: str = "content") -> dict:
        body = {"label": label, "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"], "expires_in_seconds": 3600,
                "dedup": dedup}
        if cap_usd is not None:
            body["daily_usd_cap"] = cap_usd
        r = self.admin("POST", "/admin/vault_keys", body)
        assert r.status_code == 201, r.text
        key = r.json()
        with self.h.lock:
            self.h.caps[key["id"]] = None if cap_usd is None else round(cap_usd * 100)
        return key

    def charge(self, key: dict, gateway: int, params: dict, idempotency_key: str | None = None) -> str | None:
        """One SDK call (with the SDK's own retries); the charge id, or None."""
        client = stripe.StripeClient(key["vault_key"], base_addresses={"api": f"{self.c.url(gateway)}/stripe"},
                                     max_network_retries=1)
        options = {"idempotency_key": idempotency_key} if idempotency_key else {}
        try:
            charge = client.v1.charges.create(params=params, options=options)
        except stripe.StripeError as e:
            self.h.note(str(e.http_status or "network"), key["id"])
            return None
        call_id = (charge.last_response.headers.get("keybrake-call-id") if charge.last_response else "") or ""
        self.h.note("200", key["id"], call_id)
        return charge.id

    def run(self, worker: int) -> None:
        rng = random.Random(self.seed + worker)
        n = 0
        while not self.stop.is_set():
            n += 1
            op = f"op-{worker}-{n}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
            kind = rng.choice(["rerun", "rerun", "stable", "serve", "actor", "cents"])
            getattr(self, kind)(rng, op)

    def params(self, op: str, cents: int) -> dict:
        return {"amount": cents, "currency": "usd", "customer": f"cus_{op}", "description": op}

    def rerun(self, rng: random.Random, op: str) -> None:
        """A Ray task re-run from its first line: a new client, a new random SDK key."""
        key = self.issue(f"chaos-rerun-{op}", 50)
        amount = 1000 + rng.randrange(2000)
        for attempt in range(4):
            # Re-run after a failure, and sometimes after a success (the write after it failed).
            if self.charge(key, rng.randrange(2), self.params(op, amount)) and rng.random() < 0.7:
                break
        self.maybe_revoke(rng, key)

    def stable(self, rng: random.Random, op: str) -> None:
        """Kestra with a content-hash key: the same Idempotency-Key on every attempt."""
        key = self.issue(f"chaos-stable-{op}", 50, dedup="idempotency_key")
        idem = hashlib.sha256(op.encode()).hexdigest()[:32]
        amount = 500 + rng.randrange(3000)
        for attempt in range(4):
            if self.charge(key, rng.randrange(2), self.params(op, amount), idem):
                break

    def serve(self, rng: random.Random, op: str) -> None:
        """A Serve request delivered again to another replica, which issues a new vault key."""
        amount = 500 + rng.randrange(2000)
        for attempt in range(3):
            key = self.issue(f"chaos-serve-{op}-{attempt}", 40)
            if self.charge(key, rng.randrange(2), self.params(op, amount)):
                break

    def actor(self, rng: random.Random, op: str) -> None:
        """An Actor's concurrent calls on one shared, capped key."""
        key = self.issue(f"chaos-actor-{op}", 60)
        threads = [threading.Thread(target=self.charge, args=(key, i % 2, self.params(f"{op}-{i}", 1500)))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.maybe_revoke(rng, key)

    def cents(self, rng: random.Random, op: str) -> None:
        """Dollars passed as cents: the cap must refuse it on the first call."""
        key = self.issue(f"chaos-cents-{op}", 30)
        self.charge(key, rng.randrange(2), self.params(op, 2999 * 100))

    def all_keys(self) -> dict[str, dict]:
        keys, after = {}, ""
        while True:
            page = self.admin("GET", f"/admin/vault_keys?limit=1000{'&starting_after=' + after if after else ''}").json()
            keys.update({k["id"]: k for k in page["data"]})
            if not page["has_more"]:
                return keys
            after = page["data"][-1]["id"]

    def maybe_revoke(self, rng: random.Random, key: dict) -> None:
        if rng.random() < 0.3:
            r = self.admin("DELETE", f"/admin/vault_keys/{key['id']}")
            assert r.status_code == 200, r.text
            if r.json().get("state") == "revoked":
                # Acknowledged by the replica that answered, after every live worker dropped the key.
                with self.h.lock:
                    self.h.revoked[key["id"]] = time.time()
            # Calls after the acknowledgement: every one must be refused.
            self.charge(key, rng.randrange(2), self.params(f"after-revoke-{key['id']}", 100))


# --------------------------------------------------------------------------
# The nemesis


class Nemesis:
    def __init__(self, cluster: Cluster, pg: Postgres, history: History, rng: random.Random):
        self.c, self.pg, self.h, self.rng = cluster, pg, history, rng
        self.stop = threading.Event()
        self.paused: set[str] = set()

    def run(self) -> None:
        faults = ["kill_replica", "pause_replica", "restart_postgres", "restart_envoy", "lose_answer", "fill_disk"]
        while not self.stop.wait(self.rng.uniform(2.0, 5.0)):
            fault = self.rng.choice(faults)
            try:
                if getattr(self, fault)():
                    self.h.faults[fault] += 1
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                log(f"{fault} could not be injected: {e!r}")

    def live_replicas(self) -> list[int]:
        return [i for i in range(self.c.replicas) if f"control{i}" in self.c.procs]

    def kill_replica(self) -> bool:
        i = self.rng.choice(self.live_replicas())
        log(f"SIGKILL control{i}")
        self.c.kill(f"control{i}")
        self.stop.wait(self.rng.uniform(0.5, 3.0))
        self.c.start_replica(i)
        return True

    def pause_replica(self) -> bool:
        i = self.rng.choice(self.live_replicas())
        proc = self.c.procs[f"control{i}"]
        log(f"SIGSTOP control{i}")
        proc.popen.send_signal(signal.SIGSTOP)
        self.stop.wait(self.rng.uniform(0.5, 3.0))
        proc.popen.send_signal(signal.SIGCONT)
        return True

    def restart_postgres(self) -> bool:
        log("restart PostgreSQL")
        r = self.pg.pg_ctl("restart")
        assert r.returncode == 0, r.stderr
        return True

    def restart_envoy(self) -> bool:
        i = self.rng.randrange(self.c.envoys)
        log(f"SIGKILL envoy{i}, then start it again")
        self.c.kill(f"envoy{i}")
        self.stop.wait(self.rng.uniform(0.2, 1.0))
        self.c.start_envoy(i)
        return True

    def lose_answer(self) -> bool:
        log("the upstream charges and loses the answer (reset), twice")
        self.c.set_faults(reset_after_receive=2, match_path="/v1/charges")
        return True

    def fill_disk(self) -> bool:
        filler = self.pg.fill()
        if filler is None:
            return False
        log("PostgreSQL's disk full")
        self.stop.wait(self.rng.uniform(1.0, 3.0))
        filler.unlink()
        if self.pg.pg_ctl("status").returncode != 0:  # it may have stopped on a failed WAL write
            self.pg.pg_ctl("start")
        return True

    def heal(self) -> None:
        self.c.clear_faults()
        if self.pg.pg_ctl("status").returncode != 0:
            self.pg.pg_ctl("start")
        for i in range(self.c.replicas):
            proc = self.c.procs.get(f"control{i}")
            if proc is None or not proc.alive():
                self.c.procs.pop(f"control{i}", None)
                self.c.start_replica(i)
            else:
                proc.popen.send_signal(signal.SIGCONT)
        for i in range(self.c.envoys):
            proc = self.c.procs.get(f"envoy{i}")
            if proc is None or not proc.alive():
                self.c.procs.pop(f"envoy{i}", None)
                self.c.start_envoy(i)


# --------------------------------------------------------------------------
# The checker


def check(cluster: Cluster, jobs: Jobs, history: History) -> list[str]:
    problems: list[str] = []
    upstream = cluster.upstream_requests(method="POST", path="/v1/charges")
    accepted = [r for r in upstream if r.get("answer")]
    audit = [json.loads(line) for line in
             jobs.admin("GET", "/admin/audit?format=jsonl&order=asc").text.splitlines() if line.strip()]
    intents = {r["forwarded_idempotency_key"]: r for r in audit if r["stage"] == "intent"}
    # 3. nothing forwarded unrecorded (every forwarded charge carries an intent's upstream key)
    key_of: dict[int, str] = {}
    for r in upstream:
        sent = r["headers"].get("idempotency-key", "")
        intent = intents.get(sent)
        if intent is None:
            problems.append(f"forwarded without a recorded intent: {r['params'].get('description')} (key {sent!r})")
        else:
            key_of[r["seq"]] = intent["key_id"]
    # The stand-in does not deduplicate, so every duplicate the gateway sent shows. A
    # call whose outcome was uncertain (the answer was lost) is retried with the
    # same Idempotency-Key, by design: Stripe returns the original for it. What
    # Stripe would execute is one per (operation, forwarded key); the gateway must
    # never send one operation under two keys.
    repeats = Counter((r["params"].get("description"), r["headers"].get("idempotency-key")) for r in accepted)
    history.repeated_same_key = sum(n - 1 for n in repeats.values())
    executed = {(r["params"].get("description"), r["headers"].get("idempotency-key")): r for r in accepted}
    # 2. each logical operation accepted at most once
    per_op = Counter(op for op, _ in executed)
    problems += [f"operation {op} accepted upstream under {n} different idempotency keys"
                 for op, n in per_op.items() if n > 1]
    # 1. per key and day (one day: the run is short), money accepted upstream <= cap
    moved: dict[str, int] = defaultdict(int)
    for r in executed.values():
        if r["seq"] in key_of:
            moved[key_of[r["seq"]]] += int(r["answer"]["amount"])
    for key_id, cents in moved.items():
        cap = history.caps.get(key_id)
        if cap is not None and cents > cap:
            problems.append(f"key {key_id}: {cents} cents accepted upstream over its cap of {cap}")
    # 4. the ledger counts at least what moved
    keys = jobs.all_keys()
    for key_id, cents in moved.items():
        shown = keys[key_id]
        counted = round((shown["spent_today_usd"] + shown["uncertain_usd"]) * 100)
        if counted < cents or shown["reserved_usd"] != 0:
            problems.append(f"key {key_id}: {cents} cents moved, the ledger counts {counted} "
                            f"(reserved {shown['reserved_usd']})")
    # 5. nothing authorized after an acknowledged revocation
    from datetime import datetime
    for row in audit:
        at = history.revoked.get(row["key_id"])
        if at is None or row["stage"] != "intent":
            continue
        when = datetime.fromisoformat(row["at"].replace("Z", "+00:00")).timestamp()
        if when > at:
            problems.append(f"key {row['key_id']}: call {row['call_id']} authorized {when - at:.3f} s after its "
                            f"revocation was acknowledged")
    # 6. every call a client saw succeed is in the audit log
    audited = {r["call_id"] for r in audit}
    problems += [f"a call the client saw succeed is not audited: {call_id} (key {key_id})"
                 for key_id, call_id in history.succeeded if call_id not in audited]
    return problems


def settle(cluster: Cluster, jobs: Jobs, history: History) -> None:
    """Waits until no key holds a reservation (settled, or uncertain after its lease)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pending = [k for k, v in jobs.all_keys().items() if v["reserved_usd"] != 0]
        if not pending:
            return
        time.sleep(0.5)
    raise RuntimeError(f"reservations still held after 120 s: {pending[:5]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--workdir", type=Path)
    a = p.parse_args()
    rng = random.Random(a.seed)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="keybrake-chaos-"))
    workdir.chmod(0o711)  # PostgreSQL's own user must reach its directory inside
    log(f"seed {a.seed}, {a.minutes} min, logs in {workdir}")
    pg = Postgres(workdir)
    url = pg.start()
    cluster = Cluster(workdir / "cluster", url, control_env={"KEYBRAKE_LEASE_SECONDS": str(LEASE_SECONDS)})
    history = History()
    try:
        cluster.start()
        jobs = Jobs(cluster, history, rng)
        nemesis = Nemesis(cluster, pg, history, rng)
        workers = [threading.Thread(target=jobs.run, args=(w,), daemon=True) for w in range(a.workers)]
        chaos = threading.Thread(target=nemesis.run, daemon=True)
        for t in [*workers, chaos]:
            t.start()
        time.sleep(a.minutes * 60)
        nemesis.stop.set()
        chaos.join()
        jobs.stop.set()
        for t in workers:
            t.join(timeout=180)
        nemesis.heal()
        settle(cluster, jobs, history)
        problems = check(cluster, jobs, history)
    finally:
        cluster.stop()
        pg.stop()
    log(f"calls made: {history.calls} ({dict(history.outcomes)})")
    log(f"faults injected: {sum(history.faults.values())} ({dict(history.faults)})")
    log(f"keys: {len(history.caps)}, revoked: {len(history.revoked)}; uncertain calls retried under the same "
        f"idempotency key (one charge at Stripe): {history.repeated_same_key}")
    if problems:
        log(f"INVARIANT VIOLATIONS: {len(problems)} (seed {a.seed}; logs in {workdir})")
        for problem in problems[:50]:
            print(f"  - {problem}", flush=True)
        return 1
    log("invariant violations: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
