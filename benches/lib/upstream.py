#!/usr/bin/env python3
"""A small OCI registry upstream for load.sh: fast blobs from files, slow
blobs trickled at a fixed rate.  Listens on 127.0.0.1 only.

  upstream.py --port P --index OUT.json \
      --blob NAME=FILE ...            fast blobs (served with sendfile)
      --image REPO:TAG=NAME[,NAME...] a manifest whose layers are those blobs
      --slow-count N --slow-size BYTES --slow-rate BYTES_PER_S

Answers what a registry upstream must (see tests/common/fake.rs):
  GET  /v2/                                  200 {}
  GET|HEAD /v2/<name>/manifests/<tag|digest> manifest, Content-Type, Docker-Content-Digest
  GET|HEAD /v2/<name>/blobs/<digest>         blob bytes, full Content-Length
and for the benchmark itself:
  GET  /_stats                               {"slow_active": n, "slow_started": n, ...}

Slow blob i (0 <= i < N) is a 64 KiB pseudo-random block seeded by i,
repeated to --slow-size bytes, so every slow blob is distinct (its own digest,
its own cold fill) yet costs no memory.  Its body is sent in 1/8 s slices at
--slow-rate with the whole Content-Length announced up front, like a slow
registry or a congested link.

Writes OUT.json before it starts listening: {"blobs": {NAME: {digest, size}},
"images": {"REPO:TAG": {repo, tag, digest}}, "slow": [digest, ...]}.

Python 3.11, stdlib only.
"""
import argparse
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
BLOCK = 64 << 10


def sha256_file(path):
    """Digest of a big file, cached next to it (keyed by size and mtime)."""
    st = os.stat(path)
    cache = path + ".sha256"
    key = f"{st.st_size} {st.st_mtime_ns}"
    try:
        with open(cache) as f:
            k, d = f.read().rsplit(" ", 1)
        if k == key:
            return d.strip()
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    d = h.hexdigest()
    with open(cache, "w") as f:
        f.write(f"{key} {d}")
    return d


class SlowBlob:
    def __init__(self, i, size):
        self.block = random.Random(f"klts-load-slow-{i}").randbytes(BLOCK)
        self.size = size
        h = hashlib.sha256()
        full, rest = divmod(size, BLOCK)
        for _ in range(full):
            h.update(self.block)
        h.update(self.block[:rest])
        self.digest = "sha256:" + h.hexdigest()

    def chunks(self, n):
        """The body as consecutive slices of at most n bytes."""
        off = 0
        while off < self.size:
            want = min(n, self.size - off)
            start = off % BLOCK
            out = bytearray()
            while len(out) < want:
                take = min(want - len(out), BLOCK - start)
                out += self.block[start:start + take]
                start = 0
            off += want
            yield bytes(out)


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.manifests = {}   # (repo, ref) -> bytes
        self.fast = {}        # digest -> (path, size)
        self.small = {}       # digest -> bytes (image configs)
        self.slow = {}        # digest -> SlowBlob
        self.rate = 65536
        self.stats = {"slow_active": 0, "slow_started": 0, "slow_completed": 0, "slow_aborted": 0,
                      "fast_gets": 0, "manifest_gets": 0}

    def bump(self, k, d=1):
        with self.lock:
            self.stats[k] += d


ST = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "klts-load-upstream"

    def setup(self):
        super().setup()
        # Headers and body go out as separate writes: no Nagle delay between them.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):   # quiet: the mirror's own logs are the interesting ones
        pass

    def _send(self, code, body=b"", ctype="application/json", extra=None, head=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, code, what):
        self._send(code, json.dumps({"errors": [{"code": what, "message": "load upstream"}]}).encode())

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head):
        path = self.path.split("?", 1)[0]
        if path == "/v2/":
            return self._send(200, b"{}", head=head)
        if path == "/_stats":
            with ST.lock:
                body = json.dumps(ST.stats).encode()
            return self._send(200, body, head=head)
        rest = path[len("/v2/"):] if path.startswith("/v2/") else ""
        if "/manifests/" in rest:
            repo, ref = rest.rsplit("/manifests/", 1)
            body = ST.manifests.get((repo, ref))
            if body is None:
                return self._error(404, "MANIFEST_UNKNOWN")
            if not head:
                ST.bump("manifest_gets")
            d = "sha256:" + hashlib.sha256(body).hexdigest()
            return self._send(200, body, MT_MANIFEST, {"Docker-Content-Digest": d}, head)
        if "/blobs/" in rest:
            digest = rest.rsplit("/blobs/", 1)[1]
            return self._blob(digest, head)
        return self._error(404, "NAME_UNKNOWN")

    def _blob_headers(self, size, digest):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Docker-Content-Digest", digest)
        self.end_headers()

    def _blob(self, digest, head):
        if digest in ST.small:
            return self._send(200, ST.small[digest], "application/octet-stream", {"Docker-Content-Digest": digest}, head)
        if digest in ST.fast:
            fpath, size = ST.fast[digest]
            self._blob_headers(size, digest)
            if head:
                return
            ST.bump("fast_gets")
            self.wfile.flush()
            with open(fpath, "rb") as f:
                self.connection.sendfile(f)
            return
        sb = ST.slow.get(digest)
        if sb is None:
            return self._error(404, "BLOB_UNKNOWN")
        self._blob_headers(sb.size, digest)
        if head:
            return
        ST.bump("slow_active")
        ST.bump("slow_started")
        slice_len = max(1, ST.rate // 8)
        t0 = time.monotonic()
        sent = 0
        try:
            for chunk in sb.chunks(slice_len):
                # Pace against the clock so the average rate is exact.
                delay = t0 + sent / ST.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.wfile.write(chunk)
                sent += len(chunk)
            ST.bump("slow_completed")
        except OSError:
            ST.bump("slow_aborted")
            self.close_connection = True
        finally:
            ST.bump("slow_active", -1)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--blob", action="append", default=[], help="NAME=FILE")
    ap.add_argument("--image", action="append", default=[], help="REPO:TAG=NAME[,NAME...]")
    ap.add_argument("--slow-count", type=int, default=0)
    ap.add_argument("--slow-size", type=int, default=4 << 20)
    ap.add_argument("--slow-rate", type=int, default=64 << 10)
    a = ap.parse_args()

    index = {"blobs": {}, "images": {}, "slow": []}
    for spec in a.blob:
        name, path = spec.split("=", 1)
        size = os.path.getsize(path)
        d = "sha256:" + sha256_file(path)
        ST.fast[d] = (path, size)
        index["blobs"][name] = {"digest": d, "size": size}
    for spec in a.image:
        ref, names = spec.split("=", 1)
        repo, tag = ref.rsplit(":", 1)
        layers = [index["blobs"][n] for n in names.split(",")]
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                          "config": {"Labels": {"bench": ref}}}, separators=(",", ":")).encode()
        cfg_d = "sha256:" + hashlib.sha256(cfg).hexdigest()
        ST.small[cfg_d] = cfg
        man = json.dumps({
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cfg_d, "size": len(cfg)},
            "layers": [{"mediaType": MT_LAYER, "digest": l["digest"], "size": l["size"]} for l in layers],
        }, separators=(",", ":")).encode()
        md = "sha256:" + hashlib.sha256(man).hexdigest()
        ST.manifests[(repo, tag)] = man
        ST.manifests[(repo, md)] = man
        index["images"][ref] = {"repo": repo, "tag": tag, "digest": md}
    ST.rate = a.slow_rate
    for i in range(a.slow_count):
        sb = SlowBlob(i, a.slow_size)
        ST.slow[sb.digest] = sb
        index["slow"].append(sb.digest)
    tmp = a.index + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, a.index)

    srv = Server(("127.0.0.1", a.port), Handler)
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    print(f"load upstream on 127.0.0.1:{a.port}: {len(ST.fast)} fast, {len(ST.slow)} slow blobs "
          f"({a.slow_size} B at {a.slow_rate} B/s)", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
