#!/usr/bin/env python3
"""Summarize criterion results (target/criterion) into the tables of BENCHMARKS.md.

Usage: scripts/bench-report.py [target/criterion]  > tables.md
Reads each benchmark's new/benchmark.json + new/estimates.json and prints markdown:
whole-model latency with peer ratios, open + first inference by model size, and batch-1
GEMV bandwidth as a fraction of the machine's measured memory bandwidth.
"""
import json
import os
import sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
results = {}  # (group, function) -> median ns
throughput = {}  # (group, function) -> bytes per iteration, when declared
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        meta = json.load(f)
    with open(os.path.join(dirpath, "estimates.json")) as f:
        est = json.load(f)
    key = (meta["group_id"], meta["function_id"])
    results[key] = est["median"]["point_estimate"]
    tp = meta.get("throughput") or {}
    if "Bytes" in tp:
        throughput[key] = tp["Bytes"]


def fmt_time(ns):
    if ns is None:
        return "—"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def ratio(peer, ours):
    return f"{peer / ours:.2f}×" if peer and ours else "—"


by_group = defaultdict(dict)
for (g, fn), ns in results.items():
    by_group[g][fn] = ns

# Whole models.
print("### Whole-model latency (median per batch; ratio = peer time / graft time, >1 means graft is faster)\n")
print("| model | batch | graft f32 | graft q8 | graft q4 | ORT f32 | tract f32 | ORT / graft q8 | tract / graft q8 |")
print("|---|---|---|---|---|---|---|---|---|")
for model in ["dlrm_fixture", "dlrm_demo"]:
    for batch in [1, 16, 256]:
        g = by_group.get(f"{model}/batch{batch}")
        if not g:
            continue
        q8 = g.get("graft-q8/t1")
        print(
            f"| {model} | {batch} | {fmt_time(g.get('graft-f32/t1'))} | {fmt_time(q8)} | {fmt_time(g.get('graft-q4/t1'))} "
            f"| {fmt_time(g.get('ort-f32/t1'))} | {fmt_time(g.get('tract-f32/t1'))} "
            f"| {ratio(g.get('ort-f32/t1'), q8)} | {ratio(g.get('tract-f32/t1'), q8)} |"
        )
print("\n### Batch 256 throughput, rows/s (1 and 2 threads)\n")
print("| model | graft f32 t1 | graft f32 t2 | graft q8 t1 | graft q8 t2 | graft q4 t2 | ORT t1 | ORT t2 | tract t1 | ORT t2 / graft q8 t2 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for model in ["dlrm_fixture", "dlrm_demo"]:
    g = by_group.get(f"{model}/batch256")
    if not g:
        continue
    rps = lambda k: f"{256 / (g[k] / 1e9):,.0f}" if g.get(k) else "—"
    print(
        f"| {model} | {rps('graft-f32/t1')} | {rps('graft-f32/t2')} | {rps('graft-q8/t1')} | {rps('graft-q8/t2')} | {rps('graft-q4/t2')} "
        f"| {rps('ort-f32/t1')} | {rps('ort-f32/t2')} | {rps('tract-f32/t1')} | {ratio(g.get('ort-f32/t2'), g.get('graft-q8/t2'))} |"
    )

# Open + first inference.
def size_key(g):
    label = g.split("/")[1]
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    return next((float(label[: -len(u)]) * m for u, m in units.items() if label.endswith(u)), 0.0)


opens = sorted((g for g in by_group if g.startswith("open_first_inference/")), key=size_key)
if opens:
    print("\n### Open + first inference (warm page cache)\n")
    print("| tables | graft | ORT | tract | ORT / graft | tract / graft |")
    print("|---|---|---|---|---|---|")
    for g in opens:
        r = by_group[g]
        print(
            f"| {g.split('/')[1]} | {fmt_time(r.get('graft'))} | {fmt_time(r.get('ort'))} | {fmt_time(r.get('tract'))} "
            f"| {ratio(r.get('ort'), r.get('graft'))} | {ratio(r.get('tract'), r.get('graft'))} |"
        )

# GEMV bandwidth.
bw = by_group.get("memory_bandwidth", {})
gbps = lambda key: throughput[key] / (results[key] / 1e9) if key in results and key in throughput else None
read_bw = gbps(("memory_bandwidth", "memory-read"))
copy_bw = gbps(("memory_bandwidth", "memcpy"))
if read_bw and copy_bw:
    print(f"\n### Batch-1 GEMV (bandwidth = weight bytes read / time)\n")
    print(f"Machine, same run: streaming read {read_bw / 1e9:.1f} GB/s, memcpy {copy_bw / 1e9:.1f} GB/s (bytes copied / time).\n")
for g in sorted((x for x in by_group if x.startswith("gemv_")), key=lambda g: (len(g), g)):
    r = by_group[g]
    print(f"\n{g.replace('gemv_', '').replace('x', ' × ')}:\n")
    print("| engine | time | weight bytes | GB/s | fraction of streaming read |")
    print("|---|---|---|---|---|")
    for k in ["graft-f32", "graft-q8", "graft-q4", "ort-f32", "tract-f32"]:
        if r.get(k) and (g, k) in throughput:
            b = gbps((g, k))
            frac = f"{b / read_bw:.2f}" if read_bw else "—"
            print(f"| {k} | {fmt_time(r[k])} | {throughput[(g, k)] / 1e6:.1f} MB | {b / 1e9:.1f} | {frac} |")
