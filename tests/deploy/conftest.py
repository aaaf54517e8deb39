"""Fixtures of the deployment tests: the stock Envoy and the built filter."""
from pathlib import Path

import pytest

from support.stack import envoy_binary, filter_wasm


@pytest.fixture(scope="session")
def envoy() -> Path:
    return envoy_binary()


@pytest.fixture(scope="session")
def wasm() -> Path:
    """The built filter (scripts/build-filter.sh; KEYBRAKE_WASM overrides)."""
    return filter_wasm()
