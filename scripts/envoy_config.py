#!/usr/bin/env python3
"""Renders envoy/envoy.yaml.tmpl into a runnable Envoy config.

Used by scripts/run-local.sh and by the end-to-end tests. The Stripe upstream
is https://api.stripe.com (TLS, SNI) unless --stripe-url points elsewhere
(e.g. http://127.0.0.1:12111 for a local stand-in).

The control service is reached the way it allows (control/src/channel.rs):
over its Unix sockets (`unix:/path`, Envoy `pipe` addresses; the default for
a gateway on the same host), or over TCP with this gateway's client
certificate (`--control-tls-cert/--control-tls-key/--control-ca/
--control-server-name`: an UpstreamTlsContext that checks the control
service's certificate and name).
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


def address(target: str) -> str:
    """An Envoy address for `unix:/path` (a pipe) or `host:port`."""
    target = target.strip()
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"a control socket path must be absolute, got {target!r}")
        return f"{{ pipe: {{ path: {path} }} }}"
    host, port = target.rsplit(":", 1)
    return f"{{ socket_address: {{ address: {host}, port_value: {int(port)} }} }}"


def control_tls_socket(cert: str, key: str, ca: str, server_name: str) -> str:
    """mTLS to the control service: this gateway's client certificate, and the
    control service's certificate checked against `ca` and `server_name`."""
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        f"        sni: {server_name}\n"
        "        common_tls_context:\n"
        # gRPC is HTTP/2: say so in ALPN, as tonic's server expects.
        "          alpn_protocols: [h2]\n"
        "          tls_certificates:\n"
        f"          - certificate_chain: {{ filename: {cert} }}\n"
        f"            private_key: {{ filename: {key} }}\n"
        "          validation_context:\n"
        f"            trusted_ca: {{ filename: {ca} }}\n"
        f"            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {server_name} }} }}]\n"
    )


def render(*, listen_address="127.0.0.1", listen_port=10000, admin_port=9901, control_grpc: str, control_http: str,
           stripe_url="https://api.stripe.com", wasm_path, stripe_timeout="80s",
           filter_config=None, control_tls: dict | None = None) -> str:
    """`control_grpc`: the replicas' gRPC addresses, comma-separated, each
    `unix:/path` or `host:port`; `control_http`: the admin API's (the admin
    socket, `unix:/path`, for a gateway on the same host). `control_tls`:
    {"cert", "key", "ca", "server_name"} for gRPC over TCP with mTLS."""
    stripe = urlsplit(stripe_url)
    if stripe.scheme not in ("http", "https") or not stripe.hostname:
        raise ValueError(f"stripe url must be http(s)://host[:port], got {stripe_url!r}")
    tls = stripe.scheme == "https"
    port = stripe.port or (443 if tls else 80)
    is_ip = stripe.hostname.replace(".", "").isdigit()
    targets = [t for t in control_grpc.split(",") if t.strip()]
    if control_tls and any(t.strip().startswith("unix:") for t in targets):
        raise ValueError("mTLS is for TCP control addresses; a socket is authenticated by its owner")
    grpc_endpoints = "\n".join(f"        - endpoint: {{ address: {address(t)} }}" for t in targets)
    values = {
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": listen_port,
        "ADMIN_PORT": admin_port,
        "CONTROL_GRPC_ENDPOINTS": grpc_endpoints,
        "CONTROL_TRANSPORT_SOCKET": control_tls_socket(control_tls["cert"], control_tls["key"], control_tls["ca"],
                                                       control_tls["server_name"]) if control_tls else "",
        "CONTROL_HTTP_ADDRESS": address(control_http),
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
    p.add_argument("--control-grpc", required=True,
                   help="the control replicas' gRPC: unix:/path or host:port, comma-separated")
    p.add_argument("--control-http", required=True, help="the control service's admin API: unix:/path or host:port")
    p.add_argument("--control-tls-cert", help="this gateway's client certificate (PEM), for gRPC over TCP")
    p.add_argument("--control-tls-key", help="its private key (PEM)")
    p.add_argument("--control-ca", help="the CA (PEM) of the control service's certificate")
    p.add_argument("--control-server-name", help="the name the control service's certificate must carry")
    p.add_argument("--stripe-url", default="https://api.stripe.com")
    p.add_argument("--stripe-timeout", default="80s")
    p.add_argument("--wasm", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    tls_args = (a.control_tls_cert, a.control_tls_key, a.control_ca, a.control_server_name)
    if any(tls_args) and not all(tls_args):
        p.error("--control-tls-cert, --control-tls-key, --control-ca and --control-server-name go together")
    control_tls = dict(zip(("cert", "key", "ca", "server_name"), tls_args)) if all(tls_args) else None
    listen_address, port = a.listen.rsplit(":", 1)
    text = render(listen_address=listen_address, listen_port=int(port), admin_port=a.admin_port,
                  control_grpc=a.control_grpc, control_http=a.control_http, stripe_url=a.stripe_url, wasm_path=a.wasm,
                  stripe_timeout=a.stripe_timeout, control_tls=control_tls)
    pathlib.Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
