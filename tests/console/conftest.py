"""Fixtures of the console tests: a stack whose control service knows where
Envoy's admin interface is (KEYBRAKE_ENVOY_ADMIN_URL), so the health page can
show the filter's counters; and a logged-in console session (httpx)."""
from __future__ import annotations

import pytest

from console_support import login
from support.stack import Stack, free_port


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory):
    # The ports are chosen up front (Stack keeps given ones) so the control
    # service can be told Envoy's admin address when it starts.
    listen_port, envoy_admin_port = free_port(), free_port()
    s = Stack(tmp_path_factory.mktemp("console"), listen_port=listen_port, envoy_admin_port=envoy_admin_port,
              control_env={"KEYBRAKE_ENVOY_ADMIN_URL": f"http://127.0.0.1:{envoy_admin_port}"})
    s.start()
    yield s
    s.stop()


@pytest.fixture
def session(console_stack: Stack):
    client = login(console_stack.url)
    yield client
    client.close()
