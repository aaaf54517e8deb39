"""(c) scripts/package-oci.sh: an OCI image layout whose digests and sizes
verify from index.json down to every blob, whose single layer holds the exact
wasm bytes as Istio's fetcher extracts them, and which is byte-for-byte the
same on every run.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

import deploylib as dl

SCRIPT = dl.ROOT / "scripts" / "package-oci.sh"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# A minimal valid module header: enough for the packager, which only checks the magic.
TINY_WASM = b"\0asm\x01\0\0\0"


def package(out: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([str(SCRIPT), *args, str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", lines[0]), proc.stdout
    return lines[0]


def blob(layout: Path, descriptor: dict) -> bytes:
    """The blob a descriptor names, checked against its digest and size."""
    algo, _, hexdigest = descriptor["digest"].partition(":")
    assert algo == "sha256" and re.fullmatch(r"[0-9a-f]{64}", hexdigest)
    data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {hexdigest} does not hash to its name"
    assert len(data) == descriptor["size"], f"blob {hexdigest}: size {len(data)} != descriptor {descriptor['size']}"
    return data


def read_layout(layout: Path) -> dict:
    """Walks index.json -> manifest -> config and layers, verifying every step."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["mediaType"] == MANIFEST
    manifest_bytes = blob(layout, entry)
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(blob(layout, manifest["config"]))
    layers = [blob(layout, d) for d in manifest["layers"]]
    # Nothing in blobs/ that the manifest does not reach.
    reachable = {entry["digest"], manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])}
    present = {"sha256:" + p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert present == reachable, f"stray blobs: {present - reachable}"
    return {"index": index, "entry": entry, "manifest": manifest, "config": config, "layers": layers}


def istio_extract(manifest: dict, layers: list[bytes]) -> bytes:
    """What Istio's fetcher does with a non-Docker manifest (pkg/wasm/imagefetcher.go,
    extractOCIStandardImage): the *last* layer must be an OCI tar+gzip layer,
    and the module is the entry whose base name is plugin.wasm."""
    assert manifest.get("mediaType") != "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["layers"], "number of layers must be greater than zero"
    assert manifest["layers"][-1]["mediaType"] == OCI_LAYER
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layers[-1]))) as tar:
        for member in tar:
            if member.name.rsplit("/", 1)[-1] == "plugin.wasm":
                return tar.extractfile(member).read()
    raise AssertionError("plugin.wasm not found in the archive")


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, wasm):
    out = tmp_path_factory.mktemp("oci") / "layout"
    digest = package(out, "--wasm", str(wasm))
    return out, digest


def test_layout_digests_and_sizes_verify(packaged):
    out, digest = packaged
    layout = read_layout(out)
    assert layout["entry"]["digest"] == digest, "the printed digest is the manifest's"
    assert len(layout["layers"]) == 1


def test_layer_holds_exactly_the_wasm(packaged, wasm):
    out, _ = packaged
    layout = read_layout(out)
    assert istio_extract(layout["manifest"], layout["layers"]) == wasm.read_bytes()
    # One entry, a regular file, nothing host-specific in it.
    raw = gzip.decompress(layout["layers"][0])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (member,) = tar.getmembers()
    assert member.name == "plugin.wasm" and member.isfile() and member.mode == 0o644
    assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
    # diff_ids: the digest of the uncompressed layer, as the image spec requires.
    assert layout["config"]["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}


def test_gzip_header_carries_no_time_or_name(packaged):
    out, _ = packaged
    layer = read_layout(out)["layers"][0]
    assert layer[:3] == b"\x1f\x8b\x08"
    flags, mtime = layer[3], int.from_bytes(layer[4:8], "little")
    assert flags & 0x08 == 0, "FNAME set: the file name would change the digest"
    assert mtime == 0


def test_manifest_is_the_compat_variant(packaged):
    out, _ = packaged
    layout = read_layout(out)
    assert layout["manifest"]["annotations"] == {"module.wasm.image/variant": "compat"}
    # Tagged with the filter crate's version, for `skopeo copy oci:DIR:TAG` / `oras cp --from-oci-layout DIR:TAG`.
    version = re.search(r'^version = "(.*)"$', (dl.ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert layout["entry"]["annotations"] == {"org.opencontainers.image.ref.name": version}
    assert "created" not in layout["config"] and "history" not in layout["config"]


def test_reproducible_byte_for_byte(packaged, tmp_path, wasm):
    out, digest = packaged
    again = tmp_path / "again"
    assert package(again, "--wasm", str(wasm)) == digest
    assert tree(again) == tree(out)
    # Packaging over an existing layout replaces it completely (no stale blobs).
    assert package(again, "--wasm", str(wasm)) == digest and tree(again) == tree(out)


def test_digest_follows_content_not_tag(tmp_path, wasm):
    tiny = tmp_path / "tiny.wasm"
    tiny.write_bytes(TINY_WASM)
    a = package(tmp_path / "a", "--wasm", str(tiny))
    b = package(tmp_path / "b", "--wasm", str(tiny), "--tag", "other")
    assert a == b, "the tag lives in index.json only, not in the manifest"
    assert read_layout(tmp_path / "b")["entry"]["annotations"]["org.opencontainers.image.ref.name"] == "other"
    assert a != package(tmp_path / "c", "--wasm", str(wasm))
    # Over a layout of another module: replaced, none of the old blobs left.
    package(tmp_path / "a", "--wasm", str(wasm))
    layout = read_layout(tmp_path / "a")
    assert istio_extract(layout["manifest"], layout["layers"]) == wasm.read_bytes()


def test_source_date_epoch_sets_the_mtime(tmp_path, wasm):
    import os
    tiny = tmp_path / "tiny.wasm"
    tiny.write_bytes(TINY_WASM)
    plain = package(tmp_path / "plain", "--wasm", str(tiny))
    dated = package(tmp_path / "dated", "--wasm", str(tiny), env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert plain != dated
    raw = gzip.decompress(read_layout(tmp_path / "dated")["layers"][0])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getmembers()[0].mtime == 1700000000


def test_refuses_what_it_must_not_touch(tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    tiny = tmp_path / "tiny.wasm"
    tiny.write_bytes(TINY_WASM)
    proc = subprocess.run([str(SCRIPT), "--wasm", str(tiny), str(keep)], capture_output=True, text=True)
    assert proc.returncode != 0 and "not an OCI layout" in proc.stderr
    assert (keep / "notes.txt").read_text() == "mine"
    notwasm = tmp_path / "x.wasm"
    notwasm.write_bytes(b"not wasm")
    proc = subprocess.run([str(SCRIPT), "--wasm", str(notwasm), str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    proc = subprocess.run([str(SCRIPT), "--wasm", str(tmp_path / "missing.wasm"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "build-filter.sh" in proc.stderr
