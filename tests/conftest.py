"""Shared pytest fixtures: real Keybrake stacks on loopback (see support/stack.py).

A failing test's report ends with what the processes it used (Envoy, the
control service, the Stripe stand-in...) logged while it ran, so a failure in
CI can be understood from CI's output alone (support/processes.py)."""
import atexit
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import processes  # noqa: E402
from support.stack import Stack  # noqa: E402


def _terminated(signum, frame):
    # SIGTERM (a CI timeout, `timeout`, a stopped job) interrupts pytest as
    # Ctrl-C does, so fixtures tear down their stacks instead of leaving them.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _terminated)
atexit.register(processes.kill_leftovers)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.keybrake_log_marks = processes.marks()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        text = processes.report(getattr(item, "keybrake_log_marks", {}))
        if text:
            report.sections.append(("logs of the processes the test used", text))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack per test module, with the recording stand-in as upstream."""
    s = Stack(tmp_path_factory.mktemp("stack")).start()
    yield s
    s.stop()


@pytest.fixture
def fresh_stack(tmp_path):
    """A stack of the test's own, for tests that kill or restart parts of it."""
    stacks = []

    def make(**kw):
        s = Stack(tmp_path / f"stack{len(stacks)}", **kw).start()
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()
