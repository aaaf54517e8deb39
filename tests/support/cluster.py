"""Several control replicas and several Envoys on one PostgreSQL, for the
multi-node tests. Each Envoy's control cluster lists every replica (their
gRPC Unix sockets); the admin API goes to replica 0's admin socket. Each
replica's admin API also listens on a loopback TCP port (`http_ports`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support import processes
from support.stack import ADMIN_KEY, REAL_KEY, ROOT, control_binary, envoy_binary, envoy_config, filter_wasm, free_port, \
    read_ready_line, socket_dir


def postgres_url() -> str | None:
    return os.environ.get("KEYBRAKE_TEST_DATABASE_URL") or None


def fresh_database(admin_url: str) -> str:
    name = f"kbe2e_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin_url, "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return admin_url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Cluster:
    workdir: Path
    database_url: str
    replicas: int = 2
    envoys: int = 2
    upstream_port: int = 0
    http_ports: list[int] = field(default_factory=list)
    listen_ports: list[int] = field(default_factory=list)
    admin_ports: list[int] = field(default_factory=list)
    procs: dict[str, processes.Proc] = field(default_factory=dict)
    sockets: Path | None = None
    # Extra environment for every replica (KEYBRAKE_LEASE_SECONDS, ...).
    control_env: dict[str, str] = field(default_factory=dict)

    def grpc_socket(self, i: int) -> Path:
        assert self.sockets is not None
        return self.sockets / f"grpc{i}.sock"

    def http_socket(self, i: int) -> Path:
        assert self.sockets is not None
        return self.sockets / f"http{i}.sock"

    def start(self) -> "Cluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sockets = socket_dir()
        up = processes.launch("stand-in", [sys.executable, ROOT / "tests" / "standin" / "stripe_standin.py", "--port", "0",
                                           "--expect-key", REAL_KEY], self.workdir / "upstream.log", stdout_pipe=True)
        self.procs["upstream"] = up
        self.upstream_port = int(read_ready_line(up, "READY").split()[1])
        # Port 0 at first start: a port picked beforehand could be taken (for
        # instance by another replica's database connections) before the
        # replica binds it. A restart reuses the ports the replica reported.
        self.http_ports = [0] * self.replicas
        # The Envoys' ports first: each replica's MCP endpoint calls a gateway (KEYBRAKE_GATEWAY_URL).
        self.listen_ports = [free_port() for _ in range(self.envoys)]
        self.admin_ports = [free_port() for _ in range(self.envoys)]
        for i in range(self.replicas):
            self.start_replica(i)
        for i in range(self.envoys):
            self.start_envoy(i)
        return self

    def start_replica(self, i: int) -> None:
        env = {**os.environ, "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
               "KEYBRAKE_DATABASE_URL": self.database_url, "KEYBRAKE_GRPC_LISTEN": f"unix:{self.grpc_socket(i)}",
               "KEYBRAKE_HTTP_SOCKET": str(self.http_socket(i)), "KEYBRAKE_HTTP_LISTEN": f"127.0.0.1:{self.http_ports[i]}",
               "KEYBRAKE_DATA_DIR": str(self.workdir / f"data{i}"),
               "KEYBRAKE_GATEWAY_URL": f"http://127.0.0.1:{self.listen_ports[i % self.envoys]}", **self.control_env}
        proc = processes.launch(f"control{i}", [control_binary(), "serve"], self.workdir / f"control{i}.log", env=env,
                                 stdout_pipe=True)
        self.procs[f"control{i}"] = proc
        ready_line = read_ready_line(proc, "READY")
        bound = dict(part.split("=", 1) for part in ready_line.split()[1:])
        assert bound["grpc"] == f"unix:{self.grpc_socket(i)}", bound
        self.http_ports[i] = int(bound["http"].rsplit(":", 1)[1])
        ready = httpx.get(f"http://127.0.0.1:{self.http_ports[i]}/readyz", timeout=10).json()
        assert ready["storage"] == "postgres", ready

    def start_envoy(self, i: int) -> None:
        """Starts Envoy `i` on the ports picked at start (again on them for a restart)."""
        config = envoy_config.render(
            listen_port=self.listen_ports[i], admin_port=self.admin_ports[i],
            control_grpc=",".join(f"unix:{self.grpc_socket(r)}" for r in range(self.replicas)),
            control_http=f"unix:{self.http_socket(0)}",
            stripe_url=f"http://127.0.0.1:{self.upstream_port}", wasm_path=str(filter_wasm()))
        path = self.workdir / f"envoy{i}.yaml"
        path.write_text(config)
        log = self.workdir / f"envoy{i}.log"
        proc = processes.launch(f"envoy{i}", [envoy_binary(), "-c", path, "--concurrency", "2", "--disable-hot-restart",
                                              "-l", "warning", "--log-path", log], log)
        self.procs[f"envoy{i}"] = proc
        processes.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{self.admin_ports[i]}/ready", timeout=1).text.strip() == "LIVE",
                             f"envoy{i} to be ready", [proc])

    def kill(self, name: str) -> None:
        processes.stop(self.procs.pop(name), signal.SIGKILL)

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: (not n.startswith("envoy"), n)):
            processes.stop(self.procs[name])
        self.procs.clear()
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)

    def url(self, envoy: int) -> str:
        return f"http://127.0.0.1:{self.listen_ports[envoy]}"

    def admin(self, method: str, path: str, json_body=None, **kw) -> httpx.Response:
        return httpx.request(method, self.url(0) + path, json=json_body, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             timeout=30, **kw)

    def issue_key(self, **fields) -> dict:
        body = {"label": "cluster", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"], "daily_usd_cap": 1000,
                "expires_in_seconds": 3600, **fields}
        r = self.admin("POST", "/admin/vault_keys", body)
        assert r.status_code == 201, r.text
        return r.json()

    def upstream_requests(self, **filters) -> list[dict]:
        return httpx.get(f"http://127.0.0.1:{self.upstream_port}/__standin/requests", params=filters, timeout=10).json()

    def set_faults(self, **faults) -> None:
        httpx.post(f"http://127.0.0.1:{self.upstream_port}/__standin/faults", json=faults, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"http://127.0.0.1:{self.upstream_port}/__standin/faults", timeout=10).raise_for_status()
