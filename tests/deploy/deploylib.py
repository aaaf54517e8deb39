"""Helpers for the deployment tests: load the manifests the way kustomize
would (for the subset of kustomize the repo uses), find every Envoy config,
and run `envoy --mode validate`.

There is no kubectl, kustomize or istioctl here, so the schema and reference
checks are plain Python over the parsed YAML.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "envoy"
# The deployments (kustomizations a user applies) and the shared base.
DEPLOYMENTS = {"istio": ENVOY_DIR / "istio", "kuberay": ENVOY_DIR / "kuberay",
               # The control service alone, on PostgreSQL (what istio/kuberay list instead of ../k8s for replicas).
               "k8s/postgres": ENVOY_DIR / "k8s" / "postgres"}
MANIFEST_DIRS = [ENVOY_DIR / "k8s", ENVOY_DIR / "istio", ENVOY_DIR / "kuberay"]

ZERO_DIGEST = "0" * 64
PLACEHOLDER_REPO = "registry.example.com/keybrake/keybrake-filter"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def load_docs(path: Path) -> list[dict]:
    """All YAML documents of a file, empty ones dropped."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def is_envoy_config(doc) -> bool:
    return isinstance(doc, dict) and "static_resources" in doc


def is_manifest(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def all_manifest_files() -> list[Path]:
    """Every Kubernetes manifest file (not kustomization.yaml, not Envoy configs)."""
    files = []
    for d in MANIFEST_DIRS:
        for p in yaml_files(d):
            # Patches are fragments, checked by the build they patch.
            if p.name == "kustomization.yaml" or p.name.endswith(".patch.yaml"):
                continue
            docs = load_docs(p)
            if docs and not all(is_envoy_config(x) for x in docs):
                files.append(p)
    return files


@dataclass
class Build:
    """What `kustomize build DIR` would output, minus name hashes; plus where it came from."""

    root: Path
    docs: list[dict] = field(default_factory=list)
    images: dict[str, dict] = field(default_factory=dict)
    files: set[Path] = field(default_factory=set)
    # (Secret name, key) -> the git-ignored file an operator makes for it.
    made_files: dict[tuple[str, str], Path] = field(default_factory=dict)

    def find(self, kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
        return [
            d for d in self.docs
            if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)
        ]

    def one(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict:
        found = self.find(kind, name, namespace)
        assert len(found) == 1, f"expected one {kind} {name or ''} in {self.root}, found {len(found)}"
        return found[0]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def is_git_ignored(directory: Path, rel: str) -> bool:
    """Whether `rel` (a path under `directory`) is ignored by git, asked of git itself."""
    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=directory, capture_output=True)
    return proc.returncode == 0


def kustomize(directory: Path) -> Build:
    """Loads a kustomization: resources (files and directories, recursively),
    configMap/secret generators and `images`. Generator env files are read
    from their committed .example (the real ones hold secrets)."""
    build = Build(directory)
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    build.files.add(kfile)
    assert k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization", kfile
    known = {"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator", "images", "patches"}
    assert set(k) <= known, f"{kfile}: keys this loader does not model: {set(k) - known}"
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            sub = kustomize(path)
            build.docs += sub.docs
            build.images.update(sub.images)
            build.files |= sub.files
            build.made_files.update(sub.made_files)
        else:
            assert path.is_file(), f"{kfile}: resource {res} does not exist"
            build.files.add(path)
            build.docs += load_docs(path)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in k.get(key, []):
            data = {}
            for f in gen.get("files", []):
                # `key=path` or `path` (the key is then the file's name).
                name, _, rel = f.rpartition("=")
                path = directory / rel
                name = name or path.name
                if path.is_file():
                    build.files.add(path)
                    data[name] = path.read_text()
                else:
                    # Files an operator makes (make-tls.sh's certificates) are
                    # git-ignored and absent here: they must be, and be made by a script.
                    assert is_git_ignored(directory, rel), f"{kfile}: {key} file {rel} does not exist"
                    data[name] = f"(made at deploy time: {rel})"
                    build.made_files[(gen["name"], name)] = directory / rel
            for f in gen.get("envs", []):
                # The real file (secrets.env) is the operator's and git-ignored:
                # tests read only the committed example, never real secrets.
                path = directory / (f + ".example")
                assert path.is_file(), f"{kfile}: {key} env file {f} has no committed {f}.example"
                build.files.add(path)
                data.update(read_env_file(path))
            for lit in gen.get("literals", []):
                name, _, value = lit.partition("=")
                data[name] = value
            meta = {"name": gen["name"]}
            if "namespace" in gen:
                meta["namespace"] = gen["namespace"]
            build.docs.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "data": data,
                               "x-generated-by": str(kfile)})
    for image in k.get("images", []):
        build.images[image["name"]] = image
    for entry in k.get("patches", []):
        assert set(entry) == {"path"}, f"{kfile}: only `patches: - path:` is modelled, got {entry}"
        path = directory / entry["path"]
        build.files.add(path)
        for patch in load_docs(path):
            apply_patch(build, patch, f"{kfile}: {entry['path']}")
    return build


def apply_patch(build: Build, patch: dict, where: str) -> None:
    """A strategic-merge patch, for its subset the repo uses: `$patch: delete`
    removes the object; otherwise maps merge, a null removes a field, lists of
    named items (containers, env, volumes) merge by name, other lists are replaced."""
    meta = patch["metadata"]
    targets = [i for i, d in enumerate(build.docs) if d["kind"] == patch["kind"]
               and d["metadata"]["name"] == meta["name"] and d["metadata"].get("namespace") == meta.get("namespace")]
    assert len(targets) == 1, f"{where}: patch for {patch['kind']}/{meta['name']} matches {len(targets)} objects"
    (i,) = targets
    if patch.get("$patch") == "delete":
        del build.docs[i]
    else:
        build.docs[i] = strategic_merge(build.docs[i], patch)


def strategic_merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out[key], value) if key in out else value
        return out
    named = lambda items: isinstance(items, list) and all(isinstance(x, dict) and "name" in x for x in items)
    if named(base) and named(patch):
        out = list(base)
        for item in patch:
            at = [j for j, x in enumerate(out) if x["name"] == item["name"]]
            if at:
                out[at[0]] = strategic_merge(out[at[0]], item)
            else:
                out.append(item)
        return out
    return patch


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "Pod":
        return doc["spec"]
    return None


def pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"].get("labels", {})


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, or a plain map) against a label set."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    assert "matchExpressions" not in selector, "matchExpressions are not modelled here"
    return all(labels.get(k) == v for k, v in match.items())


def walk(node, path=()):
    """Yields (path, dict) for every mapping in a parsed YAML tree."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def point_wasm_at(config: dict, wasm: Path) -> int:
    """Replaces every wasm vm_config's code with the local file `wasm`
    (what istio-agent does for remote code); returns how many it replaced."""
    n = 0
    for _, node in walk(config):
        if "runtime" in node and "code" in node and str(node["runtime"]).startswith("envoy.wasm.runtime"):
            node["code"] = {"local": {"filename": str(wasm)}}
            n += 1
    return n


# Where the gateways mount their client certificate for the control channel
# (envoy/kuberay/gateway.yaml, envoy/istio/gateway.yaml).
GATEWAY_TLS_DIR = "/etc/keybrake/control-tls"


def point_control_tls_at(config: dict, directory: Path) -> int:
    """Replaces every file of the gateway's control-channel certificate
    (GATEWAY_TLS_DIR/...) with the same file in `directory` (certificates
    made by envoy/k8s/make-tls.sh for the test); returns how many it replaced."""
    n = 0
    for _, node in walk(config):
        name = node.get("filename")
        if isinstance(name, str) and name.startswith(GATEWAY_TLS_DIR + "/"):
            node["filename"] = str(directory / name[len(GATEWAY_TLS_DIR) + 1:])
            n += 1
    return n


def assert_control_mtls(cluster: dict, server_name: str) -> dict:
    """The control cluster's transport socket: this gateway's certificate and
    key, the control service's CA, and its name checked (SNI and SAN)."""
    socket = cluster.get("transport_socket")
    assert socket and socket["name"] == "envoy.transport_sockets.tls", f"{cluster['name']}: no TLS to the control service"
    tls = socket["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext") and tls["sni"] == server_name
    common = tls["common_tls_context"]
    (cert,) = common["tls_certificates"]
    assert cert["certificate_chain"]["filename"] and cert["private_key"]["filename"], "no client certificate"
    validation = common["validation_context"]
    assert validation["trusted_ca"]["filename"], "the control service's certificate is not checked"
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": server_name}}]
    assert common.get("alpn_protocols") == ["h2"]
    return {"cert": cert["certificate_chain"]["filename"], "key": cert["private_key"]["filename"],
            "ca": validation["trusted_ca"]["filename"]}


def h2_static_cluster(name: str) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]},
    }


def bootstrap_with_filters(listeners: dict[str, list[dict]], clusters: list[dict], ads: bool = False) -> dict:
    """A minimal Envoy bootstrap: one HTTP listener per entry of `listeners`
    (name -> http_filters, router appended), the given clusters, and an ADS
    source (for filters configured over ECDS) if `ads`."""
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [], "clusters": list(clusters)},
    }
    for i, (name, filters) in enumerate(listeners.items()):
        boot["static_resources"]["listeners"].append({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000 + i}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {"name": name, "virtual_hosts": [
                        {"name": name, "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]},
                    "http_filters": filters + [ROUTER],
                },
            }]}],
        })
    if ads:
        # ADS needs a node identity; Istio's bootstrap sets one per proxy.
        boot["node"] = {"id": "validate~127.0.0.1~keybrake-gateway.keybrake~keybrake.svc.cluster.local",
                        "cluster": "keybrake-gateway.keybrake"}
        boot["dynamic_resources"] = {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}
        boot["static_resources"]["clusters"].append(h2_static_cluster("xds"))
    return boot


def envoy_validate(envoy: Path, config_text: str, path: Path) -> None:
    """Runs `envoy --mode validate -c path` and fails with Envoy's words if it says no."""
    path.write_text(config_text)
    proc = subprocess.run([str(envoy), "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"configuration '{path}' OK" in out, (
        f"envoy --mode validate rejected {path} (exit {proc.returncode}):\n{out[-4000:]}")


def wasm_plugin_config_from_envoyfilter(ef: dict) -> tuple[dict, dict]:
    """The (EXTENSION_CONFIG value, HTTP_FILTER value) pair of a Wasm EnvoyFilter."""
    ext = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
    http = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    assert len(ext) == 1 and len(http) == 1, "expected one EXTENSION_CONFIG and one HTTP_FILTER patch"
    return ext[0]["patch"]["value"], http[0]["patch"]["value"]


def envoy_config_of_wasmplugin(wp: dict) -> dict:
    """What istiod (pilot/pkg/model/extensions.go, buildWasmConfig) makes of a
    WasmPlugin: the Wasm filter config it serves over ECDS."""
    spec = wp["spec"]
    config = {
        "name": f'{wp["metadata"]["namespace"]}.{wp["metadata"]["name"]}',
        "root_id": spec.get("pluginName", ""),
        "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                      "code": {"remote": {"http_uri": {"uri": spec["url"], "cluster": "_", "timeout": "30s"},
                                          "sha256": spec.get("sha256", "")}}},
        "failure_policy": {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                           "FAIL_RELOAD": "FAIL_RELOAD"}[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if spec.get("pluginConfig"):
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": json.dumps(spec["pluginConfig"])}
    return {"name": config["name"], "typed_config": {"@type": WASM_TYPE, "config": config}}


def plugin_config_json(wasm_filter: dict) -> dict:
    """The filter's own configuration (src/config.rs JSON) inside a Wasm filter config."""
    cfg = wasm_filter["typed_config"]["config"]["configuration"]
    assert cfg["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    return json.loads(cfg["value"])


def control_secret_env_vars() -> set[str]:
    """The secrets `keybrake serve` reads (secrets::from_env("...") in control/src/serve.rs)."""
    text = (ROOT / "control" / "src" / "serve.rs").read_text()
    return set(re.findall(r'secrets::from_env\("([A-Z0-9_]+)"\)', text))


def control_env_vars() -> set[str]:
    """Every env var the `keybrake` binary reads (clap `env = ...` and secrets), with the _FILE forms."""
    names = set()
    for rs in (ROOT / "control" / "src").rglob("*.rs"):
        text = rs.read_text()
        names |= set(re.findall(r'\benv\s*=\s*"([A-Z0-9_]+)"', text))
        names |= set(re.findall(r'from_env\("([A-Z0-9_]+)"\)', text))
    return names | {n + "_FILE" for n in control_secret_env_vars()}


def deepcopy(x):
    return copy.deepcopy(x)


def filter_image_refs(directories: list[Path]) -> list[tuple[str, str, str | None]]:
    """Every place the manifests under `directories` name the filter image:
    (where, reference without scheme, sha256 field or None)."""
    found = []
    for d in directories:
        for path in yaml_files(d):
            for doc in load_docs(path):
                if not is_manifest(doc) or doc["kind"] == "Kustomization":
                    continue
                where = f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"
                if doc["kind"] == "EnvoyFilter":
                    ext, _ = wasm_plugin_config_from_envoyfilter(doc)
                    remote = ext["typed_config"]["config"]["vm_config"]["code"]["remote"]
                    uri = remote["http_uri"]["uri"]
                    assert uri.startswith("oci://"), f"{where}: filter not from an OCI image: {uri}"
                    found.append((where, uri[len("oci://"):], remote.get("sha256")))
                elif doc["kind"] == "WasmPlugin":
                    url = doc["spec"]["url"]
                    assert url.startswith("oci://"), f"{where}: filter not from an OCI image: {url}"
                    found.append((where, url[len("oci://"):], doc["spec"].get("sha256")))
                elif pod_spec(doc) is not None:
                    for c in all_containers(pod_spec(doc)):
                        for env in c.get("env", []):
                            if env["name"] == "FILTER_IMAGE":
                                found.append((f"{where}/{c['name']}", env["value"], None))
    return found
