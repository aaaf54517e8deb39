#!/usr/bin/env bash
# Packages the Keybrake filter as an OCI image layout that Istio's Wasm image
# fetcher (and any OCI registry tool) accepts, without a Docker daemon, and
# prints the image's manifest digest (sha256:...) on stdout.
#
#   scripts/package-oci.sh OUT_DIR                  uses target/wasm/keybrake_filter.wasm
#   scripts/package-oci.sh --wasm FILE --tag 0.1.0 OUT_DIR
#
# The image is the "compat" variant of the Wasm image spec
# (github.com/solo-io/wasm, spec-compat.md), the one Istio tries first
# (pkg/wasm/imagefetcher.go, extractOCIStandardImage): one
# application/vnd.oci.image.layer.v1.tar+gzip layer holding `plugin.wasm`, the
# manifest annotated module.wasm.image/variant=compat, and a standard image
# config. It is also an ordinary (if unrunnable) container image, so `crane
# export`, skopeo and registries handle it like any other.
#
# The output is deterministic: the same .wasm gives the same digests (fixed
# mtimes and owners, one entry, gzip without name or time, canonical JSON), so
# the digest printed here is the one to pin in the manifests (the `sha256` of
# a WasmPlugin / EnvoyFilter with an oci:// URL is this *manifest* digest,
# not the sha256 of the .wasm file). SOURCE_DATE_EPOCH, if set, is the layer's
# mtime (default 0).
#
# OUT_DIR is replaced if it already holds an OCI layout; any other non-empty
# directory is refused. Push it with e.g.
#   skopeo copy --preserve-digests oci:OUT_DIR:TAG docker://REGISTRY/keybrake-filter:TAG
#   oras cp --from-oci-layout OUT_DIR:TAG REGISTRY/keybrake-filter:TAG
# (see envoy/istio/README.md).
set -euo pipefail
# Paths given on the command line are relative to the caller's directory; only
# the defaults are found from the repository root.
root=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,8p' "$0" >&2; exit 2; }

wasm=$root/target/wasm/keybrake_filter.wasm
# The image tag recorded in index.json (org.opencontainers.image.ref.name):
# the filter crate's version unless given.
tag=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --wasm) wasm=${2:?}; shift 2 ;;
    --tag) tag=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "package-oci.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage
[ -n "$tag" ] || { echo "package-oci.sh: no --tag and no version in Cargo.toml" >&2; exit 2; }
if [ ! -f "$wasm" ]; then
  echo "package-oci.sh: $wasm not found (build it first: scripts/build-filter.sh)" >&2
  exit 1
fi
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ] && [ ! -f "$out/oci-layout" ]; then
  echo "package-oci.sh: $out exists and is not an OCI layout; refusing to replace it" >&2
  exit 1
fi

exec python3 - "$wasm" "$out" "$tag" "${SOURCE_DATE_EPOCH:-0}" <<'PY'
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

wasm_path, out, tag, mtime = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
wasm = open(wasm_path, "rb").read()
if wasm[:4] != b"\0asm":
    sys.exit(f"package-oci.sh: {wasm_path} is not a WebAssembly module")


def canonical(obj) -> bytes:
    # Sorted keys, no spaces: the same object always serialises to the same bytes.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# The layer: a tar with the single entry plugin.wasm (the name Istio's fetcher
# looks for), owned by 0:0, mode 0644, fixed mtime. USTAR, so no PAX headers
# carrying atime/ctime.
info = tarfile.TarInfo("plugin.wasm")
info.size, info.mode, info.mtime = len(wasm), 0o644, mtime
info.uid = info.gid = 0
info.uname = info.gname = ""
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    tar.addfile(info, io.BytesIO(wasm))
layer_tar = buf.getvalue()
# gzip with mtime 0 and no file name in the header (what `gzip -n` does).
layer = gzip.compress(layer_tar, compresslevel=9, mtime=0)

# The image config. rootfs.diff_ids is the digest of the *uncompressed* layer,
# as the image spec requires. No `created`, no history: nothing time-dependent.
# The platform says what the module is, in Go's names for WebAssembly
# (GOARCH=wasm; wasip1 is the nearest GOOS, though a proxy-wasm module uses no
# WASI): it is not a linux/amd64 program, and Envoy's V8 runs it on any node.
# Istio's fetcher and `crane export` never read the config's platform.
config = canonical({
    "architecture": "wasm",
    "os": "wasip1",
    "config": {},
    "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
})

manifest = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(layer), "size": len(layer)}],
    # The compat spec asks for this annotation on OCI-media-type images.
    "annotations": {"module.wasm.image/variant": "compat"},
})

index = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": digest(manifest), "size": len(manifest),
                   # Lets `skopeo copy oci:DIR:TAG` / `oras cp --from-oci-layout DIR:TAG` find it.
                   "annotations": {"org.opencontainers.image.ref.name": tag}}],
})

# Write into a fresh sibling directory, then swap it in, so a failed run never
# leaves a half-written layout behind.
tmp = out.rstrip("/") + ".tmp-package-oci"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(os.path.join(tmp, "blobs", "sha256"))
for blob in (layer, config, manifest):
    with open(os.path.join(tmp, "blobs", "sha256", digest(blob)[len("sha256:"):]), "wb") as f:
        f.write(blob)
with open(os.path.join(tmp, "oci-layout"), "wb") as f:
    f.write(canonical({"imageLayoutVersion": "1.0.0"}))
with open(os.path.join(tmp, "index.json"), "wb") as f:
    f.write(index)
shutil.rmtree(out, ignore_errors=True)
os.rename(tmp, out)

print(f"package-oci.sh: {out} (tag {tag}): {len(wasm)} byte module, layer {digest(layer)}", file=sys.stderr)
print(digest(manifest))
PY
