"""Fixtures of the deployment tests: the stock Envoy and the built filter."""
from pathlib import Path

import pytest

from support.stack import envoy_binary, filter_wasm, make_tls


@pytest.fixture(scope="session")
def envoy() -> Path:
    return envoy_binary()


@pytest.fixture(scope="session")
def wasm() -> Path:
    """The built filter (scripts/build-filter.sh; KEYBRAKE_WASM overrides)."""
    return filter_wasm()


@pytest.fixture(scope="session")
def channel_tls(tmp_path_factory) -> Path:
    """The control channel's certificates as envoy/k8s/make-tls.sh makes them
    for a deployment (its default names: the control Service's): the
    directory holds control/ and gateway/."""
    out = tmp_path_factory.mktemp("channel-tls")
    import subprocess
    from support.stack import ROOT
    subprocess.run([str(ROOT / "envoy" / "k8s" / "make-tls.sh"), "--out", str(out), "--days", "2"], check=True,
                   capture_output=True, timeout=60)
    return out
