"""The web console in a real browser: Debian's headless Chromium, driven by
drive.mjs (playwright-core), against a real stack (stand-in Stripe, the
control service, Envoy with the filter). The browser logs in, issues keys
from the form, charges through the gateway with the vault key it was shown
once, sees the charge in the audit table and the spend bar move, pages a
key's sixty records (50, then 10 older) and narrows them by key and time, revokes
every key under the prefix after the confirmation, and sees the next call
refused. Screenshots go to target/console-screenshots/.

Needs scripts/setup.sh browser (Chromium from Debian, playwright-core from npm)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from support.stack import ADMIN_KEY, REAL_KEY, ROOT, Stack

HERE = Path(__file__).resolve().parent
SHOTS = ROOT / "target" / "console-screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_browser() -> None:
    missing = [what for what, ok in [
        (CHROMIUM, Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
        ("tests/console/node_modules/playwright-core", (HERE / "node_modules" / "playwright-core").is_dir()),
    ] if not ok]
    # Missing tools are a set-up error, not a reason to skip: CI runs scripts/setup.sh browser.
    assert not missing, f"missing {', '.join(missing)}: run scripts/setup.sh browser"


def test_an_operator_issues_charges_audits_and_revokes_in_a_browser(console_stack: Stack):
    require_browser()
    shutil.rmtree(SHOTS, ignore_errors=True)
    prefix = f"console-e2e-{uuid.uuid4().hex[:8]}"
    charges_before = len(console_stack.upstream_requests(method="POST", path="/v1/charges"))
    proc = subprocess.run(
        ["node", str(HERE / "drive.mjs")],
        env={**os.environ, "KEYBRAKE_URL": console_stack.url, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY,
             "CONSOLE_PREFIX": prefix, "SCREENSHOT_DIR": str(SHOTS), "CHROMIUM": CHROMIUM},
        cwd=HERE, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"drive.mjs failed (screenshots in {SHOTS}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["statuses"] == {"charge": 200, "retry": 200, "over_cap": 429, "after_revoke": 401}
    assert "This will stop 2 keys" in result["confirmation"]
    assert result["bar_width"] == 95, "$29.99 of a $50 cap is 95 of the bar's 160 pixels"
    assert result["paging"] == {"first": 50, "older": 10}, "60 records of one key: a page of 50, then 10 older"

    # The gateway's side of what the browser saw: one charge reached Stripe
    # (the retry was replayed, the over-cap and revoked calls never left).
    charges = console_stack.upstream_requests(method="POST", path="/v1/charges")
    assert len(charges) == charges_before + 1 + 30, "the first key's charge and the second key's thirty"
    rows = console_stack.audit(label_prefix=prefix)
    decisions = [(r["stage"], r["decision"], r["reason"]) for r in rows if r["key_id"] == result["key_id"]]
    assert ("outcome", "allowed", "committed") in decisions
    assert decisions[-1][1] == "denied", "the call after the revoke is recorded as refused"
    keys = console_stack.admin("GET", "/admin/vault_keys", params={"label_prefix": prefix}).json()["data"]
    assert [k["state"] for k in keys] == ["revoked", "revoked"]

    shots = sorted(p.name for p in SHOTS.glob("*.png"))
    assert len(shots) == result["screenshots"] >= 10 and "failure.png" not in shots, shots
    # Secrets never reached the control service's or Envoy's logs either.
    logs = console_stack.logs()
    for secret in (ADMIN_KEY, REAL_KEY, result["vault_key"]):
        assert secret not in logs
