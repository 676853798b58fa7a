#!/usr/bin/env python3
"""Small helpers for compare.sh that are awkward or imprecise in bash.

  util.py freeports N                 print N distinct free loopback TCP ports
  util.py wrk-parse FILE              print "rps p99_ms transfer_GiBps bad" from wrk --latency output
  util.py fill-store DIR COUNT        create COUNT small files as DIR/blobs/sha256/<2hex>/<hex>
  util.py startup BIN CONFIG PORT LOG time spawn -> first 200 on /v2/, print seconds

Python 3.11, stdlib only.
"""
import hashlib
import http.client
import os
import re
import socket
import subprocess
import sys
import time


def freeports(n: int):
    # Hold all sockets open until every port is chosen so the N are distinct.
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk uses 1024 steps


def wrk_parse(path: str):
    """wrk prints human units; normalise to req/s, ms and GiB/s.  'bad' counts
    non-2xx/3xx responses plus socket errors (timeouts excluded: with 1 GiB
    bodies every request outlives wrk's timeout check, which only counts)."""
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    tps = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(\w+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    bad = int(non2xx.group(1)) if non2xx else 0
    if sock:
        bad += int(sock.group(1)) + int(sock.group(2)) + int(sock.group(3))
    nan = "nan"
    print(
        float(rps.group(1)) if rps else nan,
        float(p99.group(1)) * _TIME[p99.group(2)] if p99 else nan,
        float(tps.group(1)) * _BYTES[tps.group(2)] / (1 << 30) if tps else nan,
        bad,
    )


def fill_store(root: str, count: int):
    """Fake a big store cheaply: empty-ish files at the paths a filesystem
    blob store would use.  Content does not match the name on purpose -- the
    mirror must not read (or verify) its store at start-up."""
    base = os.path.join(root, "blobs", "sha256")
    made = set()
    for i in range(count):
        hexd = hashlib.sha256(f"startup-{i}".encode()).hexdigest()
        d = os.path.join(base, hexd[:2])
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        with open(os.path.join(d, hexd), "wb") as f:
            f.write(b"x")


def startup(binary: str, config: str, port: int, log: str):
    """Spawn the mirror and poll GET /v2/ every 2 ms; the reported time is
    spawn -> first 200.  Kills the process afterwards (it is ours)."""
    with open(log, "ab") as lf:
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "serve", "--config", config, "--listen", f"127.0.0.1:{port}"],
                             stdout=lf, stderr=lf)
        result = "nan"
        try:
            while time.perf_counter() - t0 < 30:
                if p.poll() is not None:
                    break  # died: report nan
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/v2/")
                    if c.getresponse().status == 200:
                        result = f"{time.perf_counter() - t0:.4f}"
                        break
                except OSError:
                    pass
                finally:
                    c.close()
                time.sleep(0.002)
        finally:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    print(result)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "freeports":
        freeports(int(args[0]))
    elif cmd == "wrk-parse":
        wrk_parse(args[0])
    elif cmd == "fill-store":
        fill_store(args[0], int(args[1]))
    elif cmd == "startup":
        startup(args[0], args[1], int(args[2]), args[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
