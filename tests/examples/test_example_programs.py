"""The examples are programs a user runs: started as such (a process of their
own, configured only by KEYBRAKE_URL and KEYBRAKE_ADMIN_KEY), they work
against a real gateway. The other tests import their functions; these check
the entry points."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

from billing_db import BillingDB
from examples_support import charges, outcomes
from support.stack import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]


def program_env(stack) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYBRAKE_", "RAY_ADDRESS"))}
    return {**env, "KEYBRAKE_URL": stack.url, "KEYBRAKE_ADMIN_KEY": ADMIN_KEY, "RAY_USAGE_STATS_ENABLED": "0"}


def test_the_ray_task_retry_program(stack):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "ray" / "task_retry.py")], env=program_env(stack),
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    m = re.search(r"task for (cus_demo_\w+) ran 4 times; charge (ch_\w+)", run.stdout)
    assert m, run.stdout
    customer, charge_id = m.groups()
    assert "['allowed', 'replayed', 'replayed', 'replayed']" in run.stdout
    assert len(charges(stack, customer_prefix=customer)) == 1
    [outcome] = outcomes(stack, 1, object_id=charge_id)
    assert outcome["label"] == f"ray-task-2026-06-{customer}"


def test_the_kestra_local_runner_command_line(stack):
    db = BillingDB(fail_first=1)
    url = db.start()
    try:
        env = {k: v for k, v in program_env(stack).items() if not k.startswith("SECRET_")}
        env["SECRET_KEYBRAKE_ADMIN_KEY"] = base64.b64encode(ADMIN_KEY.encode()).decode()  # as Kestra OSS
        run = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "kestra" / "localrun.py"),
             str(ROOT / "examples" / "kestra" / "charge_customer.yml"),
             "--input", "customer_id=cus_cli_program", "--input", "amount_cents=1999",
             "--input", "billing_period=2026-06",
             "--secret", f"KEYBRAKE_URL={stack.url}", "--secret", f"BILLING_DB_URL={url}"],
            env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        db.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "charge_customer: SUCCESS after 2 attempt(s)" in run.stdout
    assert "503" in run.stdout, "the first attempt's error is reported"
    assert len(charges(stack, customer_prefix="cus_cli_program")) == 1
    assert [r["customer"] for r in db.rows] == ["cus_cli_program"]
