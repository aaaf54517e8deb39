"""(b) The Kubernetes/Istio manifests: every document parses and has the
fields its kind needs, and what refers to something else finds it (selectors
and their pods, ports and their names, Secrets and the env vars the control
service reads, the filter's control_cluster and the control Service, the
NetworkPolicies and the Ray pods, the pinned filter image). No kubectl here:
the checks are plain Python, over the resources as kustomize would build them.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import deploylib as dl

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

API_VERSIONS = {
    "Namespace": "v1", "ServiceAccount": "v1", "PersistentVolumeClaim": "v1", "Service": "v1",
    "ConfigMap": "v1", "Secret": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Gateway": "networking.istio.io/v1", "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1", "ServiceEntry": "networking.istio.io/v1",
    "EnvoyFilter": "networking.istio.io/v1alpha3",
    "AuthorizationPolicy": "security.istio.io/v1", "PeerAuthentication": "security.istio.io/v1",
    "WasmPlugin": "extensions.istio.io/v1alpha1",
}
CLUSTER_SCOPED = {"Namespace"}

# extensions.istio.io/v1alpha1 WasmPlugin (istio/api extensions/v1alpha1/wasm.proto).
WASMPLUGIN_FIELDS = {"selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
                     "verificationKey", "pluginConfig", "pluginName", "phase", "priority", "failStrategy",
                     "vmConfig", "match", "type"}
WASMPLUGIN_ENUMS = {"phase": {"UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"},
                    "failStrategy": {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"},
                    "imagePullPolicy": {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"},
                    "type": {"UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"}}
ENVOYFILTER_APPLY_TO = {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
                        "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"}
ENVOYFILTER_OPS = {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"}
ENVOYFILTER_CONTEXTS = {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"}
PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"]

BUILDS = {name: dl.kustomize(path) for name, path in dl.DEPLOYMENTS.items()}
ALL_DOCS = [(p, d) for p in dl.all_manifest_files() for d in dl.load_docs(p)]


def doc_id(x):
    if isinstance(x, tuple):
        p, d = x
        return f"{p.relative_to(dl.ROOT)}:{d.get('kind')}/{d.get('metadata', {}).get('name')}"
    return str(x)


# ---------------------------------------------------------------- every document


@pytest.mark.parametrize("item", ALL_DOCS, ids=doc_id)
def test_document_has_identity(item):
    path, doc = item
    assert dl.is_manifest(doc), f"{path}: a document without apiVersion/kind"
    kind = doc["kind"]
    assert kind in API_VERSIONS, f"{path}: kind {kind} is not one this test knows (add its checks)"
    assert doc["apiVersion"] == API_VERSIONS[kind], f"{path}: {kind} should be {API_VERSIONS[kind]}"
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    assert name and len(name) <= 253 and DNS_SUBDOMAIN.match(name), f"{path}: bad metadata.name {name!r}"
    if kind in ("Service", "Namespace"):
        assert len(name) <= 63 and DNS_LABEL.match(name), f"{path}: a {kind} name must be a DNS label"
    # No kustomize `namespace:` transformer is used (two namespaces), so each says its own.
    if kind not in CLUSTER_SCOPED:
        assert DNS_LABEL.match(meta.get("namespace", "")), f"{path}: {kind}/{name} has no namespace"
    for key in list(meta.get("labels", {})) + list(meta.get("annotations", {})):
        assert re.match(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", key), key
    for value in meta.get("labels", {}).values():
        assert isinstance(value, str) and len(value) <= 63, f"{path}: label values are strings: {value!r}"


@pytest.mark.parametrize("item", ALL_DOCS, ids=doc_id)
def test_document_schema(item):
    """The fields each kind needs, and enum values where the API has them."""
    path, doc = item
    kind, spec, where = doc["kind"], doc.get("spec", {}), f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"
    if kind == "Deployment":
        assert isinstance(spec.get("replicas", 1), int)
        match = spec["selector"]["matchLabels"]
        labels = dl.pod_labels(doc)
        assert match and dl.selects({"matchLabels": match}, labels), f"{where}: selector does not match its pods"
        pod = dl.pod_spec(doc)
        volumes = {v["name"] for v in pod.get("volumes", [])}
        names = [c["name"] for c in dl.all_containers(pod)]
        assert len(names) == len(set(names)), f"{where}: duplicate container names"
        for c in dl.all_containers(pod):
            assert c.get("image"), f"{where}/{c['name']}: no image"
            ports = [p.get("name") for p in c.get("ports", [])]
            assert all(p and len(p) <= 15 and DNS_LABEL.match(p) for p in ports), f"{where}: port names"
            assert len(ports) == len(set(ports))
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}/{c['name']}: mounts unknown volume {m['name']}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in ports, f"{where}/{c['name']}: {probe} on unknown port {port}"
            for env in c.get("env", []):
                assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env["name"])
                assert ("value" in env) != ("valueFrom" in env), f"{where}: env {env['name']}"
                assert isinstance(env.get("value", ""), str), f"{where}: env {env['name']} must be a string"
    elif kind == "Service":
        ports = spec["ports"]
        assert spec.get("selector"), f"{where}: a Service without selector"
        if len(ports) > 1:
            assert all(p.get("name") for p in ports), f"{where}: multi-port Services name every port"
        for p in ports:
            assert isinstance(p["port"], int) and 0 < p["port"] < 65536
    elif kind == "PersistentVolumeClaim":
        assert spec["accessModes"] and spec["resources"]["requests"]["storage"]
    elif kind == "PodDisruptionBudget":
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec) and spec["selector"]["matchLabels"]
    elif kind == "NetworkPolicy":
        assert "podSelector" in spec, f"{where}: podSelector is required (use {{}} for all pods)"
        assert set(spec["policyTypes"]) <= {"Ingress", "Egress"} and spec["policyTypes"]
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction, []):
                assert set(rule) <= {peers_key, "ports"}, f"{where}: {direction} rule keys {set(rule)}"
                for port in rule.get("ports", []):
                    assert port.get("protocol", "TCP") in ("TCP", "UDP", "SCTP")
                for peer in rule.get(peers_key, []):
                    assert set(peer) <= {"podSelector", "namespaceSelector", "ipBlock"} and peer
                    if "ipBlock" in peer:
                        assert set(peer) == {"ipBlock"}, f"{where}: ipBlock cannot be combined with selectors"
                        cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                        for ex in peer["ipBlock"].get("except", []):
                            assert ipaddress.ip_network(ex).subnet_of(cidr), f"{where}: {ex} not inside {cidr}"
    elif kind == "EnvoyFilter":
        assert spec["workloadSelector"]["labels"], f"{where}: would apply to every workload of the namespace"
        for cp in spec["configPatches"]:
            assert cp["applyTo"] in ENVOYFILTER_APPLY_TO and cp["patch"]["operation"] in ENVOYFILTER_OPS
            assert cp.get("match", {}).get("context", "ANY") in ENVOYFILTER_CONTEXTS
            if cp["applyTo"] == "EXTENSION_CONFIG":
                # Istio (pilot envoyfilter/extension_configuration_patch.go) only ADDs extension configs.
                assert cp["patch"]["operation"] == "ADD"
                assert cp["patch"]["value"]["typed_config"]["@type"] == dl.WASM_TYPE
    elif kind == "WasmPlugin":
        assert set(spec) <= WASMPLUGIN_FIELDS, f"{where}: fields the WasmPlugin API lacks: {set(spec) - WASMPLUGIN_FIELDS}"
        for key, allowed in WASMPLUGIN_ENUMS.items():
            assert spec.get(key, next(iter(allowed))) in allowed, f"{where}: {key}={spec.get(key)}"
        assert re.match(r"^(oci|https?|file)://", spec["url"]), f"{where}: url scheme"
        assert re.fullmatch(r"(|[a-f0-9]{64})", spec.get("sha256", "")), f"{where}: sha256"
        assert not ("selector" in spec and "targetRefs" in spec)
        for m in spec.get("match", []):
            assert m.get("mode", "UNDEFINED") in {"UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"}
        assert isinstance(spec.get("pluginConfig", {}), dict)
    elif kind == "ServiceEntry":
        assert spec["hosts"] and spec.get("location") in ("MESH_EXTERNAL", "MESH_INTERNAL")
        assert spec.get("resolution") in ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
        for p in spec["ports"]:
            assert p["protocol"] in ("HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS") and p["name"]
    elif kind == "DestinationRule":
        tls_settings = [pl["tls"] for pl in spec.get("trafficPolicy", {}).get("portLevelSettings", []) if "tls" in pl]
        for tls in tls_settings + [spec.get("trafficPolicy", {}).get("tls", {"mode": "DISABLE"})]:
            assert tls["mode"] in ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
    elif kind == "Gateway":
        assert spec["selector"]
        for s in spec["servers"]:
            assert s["port"]["protocol"] in ("HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS") and s["hosts"]
    elif kind == "VirtualService":
        assert spec["hosts"] and spec["http"]
        for route in spec["http"]:
            assert route["route"] and all(r["destination"]["host"] for r in route["route"])
    elif kind == "AuthorizationPolicy":
        assert spec.get("action", "ALLOW") in ("ALLOW", "DENY", "AUDIT", "CUSTOM") and spec["selector"]
    elif kind == "PeerAuthentication":
        assert spec["mtls"]["mode"] in ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


# ---------------------------------------------------------------- references, per deployment


@pytest.fixture(params=sorted(BUILDS), ids=lambda n: f"envoy/{n}")
def build(request) -> dl.Build:
    return BUILDS[request.param]


def pods(build: dl.Build):
    return [d for d in build.docs if dl.pod_spec(d) is not None]


def test_names_are_unique(build):
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in build.docs]
    assert len(ids) == len(set(ids)), f"duplicates: {[i for i in ids if ids.count(i) > 1]}"


def test_namespaces_exist_or_are_the_users(build):
    declared = {d["metadata"]["name"] for d in build.find("Namespace")}
    used = {d["metadata"]["namespace"] for d in build.docs if d["kind"] not in CLUSTER_SCOPED}
    # `ray` is the RayCluster's namespace, the user's (kuberay/networkpolicy.yaml).
    assert used - declared <= {"ray"}, f"namespaces used but not declared: {used - declared}"


def test_services_select_pods_and_ports(build):
    for svc in build.find("Service"):
        ns = svc["metadata"]["namespace"]
        selected = [d for d in pods(build) if d["metadata"]["namespace"] == ns
                    and dl.selects(svc["spec"]["selector"], dl.pod_labels(d))]
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {len(selected)} workloads"
        ports = {p["name"]: p["containerPort"] for c in dl.pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            ok = target in ports if isinstance(target, str) else target in ports.values()
            assert ok, f"Service {svc['metadata']['name']} port {p['port']}: targetPort {target} is not a container port"


def test_pdbs_select_a_deployment(build):
    for pdb in build.find("PodDisruptionBudget"):
        assert [d for d in build.find("Deployment", namespace=pdb["metadata"]["namespace"])
                if dl.selects(pdb["spec"]["selector"], dl.pod_labels(d))]


def test_pod_references_resolve(build):
    """ServiceAccounts, ConfigMaps, Secrets (and their keys) and claims a pod names exist."""
    for w in pods(build):
        ns, spec, name = w["metadata"]["namespace"], dl.pod_spec(w), w["metadata"]["name"]
        if "serviceAccountName" in spec:
            build.one("ServiceAccount", spec["serviceAccountName"], ns)
        for v in spec.get("volumes", []):
            if "configMap" in v:
                build.one("ConfigMap", v["configMap"]["name"], ns)
            if "secret" in v:
                build.one("Secret", v["secret"]["secretName"], ns)
            if "persistentVolumeClaim" in v:
                build.one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], ns)
        for c in dl.all_containers(spec):
            for env in c.get("env", []):
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    ref = env.get("valueFrom", {}).get(key)
                    if ref:
                        obj = build.one(kind, ref["name"], ns)
                        assert ref["key"] in obj.get("data", {}) | obj.get("stringData", {}), (
                            f"{name}/{c['name']}: {kind} {ref['name']} has no key {ref['key']}")


def test_images_are_pinned_or_set_by_kustomize(build):
    """Every image is either renamed by a kustomization's `images:` (to a
    concrete tag or digest), or explicit: registry, repository and a version
    tag or digest. `auto` only for Istio's injected gateway proxy."""
    for w in pods(build):
        gateway_injected = w["spec"]["template"]["metadata"].get("annotations", {}).get(
            "inject.istio.io/templates") == "gateway"
        for c in dl.all_containers(dl.pod_spec(w)):
            image, where = c["image"], f"{w['metadata']['name']}/{c['name']}"
            if image == "auto":
                assert gateway_injected and c["name"] == "istio-proxy", f"{where}: `auto` is Istio's gateway injection only"
                continue
            if image in build.images:
                entry = build.images[image]
                assert entry.get("newName") and (entry.get("newTag") or entry.get("digest")), f"{where}: {entry}"
                assert entry.get("newTag") != "latest"
                continue
            m = re.fullmatch(r"([a-z0-9.-]+\.[a-z]+(:\d+)?)/([a-z0-9._/-]+)(:([\w.-]+))?(@sha256:[0-9a-f]{64})?", image)
            assert m, f"{where}: image {image!r} is neither in the kustomization nor registry/repository:tag"
            assert m.group(6) or (m.group(5) and m.group(5) != "latest"), f"{where}: {image} has no version"


def control_deployment(build):
    (d,) = [d for d in build.find("Deployment") if dl.pod_labels(d).get("app.kubernetes.io/name") == "keybrake-control"]
    return d


def on_postgres(build) -> bool:
    (container,) = dl.pod_spec(control_deployment(build))["containers"]
    return any(e["name"] == "KEYBRAKE_DATABASE_URL" for e in container.get("env", []))


def test_control_secrets_are_the_env_vars_it_reads(build):
    """The generated Secrets' keys, the control container's secretKeyRefs and
    the secrets `keybrake serve` loads (control/src/serve.rs), plus the
    database URL on PostgreSQL (it holds a password), are one set."""
    wanted = dl.control_secret_env_vars()
    assert wanted == {"KEYBRAKE_STRIPE_SECRET_KEY", "KEYBRAKE_ADMIN_KEY"}, wanted
    if on_postgres(build):
        wanted = wanted | {"KEYBRAKE_DATABASE_URL"}
    control = control_deployment(build)
    (container,) = dl.pod_spec(control)["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == wanted
    assert all(r["key"] == name for name, r in refs.items()), "each secret under its env var's name"
    secrets = [build.one("Secret", n, control["metadata"]["namespace"]) for n in sorted({r["name"] for r in refs.values()})]
    assert all("x-generated-by" in s for s in secrets), "Secrets come from a secretGenerator, not from a file in git"
    assert set().union(*(s["data"] for s in secrets)) == wanted
    # The committed examples hold no secret: empty values, which `keybrake serve` refuses.
    assert all(v == "" for s in secrets for v in s["data"].values())
    for secret in secrets:
        directory = Path(secret["x-generated-by"]).parent
        ignored = (directory / ".gitignore").read_text().split()
        for example in directory.glob("*.env.example"):
            assert example.name.removesuffix(".example") in ignored, f"{directory}: the real {example.stem} is git-ignored"


def test_control_env_vars_exist(build):
    """Every env var set on the control container is one the binary reads."""
    (container,) = dl.pod_spec(control_deployment(build))["containers"]
    known = dl.control_env_vars()
    for env in container["env"]:
        assert env["name"] in known, f"keybrake does not read {env['name']}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    # In a pod the listeners must not be loopback-only (the defaults are).
    assert env["KEYBRAKE_GRPC_LISTEN"].startswith("0.0.0.0:") and env["KEYBRAKE_HTTP_LISTEN"].startswith("0.0.0.0:")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["KEYBRAKE_GRPC_LISTEN"] == f"0.0.0.0:{ports['grpc']}"
    assert env["KEYBRAKE_HTTP_LISTEN"] == f"0.0.0.0:{ports['http']}"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["KEYBRAKE_DATA_DIR"] in mounts, "the SQLite directory is on the volume"


# ---------------------------------------------------------------- the control channel (mutual TLS)

CONTROL_TLS_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}


def secret_file(build: dl.Build, pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file `path` as the container sees it: it must
    lie in a mount of a Secret volume that has that key."""
    volumes = {v["name"]: v for v in dl.pod_spec(pod)["volumes"]}
    for m in container.get("volumeMounts", []):
        directory = m["mountPath"].rstrip("/") + "/"
        if path.startswith(directory):
            volume = volumes[m["name"]]
            assert "secret" in volume, f"{path}: mounted from {m['name']}, which is not a Secret"
            name, key = volume["secret"]["secretName"], path[len(directory):]
            secret = build.one("Secret", name, pod["metadata"]["namespace"])
            assert key in secret["data"], f"{path}: Secret {name} has no key {key}"
            assert m.get("readOnly") is True, f"{path}: mount it read-only"
            # Only the pod's user and group may read a private key.
            mode = volume["secret"].get("defaultMode", 0o644)
            assert mode & 0o007 == 0, f"{name}: defaultMode {oct(mode)} lets other users read it"
            assert dl.pod_spec(pod).get("securityContext", {}).get("fsGroup") is not None, (
                f"{pod['metadata']['name']}: the Secret's files need the pod's fsGroup to be readable")
            return name, key
    raise AssertionError(f"{container['name']}: {path} is in no mounted volume")


def made_by_make_tls(build: dl.Build, secret: str, key: str, side: str) -> None:
    """The Secret's key comes from envoy/k8s/make-tls.sh's output for `side`
    (control/ or gateway/), never from a file in git."""
    generated = build.made_files.get((secret, key))
    assert generated is not None, f"Secret {secret}/{key} is not generated from make-tls.sh's (git-ignored) files"
    assert generated.parent.name == side and generated.name == key, f"{secret}/{key} comes from {generated}"
    assert generated.parent.parent == dl.ENVOY_DIR / "k8s" / "tls", generated


def test_control_grpc_takes_only_client_certificates(build):
    """The control service's gRPC port is TCP with mutual TLS in every
    deployment: its certificate, key and client CA are files of a Secret made
    by make-tls.sh (the control side), and the insecure flag is set nowhere."""
    control = control_deployment(build)
    (container,) = dl.pod_spec(control)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "KEYBRAKE_INSECURE_GRPC_TCP_WITHOUT_CLIENT_AUTH" not in env
    assert not any("insecure" in a for a in container.get("args", []))
    files = {name: env.get(name) for name in ("KEYBRAKE_GRPC_TLS_CERT", "KEYBRAKE_GRPC_TLS_KEY", "KEYBRAKE_GRPC_CLIENT_CA")}
    assert all(files.values()), f"the gRPC port needs all three TLS files: {files}"
    keys = {name: secret_file(build, control, container, path) for name, path in files.items()}
    assert len({s for s, _ in keys.values()}) == 1, "one Secret holds the control service's side"
    assert {k for _, k in keys.values()} == CONTROL_TLS_SECRET_KEYS
    assert keys["KEYBRAKE_GRPC_CLIENT_CA"][1] == "ca.crt" and keys["KEYBRAKE_GRPC_TLS_KEY"][1] == "tls.key"
    for secret, key in keys.values():
        made_by_make_tls(build, secret, key, "control")


def gateway_side(build: dl.Build, files: dict, pod: dict, container: dict) -> None:
    """The gateway's side of the channel (`files`: cert, key, ca as the
    gateway reads them): a Secret made by make-tls.sh (the gateway side)."""
    keys = {role: secret_file(build, pod, container, path) for role, path in files.items()}
    assert len({s for s, _ in keys.values()}) == 1, "one Secret holds the gateway's side"
    assert {role: k for role, (_, k) in keys.items()} == {"cert": "tls.crt", "key": "tls.key", "ca": "ca.crt"}
    for secret, key in keys.values():
        made_by_make_tls(build, secret, key, "gateway")
    control_secret = {s for (s, _k) in build.made_files if build.made_files[(s, _k)].parent.name == "control"}
    assert {s for s, _ in keys.values()}.isdisjoint(control_secret), "the gateway never holds the control service's key"


def test_make_tls_makes_what_the_deployments_expect(channel_tls):
    """make-tls.sh's output has the files the Secrets are generated from; the
    control service's certificate carries the names the gateways check (the
    Service's) and is for servers only, the gateway's for clients only, and
    one CA signed both (each side's ca.crt)."""
    import subprocess
    for side in ("control", "gateway"):
        assert sorted(p.name for p in (channel_tls / side).iterdir()) == sorted(CONTROL_TLS_SECRET_KEYS)
        assert (channel_tls / side / "tls.key").stat().st_mode & 0o077 == 0
    for build_ in BUILDS.values():
        for (secret, key), path in build_.made_files.items():
            assert (channel_tls / path.parent.name / key).is_file(), f"{secret}/{key}"

    def ext(side: str, name: str) -> str:
        return subprocess.run(["openssl", "x509", "-noout", "-ext", name, "-in", str(channel_tls / side / "tls.crt")],
                              check=True, capture_output=True, text=True).stdout

    svc = control_service(KUBERAY)
    fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert f"DNS:{fqdn}" in ext("control", "subjectAltName")
    assert "TLS Web Server Authentication" in ext("control", "extendedKeyUsage")
    assert "Client" not in ext("control", "extendedKeyUsage")
    assert "TLS Web Client Authentication" in ext("gateway", "extendedKeyUsage")
    assert "Server" not in ext("gateway", "extendedKeyUsage")
    assert (channel_tls / "control" / "ca.crt").read_bytes() == (channel_tls / "gateway" / "ca.crt").read_bytes()
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(channel_tls / "control" / "ca.crt"),
                             str(channel_tls / "control" / "tls.crt"), str(channel_tls / "gateway" / "tls.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_control_replicas_fit_the_storage(build):
    """SQLite: one replica, never two at once, its file on a claim. PostgreSQL:
    several replicas, rolled one at a time, no state on the pods."""
    control = control_deployment(build)
    spec = control["spec"]
    volumes = {v["name"]: v for v in dl.pod_spec(control)["volumes"]}
    if on_postgres(build):
        assert spec["replicas"] >= 2 and spec["strategy"]["type"] == "RollingUpdate"
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert not build.find("PersistentVolumeClaim") and "persistentVolumeClaim" not in volumes["data"]
        (pdb,) = build.find("PodDisruptionBudget", namespace=control["metadata"]["namespace"])
        assert dl.selects(pdb["spec"]["selector"], dl.pod_labels(control))
    else:
        assert spec.get("replicas", 1) == 1 and spec["strategy"]["type"] == "Recreate"
        build.one("PersistentVolumeClaim", volumes["data"]["persistentVolumeClaim"]["claimName"],
                  control["metadata"]["namespace"])


def control_service(build):
    (svc,) = [s for s in build.find("Service") if dl.selects(s["spec"]["selector"], dl.pod_labels(control_deployment(build)))]
    return svc


def control_cluster_for_istio(build) -> str:
    svc = control_service(build)
    (grpc,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc.get("appProtocol", "grpc") == "grpc"
    return f"outbound|{grpc['port']}||{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"


# ---------------------------------------------------------------- Istio


ISTIO = BUILDS["istio"]


def istio_gateway_deployment():
    (d,) = [d for d in ISTIO.find("Deployment") if d["spec"]["template"]["metadata"].get("annotations", {}).get(
        "inject.istio.io/templates") == "gateway"]
    return d


def test_istio_filter_names_the_control_cluster():
    """control_cluster is Istio's outbound cluster of the control Service's
    port named grpc (the name that makes it an HTTP/2 cluster)."""
    (ef,) = ISTIO.find("EnvoyFilter")
    ext, _ = dl.wasm_plugin_config_from_envoyfilter(ef)
    assert dl.plugin_config_json(ext) == {"control_cluster": control_cluster_for_istio(ISTIO)}


def test_istio_envoyfilter_sets_what_wasmplugin_cannot():
    (ef,) = ISTIO.find("EnvoyFilter")
    ext, http = dl.wasm_plugin_config_from_envoyfilter(ef)
    config = ext["typed_config"]["config"]
    assert config["allow_on_headers_stop_iteration"] is True
    assert config["failure_policy"] == "FAIL_CLOSED"
    assert "allowOnHeadersStopIteration" not in WASMPLUGIN_FIELDS and "allow_on_headers_stop_iteration" not in WASMPLUGIN_FIELDS
    # The HTTP filter is the ECDS reference to the extension config, waiting for it.
    assert http["name"] == ext["name"]
    assert http["config_discovery"]["type_urls"] == [dl.WASM_TYPE]
    assert http["config_discovery"]["config_source"] == {"ads": {}, "initial_fetch_timeout": "0s"}
    (patch,) = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    assert patch["match"]["context"] == "GATEWAY"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    assert patch["patch"]["operation"] == "INSERT_BEFORE"


def test_istio_selectors_pick_the_gateway():
    gw_pod = dl.pod_labels(istio_gateway_deployment())
    (ef,) = ISTIO.find("EnvoyFilter")
    assert dl.selects(ef["spec"]["workloadSelector"]["labels"], gw_pod)
    (gateway,) = ISTIO.find("Gateway")
    assert dl.selects(gateway["spec"]["selector"], gw_pod)
    # Nothing else carries those labels: the filter is on the Keybrake gateway only.
    others = [d for d in ISTIO.find("Deployment") if d is not istio_gateway_deployment()]
    assert not any(dl.selects(ef["spec"]["workloadSelector"]["labels"], dl.pod_labels(d)) for d in others)


def test_istio_routes_resolve():
    (vs,) = ISTIO.find("VirtualService")
    gateways = {g["metadata"]["name"] for g in ISTIO.find("Gateway", namespace=vs["metadata"]["namespace"])}
    assert set(vs["spec"]["gateways"]) <= gateways and "mesh" not in vs["spec"]["gateways"]
    entries = {h: se for se in ISTIO.find("ServiceEntry") for h in se["spec"]["hosts"]}
    services = {f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local": s for s in ISTIO.find("Service")}
    routes = {}
    for http in vs["spec"]["http"]:
        (dest,) = [r["destination"] for r in http["route"]]
        port = dest["port"]["number"]
        if dest["host"] in entries:
            assert port in [p["number"] for p in entries[dest["host"]]["spec"]["ports"]]
        else:
            assert dest["host"] in services, f"route to unknown host {dest['host']}"
            assert port in [p["port"] for p in services[dest["host"]]["spec"]["ports"]]
        assert http["retries"] == {"attempts": 0}, "no proxy-level retries of priced calls"
        uri = http["match"][0]["uri"]
        routes[uri.get("prefix") or uri["exact"]] = (http, dest)
    stripe, dest = routes["/stripe/"]
    assert dest == {"host": "api.stripe.com", "port": {"number": 443}}
    assert stripe["rewrite"] == {"uri": "/", "authority": "api.stripe.com"}
    # Stripe's own paths at the root go unchanged (SDKs that take only a host and a port).
    for root in ("/v1/", "/v2/"):
        http, dest = routes[root]
        assert dest == {"host": "api.stripe.com", "port": {"number": 443}}
        assert http["rewrite"] == {"authority": "api.stripe.com"}, "the path is Stripe's already"
    for control in ("/admin/", "/mcp"):
        assert routes[control][1]["host"] == "keybrake-control.keybrake.svc.cluster.local"
    # The filter's routes (src/config.rs default: /stripe and the roots) are what the gateway routes.
    assert routes.keys() == {"/stripe/", "/v1/", "/v2/", "/admin/", "/mcp"}


def test_istio_stripe_is_external_tls_and_private():
    (se,) = ISTIO.find("ServiceEntry")
    assert se["spec"]["hosts"] == ["api.stripe.com"] and se["spec"]["location"] == "MESH_EXTERNAL"
    assert se["spec"]["exportTo"] == ["."], "only the keybrake namespace (the gateway) sees api.stripe.com"
    dr = ISTIO.one("DestinationRule", "stripe-api")
    assert dr["spec"]["host"] == "api.stripe.com"
    (level,) = dr["spec"]["trafficPolicy"]["portLevelSettings"]
    assert level["port"]["number"] == 443
    assert level["tls"] == {"mode": "SIMPLE", "sni": "api.stripe.com", "subjectAltNames": ["api.stripe.com"]}


def test_istio_only_the_gateway_reaches_control():
    """The admin port through the sidecar: Istio mTLS, the gateway's identity
    only. The gRPC port is left to the control service's own mutual TLS (the
    sidecar does not capture it), and the gateway presents its certificate
    there (a DestinationRule with files of its Secret, mounted in its proxy)."""
    gw = istio_gateway_deployment()
    control = control_deployment(ISTIO)
    sa = dl.pod_spec(gw)["serviceAccountName"]
    (authz,) = ISTIO.find("AuthorizationPolicy")
    (peer,) = ISTIO.find("PeerAuthentication")
    assert dl.selects(authz["spec"]["selector"], dl.pod_labels(control))
    assert dl.selects(peer["spec"]["selector"], dl.pod_labels(control)) and peer["spec"]["mtls"]["mode"] == "STRICT"
    (rule,) = authz["spec"]["rules"]
    assert rule["from"] == [{"source": {"principals": [f"cluster.local/ns/{gw['metadata']['namespace']}/sa/{sa}"]}}]
    (c,) = dl.pod_spec(control)["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert [int(p) for p in rule["to"][0]["operation"]["ports"]] == [ports["http"]]
    assert dl.pod_labels(control).get("sidecar.istio.io/inject") == "true"
    annotations = control["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("traffic.sidecar.istio.io/excludeInboundPorts") == str(ports["grpc"]), (
        "the sidecar would take the gRPC port's TLS over")
    # The gateway's side: a DestinationRule for the control Service's grpc port, MUTUAL, with its files.
    svc = control_service(ISTIO)
    fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    (dr,) = [d for d in ISTIO.find("DestinationRule") if d["spec"]["host"] == fqdn]
    (level,) = [pl for pl in dr["spec"]["trafficPolicy"]["portLevelSettings"] if pl["port"]["number"] == grpc_port]
    tls = level["tls"]
    assert tls["mode"] == "MUTUAL" and tls["sni"] == fqdn and tls["subjectAltNames"] == [fqdn]
    (proxy,) = [x for x in dl.pod_spec(gw)["containers"] if x["name"] == "istio-proxy"]
    gateway_side(ISTIO, {"cert": tls["clientCertificate"], "key": tls["privateKey"], "ca": tls["caCertificates"]},
                 gw, proxy)


def test_istio_trusts_forwarded_for_only_from_the_sidecar():
    """Behind its sidecar the admin port's every peer is the sidecar, on
    loopback, which admits only the gateway: its X-Forwarded-For is believed
    from there, and from nowhere else."""
    (c,) = dl.pod_spec(control_deployment(ISTIO))["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    trusted = [ipaddress.ip_network(x) for x in env["KEYBRAKE_TRUSTED_PROXIES"].split(",")]
    assert all(n.is_loopback for n in trusted), trusted
    for name in ("kuberay", "k8s/postgres"):
        (c,) = dl.pod_spec(control_deployment(BUILDS[name]))["containers"]
        assert "KEYBRAKE_TRUSTED_PROXIES" not in {e["name"] for e in c["env"]}, f"{name}: peers are other pods"


def test_wasmplugin_is_reference_only_and_in_step():
    """The WasmPlugin form is applied by no kustomization (it would run the
    filter twice), and says the same as the EnvoyFilter."""
    (wp_path,) = (dl.ENVOY_DIR / "istio" / "wasmplugin").glob("*.yaml")
    for b in BUILDS.values():
        assert wp_path not in b.files and not b.find("WasmPlugin")
    (wp,) = dl.load_docs(wp_path)
    (ef,) = ISTIO.find("EnvoyFilter")
    ext, _ = dl.wasm_plugin_config_from_envoyfilter(ef)
    config = ext["typed_config"]["config"]
    remote = config["vm_config"]["code"]["remote"]
    spec = wp["spec"]
    assert spec["url"] == remote["http_uri"]["uri"] and spec["sha256"] == remote["sha256"]
    assert spec["pluginConfig"] == dl.plugin_config_json(ext)
    assert spec["pluginName"] == config["root_id"]
    assert spec["failStrategy"] == "FAIL_CLOSE" and spec["type"] == "HTTP"
    assert spec["selector"]["matchLabels"] == ef["spec"]["workloadSelector"]["labels"]
    assert wp["metadata"]["namespace"] == ef["metadata"]["namespace"]


# ---------------------------------------------------------------- KubeRay


KUBERAY = BUILDS["kuberay"]
RAY_PODS = {"ray.io/is-ray-node": "yes"}


def egress_gateway():
    return KUBERAY.one("Deployment", "keybrake-egress", "keybrake")


def kuberay_envoy():
    cm_name = next(v["configMap"]["name"] for v in dl.pod_spec(egress_gateway())["volumes"] if "configMap" in v)
    cm = KUBERAY.one("ConfigMap", cm_name, "keybrake")
    return cm, yaml.safe_load(cm["data"]["envoy.yaml"])


def policy(name):
    return KUBERAY.one("NetworkPolicy", name)


def peer_selects(peer: dict, namespace: str, labels: dict, policy_ns: str) -> bool:
    ns_ok = (dl.selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
             if "namespaceSelector" in peer else namespace == policy_ns)
    return "ipBlock" not in peer and ns_ok and dl.selects(peer.get("podSelector", {}), labels)


def test_ray_pods_egress_only_to_gateway_dns_and_ray():
    np = policy("keybrake-ray-egress")
    assert np["spec"]["podSelector"] == {"matchLabels": RAY_PODS} and np["spec"]["policyTypes"] == ["Egress"]
    gw = egress_gateway()
    gw_port = {p["name"]: p["containerPort"] for p in dl.pod_spec(gw)["containers"][0]["ports"]}["http"]
    kinds = []
    for rule in np["spec"]["egress"]:
        peers = rule["to"]
        assert all("ipBlock" not in p for p in peers), "no direct route out of the cluster for Ray pods"
        if any(peer_selects(p, gw["metadata"]["namespace"], dl.pod_labels(gw), np["metadata"]["namespace"]) for p in peers):
            assert rule["ports"] == [{"protocol": "TCP", "port": gw_port}]
            kinds.append("gateway")
        elif all(p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in peers):
            assert {p["port"] for p in rule["ports"]} == {53}
            kinds.append("dns")
        else:
            assert peers == [{"podSelector": {"matchLabels": RAY_PODS}}], f"unexpected egress {rule}"
            kinds.append("ray")
    assert sorted(kinds) == ["dns", "gateway", "ray"]


def test_only_the_gateway_leaves_the_cluster():
    """In the keybrake namespace everything is denied egress but DNS; the
    gateway alone may go to public IPv4 on 443, and to the control service."""
    deny = policy("keybrake-default-deny-egress")
    assert deny["metadata"]["namespace"] == "keybrake" and deny["spec"]["podSelector"] == {}
    assert all(p.get("port") == 53 for r in deny["spec"]["egress"] for p in r["ports"])
    np = policy("keybrake-egress-gateway")
    gw, control = egress_gateway(), control_deployment(KUBERAY)
    assert dl.selects(np["spec"]["podSelector"], dl.pod_labels(gw))
    out = [r for r in np["spec"]["egress"] if any("ipBlock" in p for p in r["to"])]
    (internet,) = out
    (block,) = [p["ipBlock"] for p in internet["to"]]
    assert block["cidr"] == "0.0.0.0/0" and internet["ports"] == [{"protocol": "TCP", "port": 443}]
    excepted = [ipaddress.ip_network(e) for e in block["except"]]
    for private in PRIVATE_V4:
        assert any(ipaddress.ip_network(private).subnet_of(e) for e in excepted), f"{private} reachable"
    (to_control,) = [r for r in np["spec"]["egress"] if r not in out]
    assert all(peer_selects(p, "keybrake", dl.pod_labels(control), "keybrake") for p in to_control["to"])
    (c,) = dl.pod_spec(control)["containers"]
    assert sorted(p["port"] for p in to_control["ports"]) == sorted(p["containerPort"] for p in c["ports"])
    # Ingress: Ray pods of the same namespace the Ray policy lives in, and the
    # control service (its MCP endpoint's tool calls), on the gateway's port only.
    ray_ns = policy("keybrake-ray-egress")["metadata"]["namespace"]
    from_ray, from_control = [r for r in np["spec"]["ingress"] if "from" in r]
    assert all(peer_selects(p, ray_ns, RAY_PODS, "keybrake") for p in from_ray["from"])
    assert all(peer_selects(p, "keybrake", dl.pod_labels(control), "keybrake") for p in from_control["from"])
    gw_port = {p["name"]: p["containerPort"] for p in dl.pod_spec(gw)["containers"][0]["ports"]}["http"]
    assert from_ray["ports"] == from_control["ports"] == [{"protocol": "TCP", "port": gw_port}]
    # No other policy in these files opens a way out.
    for other in KUBERAY.find("NetworkPolicy"):
        if other is not np:
            for r in other["spec"].get("egress", []):
                assert all("ipBlock" not in p for p in r["to"]), other["metadata"]["name"]


def test_control_accepts_only_gateways():
    np = policy("keybrake-control")
    control = control_deployment(KUBERAY)
    assert dl.selects(np["spec"]["podSelector"], dl.pod_labels(control))
    (rule,) = np["spec"]["ingress"]
    (peer,) = rule["from"]
    # Both gateway flavours carry the label the policy admits.
    for gw in (egress_gateway(), istio_gateway_deployment()):
        assert peer_selects(peer, "keybrake", dl.pod_labels(gw), "keybrake")
    assert not peer_selects(peer, "keybrake", dl.pod_labels(control), "keybrake")


def gateway_service(build, gateway: dict) -> dict:
    (svc,) = [s for s in build.find("Service", namespace=gateway["metadata"]["namespace"])
              if dl.selects(s["spec"]["selector"], dl.pod_labels(gateway))]
    return svc


def gateway_url(svc: dict) -> str:
    (port,) = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "http"]
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


@pytest.mark.parametrize("name", ["kuberay", "istio"])
def test_control_reaches_its_gateway_for_mcp(name):
    """The MCP endpoint's tool calls go through the gateway: the control
    service is told the gateway Service's address (KEYBRAKE_GATEWAY_URL, its
    http port), and nothing in the deployment stops it from getting there."""
    build = BUILDS[name]
    gw = egress_gateway() if name == "kuberay" else istio_gateway_deployment()
    svc = gateway_service(build, gw)
    control = control_deployment(build)
    (c,) = dl.pod_spec(control)["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KEYBRAKE_GATEWAY_URL"] == gateway_url(svc)
    assert "KEYBRAKE_MCP_ALLOWED_HOSTS" not in env, "any Host: every /mcp request needs a vault key"
    # The port the Service sends that traffic to, on the gateway's container.
    (http,) = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
    ports = {p["name"]: p["containerPort"] for x in dl.pod_spec(gw)["containers"] for p in x.get("ports", [])}
    target = http["targetPort"] if isinstance(http["targetPort"], int) else ports[http["targetPort"]]
    control_ns, gw_ns = control["metadata"]["namespace"], gw["metadata"]["namespace"]
    # NetworkPolicies (where the deployment has them): some policy selecting the
    # control pods lets them out to the gateway's port, and if any policy
    # restricts the gateway's ingress, one admits the control pods there.
    policies = build.find("NetworkPolicy")
    egress = [p for p in policies if p["metadata"]["namespace"] == control_ns and "Egress" in p["spec"]["policyTypes"]
              and dl.selects(p["spec"]["podSelector"], dl.pod_labels(control))]
    if egress:
        assert any(peer_selects(peer, gw_ns, dl.pod_labels(gw), control_ns) and {"protocol": "TCP", "port": target} in r["ports"]
                   for p in egress for r in p["spec"].get("egress", []) for peer in r.get("to", [])), "no way out to the gateway"
    ingress = [p for p in policies if p["metadata"]["namespace"] == gw_ns and "Ingress" in p["spec"]["policyTypes"]
               and dl.selects(p["spec"]["podSelector"], dl.pod_labels(gw))]
    if ingress:
        assert any(peer_selects(peer, control_ns, dl.pod_labels(control), gw_ns) and {"protocol": "TCP", "port": target} in r["ports"]
                   for p in ingress for r in p["spec"].get("ingress", []) for peer in r.get("from", [])), "the gateway refuses it"
    assert name != "kuberay" or (egress and ingress), "the KubeRay deployment has both kinds of policy"
    # Istio: no AuthorizationPolicy on the gateway shuts the control service out, and its
    # sidecar speaks plain HTTP to the Gateway's HTTP server, as jobs do.
    for authz in build.find("AuthorizationPolicy"):
        selector = authz["spec"].get("selector", {}).get("matchLabels", {})
        assert not (authz["metadata"]["namespace"] == gw_ns and dl.selects({"matchLabels": selector}, dl.pod_labels(gw))), (
            f"{authz['metadata']['name']} restricts the gateway: allow the control service's identity there")
    if name == "istio":
        fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        (dr,) = [d for d in build.find("DestinationRule") if d["spec"]["host"] == fqdn]
        (level,) = dr["spec"]["trafficPolicy"]["portLevelSettings"]
        assert level == {"port": {"number": http["port"]}, "tls": {"mode": "DISABLE"}}
        (gateway,) = build.find("Gateway")
        assert [s["port"]["protocol"] for s in gateway["spec"]["servers"]] == ["HTTP"]


def test_kuberay_envoy_matches_its_pod():
    """Ports, the wasm path, the clusters and the preStop script of the
    gateway's Envoy config agree with the Deployment and the control Service."""
    cm, config = kuberay_envoy()
    gw = egress_gateway()
    spec = dl.pod_spec(gw)
    (envoy,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    listeners = {l["name"]: l["address"]["socket_address"] for l in config["static_resources"]["listeners"]}
    assert listeners["keybrake"] == {"address": "0.0.0.0", "port_value": ports["http"]}
    assert listeners["health"] == {"address": "0.0.0.0", "port_value": ports["health"]}
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "admin API stays on loopback"
    # The wasm file: written by the initContainer into the volume Envoy reads.
    filters = [n for _, n in dl.walk(config) if n.get("name") == "envoy.filters.http.wasm"]
    (wasm_filter,) = filters
    plugin = wasm_filter["typed_config"]["config"]
    assert plugin["allow_on_headers_stop_iteration"] is True and plugin["failure_policy"] == "FAIL_CLOSED"
    filename = plugin["vm_config"]["code"]["local"]["filename"]
    mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    directory, _, base = filename.rpartition("/")
    assert base == "plugin.wasm" and directory in mounts
    (init,) = spec["initContainers"]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert init_mounts[mounts[directory]] == directory and f"-C {directory} plugin.wasm" in init["args"][0]
    # control_cluster names an HTTP/2 cluster pointing at the control Service's grpc port.
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    control_name = dl.plugin_config_json(wasm_filter)["control_cluster"]
    grpc_cluster = clusters[control_name]
    assert "http2_protocol_options" in json.dumps(grpc_cluster["typed_extension_protocol_options"])
    svc = control_service(KUBERAY)
    fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}

    def address(cluster):
        (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        return ep["endpoint"]["address"]["socket_address"]

    assert address(grpc_cluster) == {"address": fqdn, "port_value": svc_ports["grpc"]}
    # gRPC over mutual TLS: the gateway's certificate from its Secret, the control service's name checked.
    files = dl.assert_control_mtls(grpc_cluster, fqdn)
    gateway_side(KUBERAY, files, gw, envoy)
    assert address(clusters["keybrake_admin"]) == {"address": fqdn, "port_value": svc_ports["http"]}
    # Stripe: TLS with SNI and the name checked.
    tls = clusters["stripe"]["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.stripe.com" and address(clusters["stripe"]) == {"address": "api.stripe.com", "port_value": 443}
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.stripe.com"}}]
    # preStop runs drain.sh from the same ConfigMap, and the drain waits fit the grace period.
    (config_mount,) = [m["mountPath"] for m in envoy["volumeMounts"] if m["name"] == "envoy-config"]
    assert envoy["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/bash", f"{config_mount}/drain.sh"]
    assert "drain.sh" in cm["data"] and envoy["args"][:2] == ["-c", f"{config_mount}/envoy.yaml"]
    env = {e["name"]: int(e["value"]) for e in envoy["env"]}
    drain_time = int(envoy["args"][envoy["args"].index("--drain-time-s") + 1])
    assert env["DRAIN_SECONDS"] == drain_time
    assert env["DRAIN_SECONDS"] + env["OUTBOX_TIMEOUT_SECONDS"] < spec["terminationGracePeriodSeconds"]
    assert dl.pod_labels(gw).get("sidecar.istio.io/inject") == "false"


def test_drain_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(dl.ENVOY_DIR / "kuberay" / "drain.sh")], check=True)


# ---------------------------------------------------------------- the pinned filter image


def test_filter_image_is_pinned_consistently():
    """The EnvoyFilter, the WasmPlugin and the KubeRay initContainer name one
    image, by digest, and each `sha256` is that digest. In git it is the
    placeholder (zero digest, which no registry serves: unpinned means
    closed); envoy/k8s/pin-filter.sh writes the real one."""
    refs = dl.filter_image_refs([dl.ENVOY_DIR / "istio", dl.ENVOY_DIR / "kuberay"])
    assert len(refs) == 3, refs
    assert len({ref for _, ref, _ in refs}) == 1, f"the filter image differs between manifests: {refs}"
    ref = refs[0][1]
    m = re.fullmatch(r"([a-z0-9.-]+(?::\d+)?/[a-z0-9._/-]+)@sha256:([0-9a-f]{64})", ref)
    assert m, f"not pinned by digest: {ref}"
    for where, _, sha in refs:
        assert sha in (None, m.group(2)), f"{where}: sha256 {sha} is not the digest in the URL"
    assert ref == f"{dl.PLACEHOLDER_REPO}@sha256:{dl.ZERO_DIGEST}", "commit the placeholder; pin at deploy time"


def test_pinning_recipe(tmp_path, wasm):
    """The documented recipe: package the filter, pin its digest with
    pin-filter.sh; afterwards every reference is REPOSITORY@<digest printed>,
    every sha256 field is that digest, which is the sha256 of the image's
    manifest blob (what Istio compares for an oci:// URL), and nothing else
    in the manifests changed."""
    out = subprocess.run([str(dl.ROOT / "scripts" / "package-oci.sh"), "--wasm", str(wasm), str(tmp_path / "oci")],
                         check=True, capture_output=True, text=True).stdout.strip()
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    assert out == manifest_digest
    blob = (tmp_path / "oci" / "blobs" / "sha256" / manifest_digest[len("sha256:"):]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == manifest_digest

    copy = tmp_path / "envoy"
    for d in ("k8s", "istio", "kuberay"):
        shutil.copytree(dl.ENVOY_DIR / d, copy / d)
    repo = "ghcr.io/example/keybrake-filter"
    pinned = subprocess.run([str(dl.ENVOY_DIR / "k8s" / "pin-filter.sh"), repo, manifest_digest,
                             str(copy / "istio"), str(copy / "kuberay")],
                            check=True, capture_output=True, text=True).stdout.strip()
    assert pinned == f"{repo}@{manifest_digest}"
    refs = dl.filter_image_refs([copy / "istio", copy / "kuberay"])
    assert len(refs) == 3 and {r for _, r, _ in refs} == {pinned}
    assert {s for _, _, s in refs if s is not None} == {manifest_digest[len("sha256:"):]}
    # Only the pinned lines changed.
    changed = 0
    for d in ("istio", "kuberay"):
        for path in dl.yaml_files(copy / d):
            before = (dl.ENVOY_DIR / d / path.relative_to(copy / d)).read_text().splitlines()
            after = path.read_text().splitlines()
            assert len(before) == len(after)
            changed += sum(a != b for a, b in zip(before, after))
    assert changed == 5  # EnvoyFilter uri + sha256, WasmPlugin url + sha256, FILTER_IMAGE
    # A bad digest is refused and changes nothing.
    bad = subprocess.run([str(dl.ENVOY_DIR / "k8s" / "pin-filter.sh"), repo, "sha256:1234", str(copy / "istio")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and {r for _, r, _ in dl.filter_image_refs([copy / "istio"])} == {pinned}
