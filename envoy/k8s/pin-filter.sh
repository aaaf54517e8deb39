#!/usr/bin/env bash
# Pins the Keybrake filter image in the deployment manifests, after
# scripts/package-oci.sh built it and you pushed it:
#
#   envoy/k8s/pin-filter.sh REPOSITORY DIGEST [DIR...]
#     REPOSITORY  where you pushed it, without tag: ghcr.io/acme/keybrake-filter
#     DIGEST      sha256:<64 hex>, what scripts/package-oci.sh printed
#     DIR         manifest directories (default: envoy/istio envoy/kuberay)
#
# It rewrites, in every .yaml under DIR, the three places that name the image
# (tests/deploy checks they agree):
#   uri: oci://...@sha256:...      the EnvoyFilter's ECDS code source
#   url: oci://...@sha256:...      the (reference) WasmPlugin
#   FILTER_IMAGE value ...@sha256:...   the KubeRay gateway's initContainer
# and the `sha256: "..."` fields beside them. For an oci:// URL Istio checks
# `sha256` against the image's *manifest* digest, which is what DIGEST is.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ $# -lt 2 ]; then sed -n '2,9p' "$0" >&2; exit 2; fi
repository=$1 digest=$2; shift 2
[ $# -gt 0 ] || set -- "$root/envoy/istio" "$root/envoy/kuberay"

exec python3 - "$repository" "$digest" "$@" <<'PY'
import pathlib
import re
import sys

repository, digest, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
    sys.exit(f"pin-filter.sh: DIGEST must be sha256:<64 lowercase hex>, got {digest!r}")
if not re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+", repository):
    sys.exit(f"pin-filter.sh: REPOSITORY must look like registry/path/name (no tag, no digest), got {repository!r}")
ref = f"{repository}@{digest}"
REF = r"[^\s\"'@]+@sha256:[0-9a-f]{64}"
rules = [
    (re.compile(rf"^(\s*(?:uri|url):\s*oci://){REF}\s*$", re.M), rf"\g<1>{ref}"),
    (re.compile(rf"^(\s*-\s*name:\s*FILTER_IMAGE\s*\n\s*value:\s*){REF}\s*$", re.M), rf"\g<1>{ref}"),
    (re.compile(r'^(\s*sha256:\s*)"[0-9a-f]{64}"\s*$', re.M), rf'\g<1>"{digest[len("sha256:"):]}"'),
]
changed = 0
for d in dirs:
    for path in sorted(pathlib.Path(d).rglob("*.yaml")):
        text = path.read_text()
        new, n = text, 0
        for pattern, replacement in rules:
            new, k = pattern.subn(replacement, new)
            n += k
        if n:
            path.write_text(new)
            changed += n
            print(f"pin-filter.sh: {path}: {n} field(s)", file=sys.stderr)
if not changed:
    sys.exit("pin-filter.sh: found nothing to pin under " + " ".join(dirs))
print(ref)
PY
