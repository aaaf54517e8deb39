"""Only the gateway can talk to the control service (SECURITY.md, "The
control channel"). A job that holds a vault key and can reach every port and
socket of its host must not be able to call Authorize itself, whose allow
answer carries the real Stripe key, nor Settle, RecordCalls or
WatchRevocations.

Every refusal is checked against the same probe (tests/e2e/scripts/
control_probe.py, a real gRPC client) succeeding for the gateway's own
credentials: the real key comes back to the gateway, and to nobody else.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys

import httpx
import pytest
import stripe

from support import processes
from support.stack import ADMIN_KEY, CONTROL_SERVER_NAME, REAL_KEY, ROOT, Stack, client_from, control_binary, make_tls, \
    read_ready_line, socket_dir

PROBE = ROOT / "tests" / "e2e" / "scripts" / "control_probe.py"
METHODS = ("Authorize", "Settle", "RecordCalls", "WatchRevocations")
OTHER_USER = "nobody"


def as_user(user: str, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", "--", *argv]


def probe(target: str, *args: str, user: str | None = None) -> dict:
    argv = [sys.executable, str(PROBE), target, *args]
    out = subprocess.run(as_user(user, argv) if user else argv, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def key_hash(vault_key: str) -> str:
    return hashlib.sha256(vault_key.encode()).hexdigest()


def assert_served(result: dict) -> None:
    """The gateway's own credentials: every method answers, and the allow
    answer carries the real key (what the refusals below must never give)."""
    assert {m: result[m]["code"] for m in METHODS} == dict.fromkeys(METHODS, "OK"), result
    assert REAL_KEY.encode().hex() in result["Authorize"]["answer"], "the allow answer carries the real key"


def assert_refused(result: dict, *codes: str) -> None:
    for m in METHODS:
        assert result[m]["code"] in codes, (m, result)
        assert "answer" not in result[m], (m, result)
    assert REAL_KEY.encode().hex() not in json.dumps(result)


def read_key(stack: Stack) -> str:
    return stack.issue_key(label="probe", allowed_endpoints=["GET /v1/charges/*"])["vault_key"]


@functools.cache
def can_switch_user() -> str | None:
    """Why the probe cannot run as another user here, or None if it can."""
    if os.geteuid() != 0:
        return "not root: cannot start a process as another user"
    if shutil.which("setpriv") is None:
        return "no setpriv"
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        return f"no user {OTHER_USER!r}"
    # The probe's interpreter and grpcio must be usable by that user (a venv under a private home is not).
    check = subprocess.run(as_user(OTHER_USER, [sys.executable, "-c", "import grpc"]), capture_output=True, text=True,
                           timeout=60, env={**os.environ, "HOME": "/tmp"})
    if check.returncode != 0:
        return f"{OTHER_USER} cannot run {sys.executable} with grpcio: {check.stderr.strip()[-200:]}"
    return None


@pytest.fixture(scope="module")
def socket_stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("channel")).start()
    yield s
    s.stop()


# ---------------------------------------------------------------- the Unix sockets (local runs, test stacks)


def test_the_sockets_are_the_users_alone(socket_stack):
    """As documented: both sockets are sockets of this user with mode 0600, in
    a directory the service created with mode 0700."""
    s = socket_stack
    directory = s.grpc_socket.parent
    assert s.grpc_address == f"unix:{s.grpc_socket}"
    d = directory.stat()
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == os.geteuid()
    for sock in (s.grpc_socket, s.http_socket):
        st = sock.lstat()
        assert stat.S_ISSOCK(st.st_mode), sock
        assert stat.S_IMODE(st.st_mode) == 0o600, (sock, oct(st.st_mode))
        assert st.st_uid == os.geteuid()
    assert sorted(p.name for p in directory.iterdir()) == ["grpc.sock", "http.sock"], "nothing left from staging"


def test_the_gateways_user_is_served_over_the_socket(socket_stack):
    """The positive control for the refusals: the same probe as the same user."""
    assert_served(probe(socket_stack.grpc_address, "--vault-key-hash", key_hash(read_key(socket_stack))))


@pytest.mark.skipif(can_switch_user() is not None, reason=str(can_switch_user()))
def test_another_user_cannot_open_the_sockets(socket_stack):
    """A job running as another user: the sockets' permissions keep it out of
    every method, and out of the admin socket."""
    s = socket_stack
    result = probe(s.grpc_address, "--vault-key-hash", key_hash(read_key(s)), "--http-socket", str(s.http_socket),
                   user=OTHER_USER)
    assert_refused(result, "UNAVAILABLE")
    assert all("Permission denied" in result[m]["details"] for m in METHODS), result
    assert result["http"] == "connect refused: Permission denied", result


@pytest.mark.skipif(can_switch_user() is not None, reason=str(can_switch_user()))
def test_another_user_is_refused_even_if_the_socket_is_opened_to_it(fresh_stack):
    """Should the permissions ever be loosened (an operator's chmod), the
    service still refuses every call from a peer of another uid
    (SO_PEERCRED), and drops its admin-socket connections unanswered."""
    s = fresh_stack()
    vault_key = read_key(s)
    s.grpc_socket.parent.parent.chmod(0o711)
    s.grpc_socket.parent.chmod(0o711)
    for sock in (s.grpc_socket, s.http_socket):
        sock.chmod(0o666)
    result = probe(s.grpc_address, "--vault-key-hash", key_hash(vault_key), "--http-socket", str(s.http_socket),
                   user=OTHER_USER)
    assert_refused(result, "PERMISSION_DENIED")
    assert result["http"].startswith("dropped"), result
    # The refusals are counted, and the gateway itself is still served.
    metrics = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics").text
    assert 'keybrake_errors_total{kind="grpc_peer_refused"} 4' in metrics
    assert_served(probe(s.grpc_address, "--vault-key-hash", key_hash(vault_key)))


# ---------------------------------------------------------------- TCP with mutual TLS (networked deployments)


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("mtls"), control_channel="mtls").start()
    yield s
    s.stop()


def test_a_stack_on_mutual_tls_serves_a_charge(mtls_stack):
    """Envoy with the gateway's client certificate, the control service
    requiring one: the charge goes through with the real key."""
    s = mtls_stack
    assert not s.grpc_address.startswith("unix:")
    key = s.issue_key(label="mtls")
    charge = s.stripe_client(key["vault_key"]).v1.charges.create(params={"amount": 500, "currency": "usd",
                                                                        "customer": "cus_mtls"})
    # The stand-in accepts only the real key (--expect-key): one charge there is the real key forwarded.
    seen = [r for r in s.upstream_requests(method="POST", path="/v1/charges") if r["params"].get("customer") == "cus_mtls"]
    assert len(seen) == 1 and seen[0]["status"] == 200 and charge.amount == 500
    # Neither side's private key shows in a log or in Envoy's config dump.
    dump = httpx.get(f"http://127.0.0.1:{s.envoy_admin_port}/config_dump?include_eds", timeout=10).text
    keys = []

    def walk(node):
        if isinstance(node, dict):
            keys.extend(v for k, v in node.items() if k == "private_key")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(dump))
    assert keys and all(k == {"filename": "[redacted]"} for k in keys), keys
    for key in (s.tls_dir / "control" / "tls.key", s.tls_dir / "gateway" / "tls.key"):
        body = key.read_text().splitlines()[1]
        assert body not in s.logs() and body not in dump


def tls_args(directory, with_client_cert: bool = True) -> list[str]:
    args = ["--ca", str(directory / "ca.crt"), "--server-name", CONTROL_SERVER_NAME]
    if with_client_cert:
        args += ["--cert", str(directory / "tls.crt"), "--key", str(directory / "tls.key")]
    return args


def test_tcp_callers_without_the_gateways_certificate_get_nothing(mtls_stack, tmp_path):
    s = mtls_stack
    h = key_hash(read_key(s))
    target = f"127.0.0.1:{s.grpc_port}"
    gateway = s.tls_dir / "gateway"
    # The positive control: the gateway's certificate.
    assert_served(probe(target, "--vault-key-hash", h, *tls_args(gateway)))
    # Plaintext gRPC to the TLS port.
    assert_refused(probe(target, "--vault-key-hash", h), "UNAVAILABLE")
    # TLS trusting the right CA, but no client certificate.
    assert_refused(probe(target, "--vault-key-hash", h, *tls_args(gateway, with_client_cert=False)), "UNAVAILABLE")
    # A client certificate from another CA (one the job made itself).
    other = make_tls(tmp_path / "other") / "gateway"
    mixed = ["--ca", str(gateway / "ca.crt"), "--server-name", CONTROL_SERVER_NAME,
             "--cert", str(other / "tls.crt"), "--key", str(other / "tls.key")]
    assert_refused(probe(target, "--vault-key-hash", h, *mixed), "UNAVAILABLE")
    # The control service's own certificate is no client certificate (server use only).
    control = s.tls_dir / "control"
    as_server = ["--ca", str(gateway / "ca.crt"), "--server-name", CONTROL_SERVER_NAME,
                 "--cert", str(control / "tls.crt"), "--key", str(control / "tls.key")]
    assert_refused(probe(target, "--vault-key-hash", h, *as_server), "UNAVAILABLE")


def test_an_envoy_with_a_certificate_from_another_ca_forwards_nothing(mtls_stack, tmp_path):
    """A second gateway whose client certificate another CA signed: the
    control service refuses its handshake, so the filter fails closed (503)
    and nothing reaches Stripe."""
    s = mtls_stack
    other = make_tls(tmp_path / "other") / "gateway"
    from support.stack import envoy_binary, envoy_config, filter_wasm, free_port
    port, admin = free_port(), free_port()
    config = envoy_config.render(
        listen_port=port, admin_port=admin, control_grpc=s.grpc_address, control_http=f"unix:{s.http_socket}",
        stripe_url=s.upstream_url, wasm_path=str(filter_wasm()),
        control_tls={"cert": str(other / "tls.crt"), "key": str(other / "tls.key"),
                     "ca": str(s.tls_dir / "gateway" / "ca.crt"), "server_name": CONTROL_SERVER_NAME})
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    proc = processes.launch("envoy-other-ca", [envoy_binary(), "-c", path, "--concurrency", "1",
                                               "--disable-hot-restart", "-l", "warning"], tmp_path / "envoy.log")
    try:
        processes.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).text.strip() == "LIVE",
                             "the other Envoy to be ready", [proc])
        key = s.issue_key(label="other-ca")
        before = len(s.upstream_requests())
        client = stripe.StripeClient(key["vault_key"], base_addresses={"api": f"http://127.0.0.1:{port}/stripe"},
                                     max_network_retries=0)
        with pytest.raises(stripe.StripeError) as refused:
            client.v1.charges.create(params={"amount": 700, "currency": "usd", "customer": "cus_other_ca"})
        assert refused.value.http_status == 503, refused.value
        assert len(s.upstream_requests()) == before, "nothing was forwarded"
        # Refused in the handshake: the filter's callout failed, no TLS connection ever came up.
        stats = dict(line.split(": ", 1) for line in httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5)
                     .text.splitlines() if ": " in line)
        assert int(stats["cluster.keybrake_control.ssl.connection_error"]) >= 1, stats
        assert int(stats["wasmcustom.keybrake.requests_denied.reason.keybrake_unavailable"]) == 1
        assert int(stats.get("cluster.keybrake_control.upstream_rq_200", "0")) == 0
    finally:
        processes.stop(proc)


# ---------------------------------------------------------------- start-up refusals


@pytest.fixture
def sockets():
    d = socket_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(tmp_path, sockets, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(control_binary()), "serve"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
                               "KEYBRAKE_DATA_DIR": str(tmp_path / "data"), "KEYBRAKE_HTTP_LISTEN": "127.0.0.1:0",
                               "KEYBRAKE_HTTP_SOCKET": str(sockets / "http.sock"), **env})


def test_tcp_without_client_authentication_is_refused_at_start(tmp_path, sockets):
    plain = start(tmp_path, sockets, KEYBRAKE_GRPC_LISTEN="127.0.0.1:0")
    assert plain.returncode != 0 and "READY" not in plain.stdout
    assert "without client authentication" in plain.stderr and "--insecure-grpc-tcp-without-client-auth" in plain.stderr
    tls = make_tls(tmp_path / "tls") / "control"
    # A server certificate without a client CA would be TLS that lets anyone in.
    half = start(tmp_path, sockets, KEYBRAKE_GRPC_LISTEN="127.0.0.1:0", KEYBRAKE_GRPC_TLS_CERT=str(tls / "tls.crt"),
                 KEYBRAKE_GRPC_TLS_KEY=str(tls / "tls.key"))
    assert half.returncode != 0 and "READY" not in half.stdout and "go together" in half.stderr
    # A client CA that is not a certificate.
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = start(tmp_path, sockets, KEYBRAKE_GRPC_LISTEN="127.0.0.1:0", KEYBRAKE_GRPC_TLS_CERT=str(tls / "tls.crt"),
                 KEYBRAKE_GRPC_TLS_KEY=str(tls / "tls.key"), KEYBRAKE_GRPC_CLIENT_CA=str(tmp_path / "junk.pem"))
    assert junk.returncode != 0 and "READY" not in junk.stdout and "junk.pem" in junk.stderr
    # A key that is not the certificate's: refused before anything listens.
    wrong_key = start(tmp_path, sockets, KEYBRAKE_GRPC_LISTEN="127.0.0.1:0", KEYBRAKE_GRPC_TLS_CERT=str(tls / "tls.crt"),
                      KEYBRAKE_GRPC_TLS_KEY=str(tls.parent / "gateway" / "tls.key"),
                      KEYBRAKE_GRPC_CLIENT_CA=str(tls / "ca.crt"))
    assert wrong_key.returncode != 0 and "READY" not in wrong_key.stdout, wrong_key.stderr
    assert "TLS" in wrong_key.stderr
    # The keys never appear in what the service says about them.
    for key in (tls / "tls.key", tls.parent / "gateway" / "tls.key"):
        assert key.read_text().splitlines()[1] not in half.stderr + junk.stderr + wrong_key.stderr


def test_a_start_that_fails_after_binding_leaves_no_socket(tmp_path, sockets):
    """The gRPC socket is bound, then the admin port is taken: the service
    stops, and removes the socket it made (a stale one would only be replaced
    at the next start, but nothing should be left listening-looking)."""
    import socket as net
    with net.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = start(tmp_path, sockets, KEYBRAKE_GRPC_LISTEN=f"unix:{sockets / 'grpc.sock'}",
                       KEYBRAKE_HTTP_LISTEN=f"127.0.0.1:{port}")
    assert failed.returncode != 0 and "READY" not in failed.stdout and f"127.0.0.1:{port}" in failed.stderr
    assert list(sockets.iterdir()) == []


def test_the_insecure_flag_starts_plain_tcp_loudly(tmp_path, sockets):
    """For a network sealed by other means (a mesh sidecar): it starts, and
    says so at warning level, naming the flag."""
    env = {**os.environ, "KEYBRAKE_STRIPE_SECRET_KEY": REAL_KEY, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
           "KEYBRAKE_DATA_DIR": str(tmp_path / "data"), "KEYBRAKE_HTTP_LISTEN": "127.0.0.1:0",
           "KEYBRAKE_HTTP_SOCKET": str(sockets / "http.sock"), "KEYBRAKE_GRPC_LISTEN": "127.0.0.1:0",
           "KEYBRAKE_INSECURE_GRPC_TCP_WITHOUT_CLIENT_AUTH": "true"}
    proc = processes.launch("control-insecure", [control_binary(), "serve"], tmp_path / "control.log", env=env,
                            stdout_pipe=True)
    try:
        ready = read_ready_line(proc, "READY")
        assert not ready.split()[1].startswith("grpc=unix:")
    finally:
        processes.stop(proc)
    log = (tmp_path / "control.log").read_text()
    assert "WARN" in log and "INSECURE" in log and "--insecure-grpc-tcp-without-client-auth" in log


# ---------------------------------------------------------------- the admin socket


def test_admin_refusals_through_the_socket_reach_the_client(socket_stack):
    """A refusal (no key, a wrong key, then too many failures) comes before the
    request body is read. Over the admin socket Envoy may still be writing that
    body when the service answers: the service reads a small body first, so
    the client gets the refusal, never Envoy's 503 for a connection closed under it."""
    s = socket_stack
    body = {"label": "x" * 20000, "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"], "expires_in_seconds": 60}
    seen = []
    with client_from("127.0.0.71") as c:
        for i in range(300):
            headers = {} if i % 2 else {"Authorization": "Bearer kb_admin_wrong_000000000000"}
            r = c.post(f"{s.url}/admin/vault_keys", json=body, headers=headers)
            seen.append(r.status_code)
    assert seen[:10] == [401] * 10 and set(seen[10:]) == {429}, seen
