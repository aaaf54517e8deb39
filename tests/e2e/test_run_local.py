"""The laptop command, for real: scripts/run-local.sh starts the control
service and Envoy with the filter, reading its secrets from files and its FX
rates from a file, connects them over the control service's Unix sockets,
tells its user to run jobs as another user, and stops both on Ctrl-C."""
import json
import os
import shutil
import signal
import sys
import time

import httpx
import stripe

from support import processes
from support.stack import ADMIN_KEY, REAL_KEY, ROOT, control_binary, free_port, read_ready_line, socket_dir, wait_for


def test_run_local_serves_a_capped_charge_and_stops_on_ctrl_c(tmp_path):
    upstream = processes.launch("stand-in", [sys.executable, ROOT / "tests" / "standin" / "stripe_standin.py", "--port", "0",
                                             "--expect-key", REAL_KEY], tmp_path / "upstream.log", stdout_pipe=True)
    upstream_url = f"http://127.0.0.1:{read_ready_line(upstream, 'READY').split()[1]}"
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "stripe").write_text(REAL_KEY + "\n")
    (secrets / "admin").write_text(ADMIN_KEY + "\n")
    for f in secrets.iterdir():
        f.chmod(0o600)
    fx = tmp_path / "fx.json"
    fx.write_text(json.dumps({"as_of": "2026-11-26", "rates": {"jpy": "0.0067"}}))
    listen, admin_port = free_port(), free_port()
    sockets = socket_dir()
    env = {k: v for k, v in os.environ.items() if k not in ("KEYBRAKE_STRIPE_SECRET_KEY", "KEYBRAKE_ADMIN_KEY")}
    env.update({
        "KEYBRAKE_STRIPE_SECRET_KEY_FILE": str(secrets / "stripe"),
        "KEYBRAKE_ADMIN_KEY_FILE": str(secrets / "admin"),
        "KEYBRAKE_STRIPE_URL": upstream_url,
        "KEYBRAKE_LISTEN": f"127.0.0.1:{listen}",
        "KEYBRAKE_GRPC_LISTEN": f"unix:{sockets / 'grpc.sock'}",
        "KEYBRAKE_HTTP_SOCKET": str(sockets / "http.sock"),
        "KEYBRAKE_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "KEYBRAKE_ENVOY_ADMIN_PORT": str(admin_port),
        "KEYBRAKE_DATA_DIR": str(tmp_path / "data"),
        "KEYBRAKE_FX_RATES_FILE": str(fx),
        "KEYBRAKE_BIN": str(control_binary()),
    })
    run = processes.launch("run-local.sh", [ROOT / "scripts" / "run-local.sh"], tmp_path / "run-local.log", env=env,
                           stdout_pipe=True, start_new_session=True)
    try:
        # It builds the filter and the control service first (fast when they are built).
        # (The banner's lines before its last one go to the log.)
        read_ready_line(run, "Ctrl-C stops both")
        text = run.log.read_text()
        banner = text[text.rindex("Keybrake is running on"):]
        assert f"Keybrake is running on http://127.0.0.1:{listen}" in banner
        # Envoy reaches the control service over its sockets, and the banner says who must not run jobs.
        assert f"unix:{sockets / 'grpc.sock'}" in banner and "Run jobs as another user or in a container" in banner
        assert oct((sockets / "grpc.sock").stat().st_mode & 0o777) == "0o600"
        gateway = f"http://127.0.0.1:{listen}"
        created = httpx.post(f"{gateway}/admin/vault_keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10,
                             json={"label": "run-local", "vendor": "stripe", "allowed_endpoints": ["POST /v1/charges"],
                                   "daily_usd_cap": 10, "expires_in_seconds": 600})
        assert created.status_code == 201, created.text
        key = created.json()
        client = stripe.StripeClient(key["vault_key"], base_addresses={"api": f"{gateway}/stripe"}, max_network_retries=0)
        # ¥1,000 at the file's rate is $6.70: the first fits the $10 cap, the second does not.
        charge = client.v1.charges.create(params={"amount": 1000, "currency": "jpy", "source": "tok_visa"})
        assert charge.amount == 1000
        try:
            client.v1.charges.create(params={"amount": 1000, "currency": "jpy", "source": "tok_visa",
                                             "description": "another charge, not a retry"})
            raise AssertionError("the second charge should cross the cap")
        except stripe.RateLimitError as e:
            assert e.json_body["error"]["code"] == "spend_cap_exceeded"
        # The MCP endpoint, whose tool calls go through this gateway (KEYBRAKE_GATEWAY_URL): refused by the cap too.
        assert f"MCP:        {gateway}/mcp" in banner
        mcp = httpx.post(f"{gateway}/mcp", timeout=30,
                         headers={"Authorization": f"Bearer {key['vault_key']}", "Accept": "application/json, text/event-stream"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                               "params": {"name": "create_charge", "arguments": {"amount": 1000, "currency": "jpy"}}})
        result = mcp.json()["result"]
        assert result["isError"] is True and result["structuredContent"]["error"]["code"] == "spend_cap_exceeded", result
        shown = httpx.get(f"{gateway}/admin/vault_keys/{key['id']}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                          timeout=10).json()
        assert shown["spent_today_usd"] == 6.7
        # The stand-in refuses any key but the real one, so one charge there means the file's key was used.
        assert httpx.get(f"{upstream_url}/__standin/counts", timeout=10).json()["charges"] == 1
    finally:
        run.stopped = True
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.popen.wait(timeout=60)
        finally:
            processes.stop(upstream, signal.SIGKILL)
            shutil.rmtree(sockets, ignore_errors=True)
    # Ctrl-C stopped both: nothing listens any more.
    wait_for(lambda: _refused(listen) and _refused(admin_port), timeout=15, what="gateway stopped")


def _refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return False
    except httpx.ConnectError:
        return True
    finally:
        time.sleep(0.1)
