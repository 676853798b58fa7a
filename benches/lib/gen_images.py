#!/usr/bin/env python3
"""Build deterministic OCI image layouts for the klts-mirror benchmark.

Inputs are the pre-generated big blob files (made with `openssl enc` by
compare.sh, because that is ~10x faster than generating 1 GiB in Python).
Outputs, under --out:

  blob1g/    OCI layout, tag v1: one manifest whose single layer is the 1 GiB blob
  blob100m/  OCI layout, tag v1: same shape with the 100 MiB blob
  k8s/<n>/   OCI layouts shaped like kubeadm's seven control-plane images,
             each an image index with linux/amd64 + linux/arm64 manifests
  images.json  what compare.sh needs: repos, tags, digests, file paths

Everything is byte-for-byte reproducible (fixed seeds, mtime=0 everywhere), so
digests are stable across machines and runs.  Big blobs are hard-linked into
the layouts, never copied.

Python 3.11, stdlib only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# kubeadm's image set (names/tags as for a v1.30 control plane).
K8S_IMAGES = [
    ("kube-apiserver", "v1.30.6"),
    ("kube-controller-manager", "v1.30.6"),
    ("kube-scheduler", "v1.30.6"),
    ("kube-proxy", "v1.30.6"),
    ("etcd", "3.5.15-0"),
    ("pause", "3.9"),
    ("coredns/coredns", "v1.11.3"),
]
PLATFORMS = [("linux", "amd64"), ("linux", "arm64")]


def canon(obj) -> bytes:
    """Stable JSON encoding so manifest digests never change."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


class Layout:
    """Minimal writer for an OCI image layout directory."""

    def __init__(self, root: str):
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        with open(os.path.join(root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')

    def _path(self, hexd: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", hexd)

    def add_bytes(self, data: bytes, media_type: str, **extra) -> dict:
        hexd = hashlib.sha256(data).hexdigest()
        with open(self._path(hexd), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + hexd, "size": len(data), **extra}

    def add_file(self, src: str, hexd: str, media_type: str) -> dict:
        dst = self._path(hexd)
        try:
            os.link(src, dst)  # same filesystem: no 1 GiB copy
        except OSError:
            shutil.copyfile(src, dst)
        return {"mediaType": media_type, "digest": "sha256:" + hexd, "size": os.path.getsize(src)}

    def write_index(self, desc: dict, tag: str):
        top = {"schemaVersion": 2, "manifests": [dict(desc, annotations={REF_NAME: tag})]}
        with open(os.path.join(self.root, "index.json"), "wb") as f:
            f.write(canon(top))


def image_config(os_name: str, arch: str, diff_ids: list, cmd: str) -> dict:
    return {
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": os_name,
        "config": {"Entrypoint": [cmd]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "klts-bench"}] * len(diff_ids),
    }


def image_manifest(config_desc: dict, layers: list) -> dict:
    return {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc, "layers": layers}


def big_blob_image(out: str, name: str, blob: str, repo: str) -> dict:
    """Single-layer image whose layer is the raw (uncompressed 'tar') blob file."""
    hexd = sha256_file(blob)
    lay = Layout(os.path.join(out, name))
    layer = lay.add_file(blob, hexd, MT_LAYER_TAR)
    cfg = lay.add_bytes(canon(image_config("linux", "amd64", [layer["digest"]], "/bin/true")), MT_CONFIG)
    mbytes = canon(image_manifest(cfg, [layer]))
    mdesc = lay.add_bytes(mbytes, MT_MANIFEST)
    lay.write_index(mdesc, "v1")
    # A copy of the exact manifest bytes for nginx to serve as a static file.
    mfile = os.path.join(out, name + ".manifest.json")
    with open(mfile, "wb") as f:
        f.write(mbytes)
    return {
        "layout": lay.root, "repo": repo, "tag": "v1",
        "blob_digest": layer["digest"], "blob_size": layer["size"],
        "manifest_digest": mdesc["digest"], "manifest_file": mfile,
    }


def tar_gz_layer(files: dict) -> tuple[bytes, str]:
    """Deterministic tar.gz; returns (gzipped bytes, diff_id of the tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for path, data in files.items():
            ti = tarfile.TarInfo(path)
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = len(data), 0, 0o755, 0, 0
            tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def k8s_image(out: str, name: str, tag: str) -> dict:
    """Multi-arch image index: per platform a shared 'base' layer (like the
    distroless base the real images share), an image-specific binary layer
    and a small one.  Random payload so gzip cannot shrink it: ~1.6 MiB per
    platform, ~3 MiB per image."""
    lay = Layout(os.path.join(out, "k8s", name.replace("/", "_")))
    short = name.split("/")[-1]
    manifests = []
    for os_name, arch in PLATFORMS:
        layers, diff_ids = [], []
        specs = [
            ("base", {"etc/os-release": b"ID=klts-bench\n", "lib/libc.so": random.Random(f"base-{arch}").randbytes(512 << 10)}),
            ("bin", {f"usr/local/bin/{short}": random.Random(f"{name}-{arch}-bin").randbytes(1 << 20)}),
            ("etc", {f"etc/{short}/defaults": random.Random(f"{name}-{arch}-etc").randbytes(64 << 10)}),
        ]
        if short == "pause":  # pause really is tiny: one layer
            specs = specs[2:]
        for _, files in specs:
            gz, diff_id = tar_gz_layer(files)
            layers.append(lay.add_bytes(gz, MT_LAYER_TGZ))
            diff_ids.append(diff_id)
        cfg = lay.add_bytes(canon(image_config(os_name, arch, diff_ids, "/usr/local/bin/" + short)), MT_CONFIG)
        man = lay.add_bytes(canon(image_manifest(cfg, layers)), MT_MANIFEST,
                            platform={"architecture": arch, "os": os_name})
        manifests.append(man)
    idx = lay.add_bytes(canon({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}), MT_INDEX)
    lay.write_index(idx, tag)
    return {"layout": lay.root, "repo": name, "tag": tag, "index_digest": idx["digest"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--blob1g", required=True)
    ap.add_argument("--blob100m", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res = {
        "blob1g": big_blob_image(a.out, "blob1g", a.blob1g, "bench/blob1g"),
        "blob100m": big_blob_image(a.out, "blob100m", a.blob100m, "bench/blob100m"),
        "k8s": [k8s_image(a.out, n, t) for n, t in K8S_IMAGES],
    }
    with open(os.path.join(a.out, "images.json"), "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
