"""Fixtures for the example tests: a real Keybrake stack (tests/conftest.py),
the example programs on sys.path, the client's environment variables, and one
local Ray instance per test module."""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Before anything imports Ray: no usage stats, no telemetry, nothing leaves the machine.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_PROMPT_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("RAY_SERVE_ENABLE_TELEMETRY", "0")
# Ray Serve kills a proxy that is not ready within 5 s, or not healthy within
# 10 s: a loaded machine starts Python processes slower than that. Wait for
# them as long as the test itself may take instead.
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "240")
os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "120")

EXAMPLE_DIRS = [str(ROOT / "examples" / "ray"), str(ROOT / "examples" / "kestra")]
for p in EXAMPLE_DIRS:
    if p not in sys.path:
        sys.path.insert(0, p)

from support.stack import ADMIN_KEY, Stack  # noqa: E402

# Ray Serve's own modules use APIs that pydantic and Ray Data deprecate; import
# them once here, quietly, so that the test report shows only our warnings.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for module in ("ray.data", "ray.serve", "keybrake", "kestra", "yaml"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"tests/examples need the examples' packages ({e}): "
                              ".venv/bin/pip install -r requirements/examples.txt") from e


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
    # The tests import the examples as modules, so Ray's workers (tasks, Actors,
    # Serve replicas, Ray Data's actor pool) must be able to import them too.
    pythonpath = os.pathsep.join([*EXAMPLE_DIRS, *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()

