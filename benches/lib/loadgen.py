#!/usr/bin/env python3
"""Load clients for load.sh.  Every call has a timeout: a mirror that locks up
yields "timeout" figures, never a hung benchmark.  Each command prints one
JSON object on stdout.

  loadgen.py latency URL --n N [--header H] [--expect-len L] [--timeout S]
      N sequential GETs, each on a fresh connection (connect + request +
      whole body), like a kubelet or containerd starting a pull.  Prints
      ok, errors, median_ms, p99_ms (nearest rank), max_ms; a failed or
      timed-out request counts as +inf, so median/p99 print "timeout" once
      failures reach that rank.  Gives up after 3 consecutive timeouts.

  loadgen.py readers URL --n N --pid PID [--after S] [--timeout S]
      N concurrent clients (asyncio, one process) GET the URL and read and
      discard the body.  While they run, samples VmRSS of PID every 50 ms.
      Prints ok (complete bodies), wall_s, peak_mib (VmHWM of PID: the
      process must be fresh for this to mean "this phase"), steady_mib
      (median of the samples while all N were still reading), after_mib
      (VmRSS S seconds after the last one finished).

  loadgen.py stalled URL --n N --pid PID [--hold S] [--after S]
      N connections send `GET <path>` and never read.  Held S seconds while
      VmRSS is sampled; then counts how many got any response bytes
      (served), closes all, and reads VmRSS S seconds later.

  loadgen.py idle --target NAME=HOST:PORT ... --n N --checks 15,75 --ready FILE
      Opens N idle TCP connections to each target (no bytes sent), writes
      FILE ({"NAME": connected, ...}) once all are open, then at each check
      (seconds after FILE was written) counts the connections the server
      has closed (EOF or RST seen).  Prints {NAME: {connected, closed: {t: n}}}.

Python 3.11, stdlib only.
"""
import argparse
import asyncio
import errno
import json
import math
import os
import select
import socket
import statistics
import sys
import threading
import time
import urllib.parse


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


class RssSampler(threading.Thread):
    """Samples VmRSS of a pid every `period` seconds into self.samples
    (time, KiB) until stop()."""

    def __init__(self, pid, period=0.05):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples = []
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.is_set():
            v = rss_kib(self.pid)
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self._stop_ev.wait(self.period)

    def stop(self):
        self._stop_ev.set()
        self.join()

    def median_between(self, t0, t1):
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        return statistics.median(vals) if vals else None

    def max_kib(self):
        return max((v for _, v in self.samples), default=None)


def split_url(url):
    u = urllib.parse.urlsplit(url)
    path = u.path + (("?" + u.query) if u.query else "")
    return u.hostname, u.port or 80, path


def raise_nofile(need):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < need:
        sys.exit(f"loadgen: need {need} file descriptors, limit is {soft} (raise ulimit -n)")


# ------------------------------------------------------------------ latency

def one_request(host, port, path, headers, timeout):
    """Returns (seconds, status, body_len); raises on error/timeout."""
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = t0 + timeout
        req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: klts-loadgen\r\n"
        req += "".join(f"{h}\r\n" for h in headers) + "Connection: close\r\n\r\n"
        s.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            s.settimeout(max(0.001, deadline - time.perf_counter()))
            c = s.recv(65536)
            if not c:
                raise ConnectionError("closed before headers")
            buf += c
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        clen = None
        for l in lines[1:]:
            k, _, v = l.partition(":")
            if k.strip().lower() == "content-length":
                clen = int(v.strip())
        got = len(body)
        while clen is None or got < clen:
            s.settimeout(max(0.001, deadline - time.perf_counter()))
            c = s.recv(1 << 20)
            if not c:
                break
            got += len(c)
        return time.perf_counter() - t0, status, got
    finally:
        s.close()


def pct(sorted_vals, p):
    """Nearest-rank percentile."""
    k = max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def fmt_ms(v):
    return "timeout" if math.isinf(v) else round(v * 1000, 3)


def cmd_latency(a):
    host, port, path = split_url(a.url)
    times, errors, timeouts, consecutive = [], 0, 0, 0
    last_error = None
    for i in range(a.n):
        if consecutive >= 3:
            # Locked up: don't spend n x timeout finding out.
            times.append(math.inf)
            timeouts += 1
            continue
        try:
            dt, status, got = one_request(host, port, path, a.header, a.timeout)
            if status != 200 or (a.expect_len is not None and got != a.expect_len):
                errors += 1
                last_error = f"status {status}, {got} bytes"
                times.append(math.inf)
            else:
                times.append(dt)
            consecutive = 0
        except (socket.timeout, TimeoutError) as e:
            timeouts += 1
            consecutive += 1
            last_error = f"timeout: {e}"
            times.append(math.inf)
        except OSError as e:
            errors += 1
            last_error = f"{type(e).__name__}: {e}"
            times.append(math.inf)
            time.sleep(0.01)
    st = sorted(times)
    print(json.dumps({
        "n": a.n, "ok": sum(1 for t in times if not math.isinf(t)), "errors": errors, "timeouts": timeouts,
        "median_ms": fmt_ms(statistics.median(st)), "p99_ms": fmt_ms(pct(st, 99)), "max_ms": fmt_ms(st[-1]),
        "last_error": last_error,
    }))


# ------------------------------------------------------------------ readers

async def read_one(host, port, path, timeout):
    async def go():
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            clen = None
            for l in lines[1:]:
                k, _, v = l.partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v.strip())
            got = 0
            while True:
                c = await r.read(1 << 18)
                if not c:
                    break
                got += len(c)
                if clen is not None and got >= clen:
                    break
            return status == 200 and clen is not None and got == clen
        finally:
            w.close()
    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        return False


async def readers_main(a):
    host, port, path = split_url(a.url)
    finished = []

    async def one():
        ok = await read_one(host, port, path, a.timeout)
        finished.append(time.monotonic())
        return ok

    t0 = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(a.n)))
    return t0, results, finished


def cmd_readers(a):
    raise_nofile(a.n + 64)
    sampler = RssSampler(a.pid)
    sampler.start()
    t0, results, finished = asyncio.run(readers_main(a))
    t_end = time.monotonic()
    sampler.stop()
    peak = rss_kib(a.pid, "VmHWM")
    # "Steady": while every reader was still busy (before the first finished).
    first_done = min(finished) if finished else t_end
    steady = sampler.median_between(t0 + 0.2 * (first_done - t0), first_done)
    time.sleep(a.after)
    print(json.dumps({
        "n": a.n, "ok": sum(results), "wall_s": round(t_end - t0, 3),
        "peak_mib": mib(peak), "steady_mib": mib(steady), "max_sampled_mib": mib(sampler.max_kib()),
        "after_mib": mib(rss_kib(a.pid)),
    }))


# ------------------------------------------------------------------ stalled

def open_many(host, port, n, deadline, batch=50, pause=0.01):
    """Non-blocking connects to host:port, `batch` at a time with a short
    pause in between; returns (connected sockets, failures).

    Pacing matters: a burst of thousands of connects overflows the listen
    backlog, and the kernel then drops the handshake's final ACK -- the
    client sees "connected" while the server never accepts a connection
    that sends no bytes.  In batches the server accepts them as a real
    crowd of clients would arrive (until its own limits stop it)."""
    done, failed = [], 0
    left = n
    while left > 0 and time.monotonic() < deadline:
        k = min(batch, left)
        left -= k
        ok, bad = _connect_batch(host, port, k, deadline)
        done += ok
        failed += bad
        time.sleep(pause)
    return done, failed + left


def _connect_batch(host, port, n, deadline):
    pending, done, failed = [], [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        if rc in (0, errno.EINPROGRESS):
            pending.append(s)
        else:
            failed += 1
            s.close()
    poller = select.poll()
    by_fd = {s.fileno(): s for s in pending}
    for fd in by_fd:
        poller.register(fd, select.POLLOUT)
    while by_fd and time.monotonic() < deadline:
        for fd, ev in poller.poll(100):
            s = by_fd.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done.append(s)
            else:
                failed += 1
                s.close()
    failed += len(by_fd)
    for s in by_fd.values():
        s.close()
    return done, failed


def conn_state(s):
    """'closed' if the peer closed/reset, 'data' if bytes arrived (consumed),
    'open' otherwise.  Never blocks."""
    saw_data = False
    try:
        while True:
            c = s.recv(65536, socket.MSG_DONTWAIT)
            if not c:
                return "closed"
            saw_data = True
    except BlockingIOError:
        return "data" if saw_data else "open"
    except OSError:
        return "closed"


def cmd_stalled(a):
    raise_nofile(a.n + 64)
    host, port, path = split_url(a.url)
    sampler = RssSampler(a.pid, 0.1)
    sampler.start()
    socks, failed = open_many(host, port, a.n, time.monotonic() + 15)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sent = 0
    for s in socks:
        try:
            s.send(req)
            sent += 1
        except OSError:
            pass
    t0 = time.monotonic()
    time.sleep(a.hold)
    t1 = time.monotonic()
    # Served = a 200 status line arrived; errors = any other response
    # (peek at the status line only, never read the body).
    served = errors = 0
    for s in socks:
        try:
            head = s.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            continue
        if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"):
            served += 1
        elif head:
            errors += 1
    sampler.stop()
    peak = rss_kib(a.pid, "VmHWM")
    steady = sampler.median_between(t0 + a.hold / 2, t1)
    for s in socks:
        s.close()
    time.sleep(a.after)
    print(json.dumps({
        "n": a.n, "connected": len(socks), "connect_failed": failed, "sent": sent, "served": served, "error_responses": errors,
        "peak_mib": mib(peak), "steady_mib": mib(steady), "max_sampled_mib": mib(sampler.max_kib()),
        "after_mib": mib(rss_kib(a.pid)),
    }))


# ------------------------------------------------------------------ idle

def cmd_idle(a):
    targets = []
    for spec in a.target:
        name, hp = spec.split("=", 1)
        h, p = hp.rsplit(":", 1)
        targets.append((name, h, int(p)))
    raise_nofile(a.n * len(targets) + 64)
    checks = [float(x) for x in a.checks.split(",") if x]
    conns = {}
    for name, h, p in targets:
        socks, failed = open_many(h, p, a.n, time.monotonic() + a.connect_timeout)
        conns[name] = {"socks": socks, "failed": failed, "closed": {}, "answered": {}}
    tmp = a.ready + ".tmp"
    with open(tmp, "w") as f:
        json.dump({n: len(c["socks"]) for n, c in conns.items()}, f)
    os.replace(tmp, a.ready)
    t0 = time.monotonic()
    gone = {n: set() for n in conns}
    for t in checks:
        time.sleep(max(0, t0 + t - time.monotonic()))
        for name, c in conns.items():
            answered = 0
            for i, s in enumerate(c["socks"]):
                if i in gone[name]:
                    continue
                st = conn_state(s)
                if st == "closed":
                    gone[name].add(i)
                elif st == "data":
                    answered += 1
            c["closed"][f"{t:g}"] = len(gone[name])
            c["answered"][f"{t:g}"] = answered
    out = {}
    for name, c in conns.items():
        out[name] = {"connected": len(c["socks"]), "connect_failed": c["failed"],
                     "closed": c["closed"], "answered_open": c["answered"]}
        for s in c["socks"]:
            s.close()
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("latency")
    p.add_argument("url")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--expect-len", type=int)
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("readers")
    p.add_argument("url")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--after", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p = sub.add_parser("stalled")
    p.add_argument("url")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--after", type=float, default=5.0)
    p = sub.add_parser("idle")
    p.add_argument("--target", action="append", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--checks", default="15,75")
    p.add_argument("--ready", required=True)
    p.add_argument("--connect-timeout", type=float, default=15.0)
    a = ap.parse_args()
    {"latency": cmd_latency, "readers": cmd_readers, "stalled": cmd_stalled, "idle": cmd_idle}[a.cmd](a)


if __name__ == "__main__":
    main()
