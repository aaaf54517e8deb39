"""Shared pytest fixtures: real Keybrake stacks on loopback (see support/stack.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.stack import Stack  # noqa: E402


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
