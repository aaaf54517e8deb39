#!/usr/bin/env python3
"""Renders envoy/envoy.yaml.tmpl into a runnable Envoy config.

Used by scripts/run-local.sh and by the end-to-end tests. The Stripe upstream
is https://api.stripe.com (TLS, SNI) unless --stripe-url points elsewhere
(e.g. http://127.0.0.1:12111 for a local stand-in).
"""
import argparse
import json
import pathlib
import string
import sys
from urllib.parse import urlsplit

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.yaml.tmpl"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def tls_socket(sni: str) -> str:
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        f"        sni: {sni}\n"
        "        common_tls_context:\n"
        "          validation_context:\n"
        f"            trusted_ca: {{ filename: {CA_BUNDLE} }}\n"
        # The chain must be valid AND name the host we meant to reach.
        f"            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {sni} }} }}]\n"
    )


def render(*, listen_address="127.0.0.1", listen_port=10000, admin_port=9901, control_grpc="127.0.0.1:50051",
           control_http="127.0.0.1:8081", stripe_url="https://api.stripe.com", wasm_path, stripe_timeout="80s",
           filter_config=None) -> str:
    stripe = urlsplit(stripe_url)
    if stripe.scheme not in ("http", "https") or not stripe.hostname:
        raise ValueError(f"stripe url must be http(s)://host[:port], got {stripe_url!r}")
    tls = stripe.scheme == "https"
    port = stripe.port or (443 if tls else 80)
    is_ip = stripe.hostname.replace(".", "").isdigit()
    grpc_endpoints = "\n".join(
        f"        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}"
        for host, port in (hp.strip().rsplit(":", 1) for hp in control_grpc.split(",")))
    http_host, http_port = control_http.rsplit(":", 1)
    values = {
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": listen_port,
        "ADMIN_PORT": admin_port,
        "CONTROL_GRPC_ENDPOINTS": grpc_endpoints,
        "CONTROL_HTTP_HOST": http_host,
        "CONTROL_HTTP_PORT": http_port,
        "STRIPE_DISCOVERY": "STATIC" if is_ip else "LOGICAL_DNS",
        "STRIPE_ADDRESS": stripe.hostname,
        "STRIPE_PORT": port,
        "STRIPE_HOST": stripe.hostname if port in (80, 443) else f"{stripe.hostname}:{port}",
        "STRIPE_TIMEOUT": stripe_timeout,
        "STRIPE_TRANSPORT_SOCKET": tls_socket(stripe.hostname) if tls else "",
        "WASM_PATH": wasm_path,
        "FILTER_CONFIG": json.dumps(filter_config or {"control_cluster": "keybrake_control"}),
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def with_filter_discovery(envoy_yaml: str, resource_path: str, vm_id: str | None = None) -> tuple[str, str]:
    """Moves the Keybrake filter of a rendered config out to an extension config
    discovery (ECDS) file, as Istio delivers it: Envoy watches `resource_path`
    and swaps the filter when a new version is moved into place, without a
    restart. Returns (Envoy config, ECDS file). A `vm_id` other than the
    template's gives the new version VMs of its own (a reload of the module,
    not only of its configuration)."""
    import yaml  # only here: run-local renders the plain config with any python3

    config = yaml.safe_load(envoy_yaml)
    # xDS, even from a file, needs the node to say who it is.
    config.setdefault("node", {"id": "keybrake-gateway", "cluster": "keybrake"})
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    wasm = next(f for f in filters if f["name"] == "envoy.filters.http.wasm")
    typed = wasm["typed_config"]
    if vm_id:
        typed["config"]["vm_config"]["vm_id"] = vm_id
    filters[filters.index(wasm)] = {
        "name": "keybrake",
        "config_discovery": {
            "config_source": {"path_config_source": {"path": resource_path}, "resource_api_version": "V3"},
            "type_urls": [WASM_TYPE],
        },
    }
    resource = {"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "keybrake",
        "typed_config": typed,
    }]}
    return json.dumps(config, indent=1), json.dumps(resource, indent=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:10000")
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--control-grpc", default="127.0.0.1:50051", help="host:port[,host:port...] of control replicas")
    p.add_argument("--control-http", default="127.0.0.1:8081")
    p.add_argument("--stripe-url", default="https://api.stripe.com")
    p.add_argument("--stripe-timeout", default="80s")
    p.add_argument("--wasm", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    address, port = a.listen.rsplit(":", 1)
    text = render(listen_address=address, listen_port=int(port), admin_port=a.admin_port, control_grpc=a.control_grpc,
                  control_http=a.control_http, stripe_url=a.stripe_url, wasm_path=a.wasm, stripe_timeout=a.stripe_timeout)
    pathlib.Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
