#!/usr/bin/env python3
"""Aggregate benchmark samples into the comparison table and JSON.

compare.sh and load.sh append one line per measurement to samples.tsv:
    <key>\t<value>          e.g.  warm1.klts\t1834.2
A value of "nan" means the measurement failed (curl error, ...); "timeout"
means the target did not answer in time (kept as +inf, printed "timeout").

--profile compare (default): klts-mirror against nginx/distribution (ROWS).
--profile load: HEAD against BASE, the previous klts-mirror (load_rows());
  keys are <metric>.head / <metric>.base, --vars fills in the sizes.
--profile push: push.sh, klts-mirror against distribution (push_rows());
  same table as compare, --vars fills in the sizes.
--profile bundle: bundle.sh, klts-mirror bundle create/import/verify against
  cp and openssl dgst -sha256 of the same bytes (bundle_rows()); same table as compare.

Each table row compares the median of a klts-mirror key with the median of a
peer key and checks it against a target.  Rows whose target is an exact count
(upstream GETs, verified downloads) must hold in *every* run, not just the
median, because one duplicate upstream fetch is already a bug.

Python 3.11, stdlib only.
"""
import argparse
import datetime
import json
import math
import os
import statistics

# (scenario, unit, klts key, peer label, peer key, check, threshold)
#   ratio_ge / ratio_le : klts_median / peer_median compared with threshold
#   abs_le              : klts_median <= threshold
#   all_eq              : every klts sample == threshold
#   info                : reported, not judged
#   eq_key (load only)  : every HEAD sample == the same run's sample of key <threshold>
ROWS = [
    ("warm 1GiB blob, 1 client", "MiB/s", "warm1.klts", "nginx", "warm1.nginx", "ratio_ge", 1.0),
    ("warm 1GiB blob, 1 client", "MiB/s", "warm1.klts", "distribution", "warm1.dist", "ratio_ge", 1.0),
    ("warm 1GiB blob, 4 clients (wrk)", "GiB/s", "warm4.klts", "distribution", "warm4.dist", "ratio_ge", 1.0),
    ("warm manifest by tag", "req/s", "mtag.rps.klts", "nginx", "mtag.rps.nginx", "ratio_ge", 1.0),
    ("warm manifest by tag", "req/s", "mtag.rps.klts", "distribution", "mtag.rps.dist", "ratio_ge", 100.0),
    ("warm manifest by tag, p99", "ms", "mtag.p99.klts", "nginx", "mtag.p99.nginx", "abs_le", 5.0),
    ("warm manifest by tag, p99", "ms", "mtag.p99.klts", "distribution", "mtag.p99.dist", "info", None),
    ("warm manifest by digest", "req/s", "mdig.rps.klts", "nginx", "mdig.rps.nginx", "ratio_ge", 1.0),
    ("cold 1GiB blob, 1 client", "MiB/s", "cold1.mibs.klts", "distribution", "cold1.mibs.dist", "ratio_ge", 2.0),
    ("cold 1GiB blob, 1 client", "MiB/s", "cold1.mibs.klts", "upstream direct", "cold1.mibs.upstream", "info", None),
    ("cold 1GiB, 1 client: upstream GETs", "GETs", "cold1.gets.klts", "distribution", "cold1.gets.dist", "all_eq", 1),
    ("cold 1GiB, 1 client: commit delay", "s", "cold1.commit.klts", "distribution", "cold1.commit.dist", "abs_le", 1.0),
    ("cold 1GiB, 16 clients: wall", "s", "cold16.wall.klts", "klts warm-16", "warm16.wall.klts", "ratio_le", 1.2),
    ("cold 1GiB, 16 clients: wall", "s", "cold16.wall.klts", "distribution", "cold16.wall.dist", "ratio_le", 0.6),
    ("cold 1GiB, 16 clients: upstream GETs", "GETs", "cold16.gets.klts", "distribution", "cold16.gets.dist", "all_eq", 1),
    ("cold 1GiB, 16 clients: sha256 ok", "of 16", "cold16.ok.klts", "distribution", "cold16.ok.dist", "all_eq", 16),
    ("peak RSS during cold 16", "MiB", "cold16.rss.klts", "-", None, "abs_le", 48.0),
    ("kubeadm 7 images, cold", "s", "kubeadm.cold.klts", "distribution", "kubeadm.cold.dist", "info", None),
    ("kubeadm 7 images, warm", "s", "kubeadm.warm.klts", "distribution", "kubeadm.warm.dist", "ratio_le", 0.5),
    ("kubeadm 7 images, warm", "s", "kubeadm.warm.klts", "upstream direct", "kubeadm.upstream", "info", None),
    ("start-up, 100k blobs in store", "s", "startup.klts", "-", None, "abs_le", 1.0),
]


# load profile: an RSS figure only means something if the readers were really
# served; otherwise its row reads "invalid" instead of PASS/FAIL.
#   key -> (guard key, vars name of the count every HEAD sample must equal)
LOAD_GUARDS = {
    "s2.fast.peak": ("s2.fast.ok", "fast_n"),
    "s2.stall.peak": ("s2.stall.served", "stall_n"),
}


def load_rows(v):
    """Rows of load.sh, in the same shape as ROWS; the peer is always BASE.
    v: sizes and counts the run used (see load.sh)."""
    slow, lat, fast, stall, idle = v["slow_n"], v["lat_n"], v["fast_n"], v["stall_n"], v["idle_n"]
    rows = [("1 mirror open-files soft limit (as running)", "fds", "nofile.fills", "info", None)]
    for what, m in (("manifest by tag", "man"), ("1MiB blob", "blob")):
        for cond, c in (("no fills", "quiet"), (f"{slow} slow fills", "fills")):
            for stat in ("med", "p99"):
                name = "median" if stat == "med" else "p99"
                rows.append((f"1 warm {what}, {cond}: {name} of {lat}", "ms", f"s1.{m}.{c}.{stat}", "info", None))
    rows += [
        (f"1 slow fills still running at end", f"of {slow}", "s1.inflight", "all_eq", slow),
        (f"1 slow fills active at upstream (end)", f"of {slow}", "s1.upstream_active", "info", None),
        (f"1 failed warm requests (all phases)", "count", "s1.errors", "all_eq", 0),
        ("2 mirror open-files soft limit (as running)", "fds", "nofile.memory", "info", None),
        (f"2a {fast} fast readers, {v['fast_mib']}MiB blob: peak RSS", "MiB", "s2.fast.peak", "abs_le", 96.0),
        (f"2a {fast} fast readers: steady RSS", "MiB", "s2.fast.steady", "info", None),
        (f"2a {fast} fast readers: RSS {v['after_s']}s after", "MiB", "s2.fast.after", "info", None),
        (f"2a {fast} fast readers: complete bodies", f"of {fast}", "s2.fast.ok", "all_eq", fast),
        (f"2a {fast} fast readers: wall", "s", "s2.fast.wall", "info", None),
        (f"2b {stall} stalled readers ({v['hold_s']}s): peak RSS", "MiB", "s2.stall.peak", "abs_le", 128.0),
        (f"2b {stall} stalled readers: steady RSS", "MiB", "s2.stall.steady", "info", None),
        (f"2b {stall} stalled readers: RSS {v['after_s']}s after", "MiB", "s2.stall.after", "info", None),
        (f"2b {stall} stalled readers: got 200", f"of {stall}", "s2.stall.served", "all_eq", stall),
        (f"2b {stall} stalled readers: got an error status", f"of {stall}", "s2.stall.errors", "info", None),
        (f"3 warm {v['big_mib']}MiB blob, 1 client", "MiB/s", "s3.mibs", "ratio_ge", 0.9),
        ("4 mirror open-files soft limit (as running)", "fds", "nofile.idle", "info", None),
        (f"4 warm manifest, no idle conns: median of {v['idle_lat_n']}", "ms", "s4.quiet.med", "info", None),
        (f"4 warm manifest, no idle conns: p99", "ms", "s4.quiet.p99", "info", None),
        (f"4 warm manifest, {idle} idle conns: median", "ms", "s4.idle.med", "info", None),
        (f"4 warm manifest, {idle} idle conns: p99", "ms", "s4.idle.p99", "info", None),
        (f"4 failed requests with {idle} idle conns", "count", "s4.errors", "all_eq", 0),
        (f"4 RSS with {idle} idle conns", "MiB", "s4.rss", "info", None),
        (f"4 open fds of the mirror with {idle} idle conns", "fds", "s4.fds", "info", None),
        (f"4 idle conns established (client view)", f"of {idle}", "s4.connected", "info", None),
    ]
    checks = v["idle_checks"]
    for i, t in enumerate(checks):
        last = i == len(checks) - 1
        # Judged against the connections that were really open (client view).
        rows.append((f"4 idle conns closed by server after {t}s", f"of {idle}", f"s4.closed.{t}",
                     "eq_key" if last else "info", "s4.connected" if last else None))
    return [(scen, unit, f"{key}.head", "BASE", f"{key}.base", check, thr) for scen, unit, key, check, thr in rows]


# push profile: klts key -> (guard key, vars name of the count every sample
# must equal); a peak RSS only means something if every push completed.
PUSH_GUARDS = {"pushN.rss.klts": ("pushN.ok.klts", "parallel")}


def push_rows(v):
    """Rows of push.sh, in the shape of ROWS.  v: sizes the run used."""
    size = f"{v['size_mib']}MiB" if v["size_mib"] % 1024 else f"{v['size_mib'] // 1024}GiB"
    n = v["parallel"]
    return [
        (f"1 push {size} image, 1 skopeo", "MiB/s", "push1.mibs.klts", "distribution", "push1.mibs.dist", "ratio_ge", 1.0),
        (f"1 push verified (manifest digest, blob size)", "of 1", "push1.ok.klts", "distribution", "push1.ok.dist", "all_eq", 1),
        (f"1 push {size} + sync (durable)", "MiB/s", "push1.durable.klts", "distribution", "push1.durable.dist", "info", None),
        (f"1 peak RSS, 1 push", "MiB", "push1.rss.klts", "distribution", "push1.rss.dist", "info", None),
        (f"2 {n} pushes of {n} different {size} images: wall", "s", "pushN.wall.klts", "distribution", "pushN.wall.dist", "info", None),
        (f"2 {n} pushes: aggregate", "MiB/s", "pushN.mibs.klts", "distribution", "pushN.mibs.dist", "info", None),
        (f"2 {n} pushes: peak RSS", "MiB", "pushN.rss.klts", "distribution", "pushN.rss.dist", "abs_le", 64.0),
        (f"2 {n} pushes: images verified", f"of {n}", "pushN.ok.klts", "distribution", "pushN.ok.dist", "all_eq", n),
        (f"3 GET published {size} blob", "MiB/s", "pull.pub.klts", "klts pulled-through", "pull.cached.klts", "ratio_ge", 0.9),
        (f"3 GET published {size} blob", "MiB/s", "pull.pub.klts", "distribution", "pull.pub.dist", "info", None),
        (f"3 same, both store files re-read into page cache", "MiB/s", "pull.reread.pub.klts", "klts pulled-through",
         "pull.reread.cached.klts", "info", None),
    ]


# bundle profile: klts key -> guard key; a peak RSS only means something if
# that run's command completed and checked out (guard == 1 in every run).
BUNDLE_GUARDS = {"create.rss.klts": "create.ok.klts", "import.rss.klts": "import.ok.klts"}


def bundle_rows(v):
    """Rows of bundle.sh, in the shape of ROWS.  v: sizes the run used.
    Sides: klts (the command), ref (cp + fsync of the copies), cp (the same
    cp without its fsync), dd (dd bs=1M + fsync), sha (openssl dgst -sha256)."""
    mib = v["size_mib"]
    size = f"{mib}MiB" if mib % 1024 else f"{mib // 1024}GiB"
    n = v["nimages"]
    rows = []
    for tag, key, what, ref in (
        ("A", "create", f"create: {n} images, {size} of layers, warm store", "store layer files"),
        ("B", "import", f"import: {size} site.tar into an empty store", "site.tar"),
    ):
        rows += [
            (f"{tag} {what}", "MiB/s", f"{key}.mibs.klts", f"cp {ref} + fsync", f"{key}.mibs.ref", "ratio_ge", 0.8),
            (f"{tag} {key}: same, against cp without fsync", "MiB/s", f"{key}.mibs.klts", "cp, no fsync",
             f"{key}.mibs.cp", "info", None),
            (f"{tag} {key}: same, against dd bs=1M + fsync", "MiB/s", f"{key}.mibs.klts", "dd (1 MiB writes)",
             f"{key}.mibs.dd", "info", None),
            (f"{tag} {key}: peak RSS", "MiB", f"{key}.rss.klts", "cp", f"{key}.rss.cp", "abs_le", 64.0),
            (f"{tag} {key}: CPU time (user + sys)", "s", f"{key}.cpu.klts", "cp", f"{key}.cpu.cp", "info", None),
            (f"{tag} {key}: CPU time (user + sys), against dd", "s", f"{key}.cpu.klts", "dd", f"{key}.cpu.dd",
             "info", None),
            (f"{tag} {key}: completed and checked", "of 1", f"{key}.ok.klts", "cp", f"{key}.ok.cp", "all_eq", 1),
        ]
        if key == "create":
            rows.append((f"{tag} create: blobs fetched from upstream", "GETs", "create.upgets.klts", "-", None,
                         "all_eq", 0))
        rows.append((f"{tag} {key}: sources in page cache before", "%", f"{key}.cached.klts", "cp",
                     f"{key}.cached.ref", "info", None))
    rows += [
        (f"C verify {size} site.tar (re-hash)", "MiB/s", "verify.mibs.klts", "openssl sha256", "verify.mibs.sha", "info", None),
        ("C verify: peak RSS", "MiB", "verify.rss.klts", "openssl sha256", "verify.rss.sha", "info", None),
        ("C verify: CPU time (user + sys)", "s", "verify.cpu.klts", "openssl sha256", "verify.cpu.sha", "info", None),
        ("C verify: OK", "of 1", "verify.ok.klts", "openssl sha256", "verify.ok.sha", "all_eq", 1),
        ("C verify: site.tar in page cache before", "%", "verify.cached.klts", "openssl sha256",
         "verify.cached.sha", "info", None),
    ]
    return rows


def load(path):
    samples = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "\t" not in line:
                    continue
                k, v = line.rstrip("\n").split("\t", 1)
                try:
                    val = math.inf if v == "timeout" else float(v)
                except ValueError:
                    val = math.nan
                samples.setdefault(k, []).append(val)
    return samples


def jval(v):
    """A sample or median for JSON: nan -> null, timeout (+inf) -> "timeout"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "timeout"
    return v


def median(vals):
    """Median over the runs; a failed run (nan) poisons it on purpose, so a
    scenario that breaks once cannot PASS on the strength of the others."""
    if not vals or any(math.isnan(v) for v in vals):
        return None
    return statistics.median(vals)


def fmt(v):
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "timeout"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v != int(v) else f"{v:.0f}"


def judge(check, thr, k_med, p_med, k_samples):
    """Returns (ratio, target text, status)."""
    finite = k_med is not None and p_med not in (None, 0) and not math.isinf(k_med) and not math.isinf(p_med)
    ratio = k_med / p_med if finite else None
    if check == "ratio_ge":
        return ratio, f">= {thr:g}x", ("PASS" if ratio is not None and ratio >= thr else "FAIL")
    if check == "ratio_le":
        return ratio, f"<= {thr:g}x", ("PASS" if ratio is not None and ratio <= thr else "FAIL")
    if check == "abs_le":
        return ratio, f"<= {thr:g}", ("PASS" if k_med is not None and k_med <= thr else "FAIL")
    if check == "all_eq":
        ok = bool(k_samples) and all(v == thr for v in k_samples)
        return ratio, f"== {thr:g} (every run)", ("PASS" if ok else "FAIL")
    return ratio, "-", "info"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--meta", default="{}", help="extra JSON object merged into the output")
    ap.add_argument("--profile", choices=("compare", "load", "push", "bundle"), default="compare")
    ap.add_argument("--vars", default="{}", help="load profile: sizes/counts (JSON)")
    a = ap.parse_args()
    s = load(a.samples)
    lvars = json.loads(a.vars)
    row_defs = {"compare": lambda: ROWS, "load": lambda: load_rows(lvars), "push": lambda: push_rows(lvars),
                "bundle": lambda: bundle_rows(lvars)}[a.profile]()
    notes = []

    rows = []
    for scen, unit, kk, peer, pk, check, thr in row_defs:
        k_samples = s.get(kk, [])
        p_samples = s.get(pk, []) if pk else []
        k_med, p_med = median(k_samples), (median(p_samples) if pk else None)
        if check == "eq_key":
            # Every HEAD sample equals the same run's HEAD sample of another key.
            ref = s.get(thr + ".head", [])
            ok = bool(k_samples) and len(ref) == len(k_samples) and all(x == y for x, y in zip(k_samples, ref))
            ratio = k_med / p_med if k_med is not None and p_med not in (None, 0) else None
            target, status = f"== {thr.split('.')[-1]} (every run)", ("PASS" if ok else "FAIL")
        else:
            ratio, target, status = judge(check, thr, k_med, p_med, k_samples)
        if not k_samples and not p_samples:
            status = "skip"  # scenario not selected (SCENARIOS=...)
        elif a.profile == "load" and kk.removesuffix(".head") in LOAD_GUARDS and status in ("PASS", "FAIL"):
            gk, gv = LOAD_GUARDS[kk.removesuffix(".head")]
            g = s.get(gk + ".head", [])
            if not g or any(x != lvars[gv] for x in g):
                status = "invalid"
                notes.append(f"invalid: '{scen}' judged only when every run served all "
                             f"{lvars[gv]} readers ({gk}.head = {[jval(x) for x in g]})")
        elif a.profile == "push" and kk in PUSH_GUARDS and status in ("PASS", "FAIL"):
            gk, gv = PUSH_GUARDS[kk]
            g = s.get(gk, [])
            if not g or any(x != lvars[gv] for x in g):
                status = "invalid"
                notes.append(f"invalid: '{scen}' judged only when all {lvars[gv]} pushes of every run "
                             f"verified ({gk} = {[jval(x) for x in g]})")
        elif a.profile == "bundle" and kk in BUNDLE_GUARDS and status in ("PASS", "FAIL"):
            g = s.get(BUNDLE_GUARDS[kk], [])
            if not g or any(x != 1 for x in g):
                status = "invalid"
                notes.append(f"invalid: '{scen}' judged only when every run completed and checked out "
                             f"({BUNDLE_GUARDS[kk]} = {[jval(x) for x in g]})")
        rows.append({
            "scenario": scen, "unit": unit, "peer": peer,
            "klts_median": k_med, "peer_median": p_med, "ratio": ratio,
            "target": target, "status": status,
            "klts_samples": [jval(v) for v in k_samples],
            "peer_samples": [jval(v) for v in p_samples],
        })

    ratio_txt = lambda r: f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
    if a.profile in ("compare", "push", "bundle"):
        hdr = ("scenario", "unit", "klts-mirror", "peer", "peer median", "ratio", "target", "result")
        table = [hdr] + [(r["scenario"], r["unit"], fmt(r["klts_median"]), r["peer"], fmt(r["peer_median"]),
                          ratio_txt(r), r["target"], r["status"]) for r in rows]
    else:
        hdr = ("scenario", "unit", "BASE", "HEAD", "HEAD/BASE", "target (HEAD)", "result")
        table = [hdr] + [(r["scenario"], r["unit"], fmt(r["peer_median"]), fmt(r["klts_median"]),
                          ratio_txt(r), r["target"], r["status"]) for r in rows]
        # JSON: say what the columns are.
        rows = [{"scenario": r["scenario"], "unit": r["unit"], "base_median": jval(r["peer_median"]),
                 "head_median": jval(r["klts_median"]), "ratio_head_base": r["ratio"], "target": r["target"],
                 "status": r["status"], "base_samples": r["peer_samples"], "head_samples": r["klts_samples"]}
                for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(hdr))]
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
    print(line(hdr))
    print("  ".join("-" * w for w in widths))
    for row in table[1:]:
        print(line(row))
    n_pass = sum(r["status"] == "PASS" for r in rows)
    n_judged = sum(r["status"] in ("PASS", "FAIL") for r in rows)
    print(f"\n{n_pass}/{n_judged} targets met (RUNS={a.runs}, values are medians over runs)")
    for n in notes:
        print(n)
    if a.profile in ("load", "push", "bundle"):
        out_vars = {"vars": json.loads(a.vars)}
    else:
        out_vars = {}

    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": a.runs,
        **json.loads(a.meta),
        **out_vars,
        "passed": n_pass, "judged": n_judged,
        "rows": rows,
        "raw_samples": {k: [jval(x) for x in v] for k, v in s.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
