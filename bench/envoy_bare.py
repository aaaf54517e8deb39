"""The "bare" Envoy of the benchmark's case A: the gateway's own config
(envoy/envoy.yaml.tmpl rendered by scripts/envoy_config.py) with the wasm
filter taken out of the HTTP filter chain, and nothing else changed, so A and
B/C differ only by the filter."""
from __future__ import annotations

import yaml

WASM_FILTER = "envoy.filters.http.wasm"


def strip_wasm(config_yaml: str) -> str:
    """Returns the rendered config without the wasm HTTP filter (YAML text)."""
    doc = yaml.safe_load(config_yaml)
    removed = 0
    for listener in doc.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                typed = network_filter.get("typed_config", {})
                http_filters = typed.get("http_filters")
                if http_filters is None:
                    continue
                kept = [f for f in http_filters if f.get("name") != WASM_FILTER]
                removed += len(http_filters) - len(kept)
                typed["http_filters"] = kept
    if removed != 1:
        raise ValueError(f"expected exactly one {WASM_FILTER} filter in the rendered config, found {removed}")
    return yaml.safe_dump(doc, sort_keys=False)
