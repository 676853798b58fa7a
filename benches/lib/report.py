#!/usr/bin/env python3
"""Aggregate benchmark samples into the comparison table and JSON.

compare.sh appends one line per measurement to samples.tsv:
    <key>\t<value>          e.g.  warm1.klts\t1834.2
A value of "nan" means the measurement failed (curl error, timeout, ...).

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


def load(path):
    samples = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "\t" not in line:
                    continue
                k, v = line.rstrip("\n").split("\t", 1)
                try:
                    val = float(v)
                except ValueError:
                    val = math.nan
                samples.setdefault(k, []).append(val)
    return samples


def median(vals):
    """Median over the runs; a failed run (nan) poisons it on purpose, so a
    scenario that breaks once cannot PASS on the strength of the others."""
    if not vals or any(math.isnan(v) for v in vals):
        return None
    return statistics.median(vals)


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v != int(v) else f"{v:.0f}"


def judge(check, thr, k_med, p_med, k_samples):
    """Returns (ratio, target text, status)."""
    ratio = k_med / p_med if k_med is not None and p_med not in (None, 0) else None
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
    a = ap.parse_args()
    s = load(a.samples)

    rows = []
    for scen, unit, kk, peer, pk, check, thr in ROWS:
        k_samples = s.get(kk, [])
        p_samples = s.get(pk, []) if pk else []
        k_med, p_med = median(k_samples), (median(p_samples) if pk else None)
        ratio, target, status = judge(check, thr, k_med, p_med, k_samples)
        if not k_samples and not p_samples:
            status = "skip"  # scenario not selected (SCENARIOS=...)
        rows.append({
            "scenario": scen, "unit": unit, "peer": peer,
            "klts_median": k_med, "peer_median": p_med, "ratio": ratio,
            "target": target, "status": status,
            "klts_samples": [None if math.isnan(v) else v for v in k_samples],
            "peer_samples": [None if math.isnan(v) else v for v in p_samples],
        })

    hdr = ("scenario", "unit", "klts-mirror", "peer", "peer median", "ratio", "target", "result")
    table = [hdr] + [(r["scenario"], r["unit"], fmt(r["klts_median"]), r["peer"], fmt(r["peer_median"]),
                      (f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"), r["target"], r["status"])
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

    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": a.runs,
        **json.loads(a.meta),
        "passed": n_pass, "judged": n_judged,
        "rows": rows,
        "raw_samples": {k: [None if math.isnan(x) else x for x in v] for k, v in s.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
