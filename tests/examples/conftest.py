"""Fixtures for the example tests: a real Keybrake stack (tests/conftest.py),
the example programs on sys.path, the client's environment variables, and one
local Ray instance per test module."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Before anything imports Ray: no usage stats, no telemetry, nothing leaves the machine.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_PROMPT_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_SERVE_ENABLE_TELEMETRY", "0")

for sub in ("examples/ray", "examples/kestra"):
    p = str(ROOT / sub)
    if p not in sys.path:
        sys.path.insert(0, p)

from support.stack import ADMIN_KEY, Stack  # noqa: E402


@pytest.fixture(scope="module")
def gateway_env(stack: Stack):
    """KEYBRAKE_URL and KEYBRAKE_ADMIN_KEY pointing at the module's stack, as a user's job would have them."""
    saved = {k: os.environ.get(k) for k in ("KEYBRAKE_URL", "KEYBRAKE_ADMIN_KEY")}
    os.environ["KEYBRAKE_URL"] = stack.url
    os.environ["KEYBRAKE_ADMIN_KEY"] = ADMIN_KEY
    yield stack
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) for the whole module, shut down at its end."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

