#!/usr/bin/env python3
"""Summarize criterion results (target/criterion) into the tables of BENCHMARKS.md.

Usage: scripts/bench-report.py [target/criterion]  > tables.md
Reads each benchmark's new/benchmark.json + new/estimates.json and prints markdown:
whole-model latency with peer ratios, open + first inference by model size, batch-1
GEMV bandwidth as a fraction of the machine's measured memory bandwidth, and the adapter
(LoRA) tables: overhead, mixed batches, swap latency (p50/p99 from
lora_swap_percentiles.json, written by the lora bench) and ONNX Runtime's LoRA.
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

# Adapters (LoRA): groups of runtime/benches/lora.rs.
pct = lambda x, base: f"{(x / base - 1) * 100:+.1f} %" if x and base else "—"
BUDGET_OVERHEAD, BUDGET_MIXED, BUDGET_SWAP_NS = 10.0, 15.0, 20_000
over = sorted(g for g in by_group if g.startswith("lora_overhead/"))
if over:
    print("\n### LoRA overhead: adapter on every linear (6) of the demo DLRM vs the base model\n")
    print("Median per batch; overhead = LoRA / base − 1. Budget (DESIGN §10): ≤ +10 % for r = 8–16.\n")
    ranks = sorted({int(fn[1:]) for g in over for fn in by_group[g] if fn.startswith("r")})
    print("`none` is `run_with` with an empty adapter set: the adapter path's fixed cost.\n")
    print("| base | batch | threads | base time | none | " + " | ".join(f"r={r}" for r in ranks) + " | r=8–16 within budget |")
    print("|---|---|---|---|---|" + "---|" * len(ranks) + "---|")
    order = lambda g: (g.split("/")[1], int(g.split("/")[2][5:]), g.split("/")[3])
    for g in sorted(over, key=order):
        _, fmt, b, t = g.split("/")
        r = by_group[g]
        base = r.get("base")
        cells = [f"{fmt_time(r.get(f'r{k}'))} ({pct(r.get(f'r{k}'), base)})" for k in ranks]
        worst = max(((r[f"r{k}"] / base - 1) * 100 for k in (8, 16) if r.get(f"r{k}") and base), default=None)
        ok = "—" if worst is None else ("yes" if worst <= BUDGET_OVERHEAD else f"**no** ({worst:+.0f} %)")
        none = f"{fmt_time(r.get('none'))} ({pct(r.get('none'), base)})"
        print(f"| {fmt} | {b[5:]} | {t[1:]} | {fmt_time(base)} | {none} | " + " | ".join(cells) + f" | {ok} |")

def load_json(name):
    path = os.path.join(root, name)
    return json.load(open(path)) if os.path.exists(path) else {}


paired = load_json("lora_overhead_paired.json")
if paired:
    print("\n### LoRA overhead, interleaved (the figure checked against the budget)\n")
    print("Each round runs the base model and every rank back to back on the same inputs (4000 rounds at batch 1,")
    print("120 at 256); overhead is the median of the per-round ratios, so drift of the shared machine cancels.\n")
    ranks = sorted({int(k[1:].split("_")[0]) for v in paired.values() for k in v if k.startswith("r") and k.endswith("_pct")})
    print("| base | batch | threads | base median | " + " | ".join(f"r={r}" for r in ranks) + " | r=8–16 within ≤ +10 % |")
    print("|---|---|---|---|" + "---|" * len(ranks) + "---|")
    order = lambda g: (g.split("/")[1], int(g.split("/")[2][5:]), g.split("/")[3])
    for g in sorted(paired, key=order):
        _, fmt, b, t = g.split("/")
        v = paired[g]
        cells = [f"{v[f'r{k}_pct']:+.1f} %" if f"r{k}_pct" in v else "—" for k in ranks]
        worst = max((v[f"r{k}_pct"] for k in (8, 16) if f"r{k}_pct" in v), default=None)
        ok = "—" if worst is None else ("yes" if worst <= BUDGET_OVERHEAD else f"**no** ({worst:+.1f} %)")
        print(f"| {fmt} | {b[5:]} | {t[1:]} | {fmt_time(v['base_us'] * 1e3)} | " + " | ".join(cells) + f" | {ok} |")

kinds = load_json("kinds_overhead_paired.json")
if kinds:
    print("\n### Adapter kinds: overhead over the base model, interleaved (`--bench kinds`)\n")
    print("Demo DLRM, 1 thread; each round runs the base and every configuration back to back (3000 rounds at batch 1,")
    print("100 at 256); overhead is the median per-round ratio. `memory+feedback` also feeds one label per row back.\n")
    cols = ["lora-r8", "ssf-pool", "ssf-pool-prefix", "routing", "memory", "memory+feedback"]
    print("| base | batch | base median | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    groups = sorted({g.rsplit("/feedback", 1)[0] for g in kinds}, key=lambda g: (g.split("/")[1], int(g.split("/")[2][5:])))
    for g in groups:
        _, fmt, b, _t = g.split("/")
        v = dict(kinds.get(g, {}))
        v.update(kinds.get(g + "/feedback", {}))
        cells = [f"{v[c + '_pct']:+.1f} %" if c + "_pct" in v else "—" for c in cols]
        print(f"| {fmt} | {b[5:]} | {fmt_time(kinds[g]['base_us'] * 1e3)} | " + " | ".join(cells) + " |")

mixed_paired = load_json("lora_mixed_paired.json")
if mixed_paired:
    print("\n### Mixed batch, interleaved (the figure checked against the budget)\n")
    print("Batch 256, 1 thread; 120 rounds of single / sorted / round-robin back to back; median per-round ratio.\n")
    print("| base | rank | single adapter | 8 adapters, sorted rows | 8 adapters, round-robin rows | within ≤ +15 % |")
    print("|---|---|---|---|---|---|")
    for g in sorted(mixed_paired):
        _, fmt, rk = g.split("/")
        v = mixed_paired[g]
        worst = max(v.get("mixed8-sorted_pct", 0), v.get("mixed8-roundrobin_pct", 0))
        ok = "yes" if worst <= BUDGET_MIXED else f"**no** ({worst:+.1f} %)"
        print(
            f"| {fmt} | {rk[1:]} | {fmt_time(v['single_us'] * 1e3)} | {v.get('mixed8-sorted_pct', 0):+.1f} % "
            f"| {v.get('mixed8-roundrobin_pct', 0):+.1f} % | {ok} |"
        )

mixed = sorted(g for g in by_group if g.startswith("lora_mixed/"))
if mixed:
    print("\n### Mixed batch: 256 rows, 8 adapters (every linear) vs one adapter for all rows, 1 thread\n")
    print("graft runs one batch (`run_with`, rows grouped per adapter); ORT applies one adapter set per run, so its mixed")
    print("batch is 8 runs of 32 rows. Budget (DESIGN §10): mixed ≤ +15 % over single.\n")
    print("| engine | rank | base (no adapter) | single adapter | 8 adapters, sorted rows | 8 adapters, round-robin rows | sorted / single | round-robin / single |")
    print("|---|---|---|---|---|---|---|---|")
    for g in mixed:
        _, eng, rk = g.split("/")
        r = by_group[g]
        single = r.get("single")
        if eng.startswith("ort"):
            m = r.get("mixed8")
            print(f"| {eng} | {rk[1:]} | — | {fmt_time(single)} | {fmt_time(m)} (8 runs × 32) | — | {pct(m, single)} | — |")
        else:
            s, rr = r.get("mixed8-sorted"), r.get("mixed8-roundrobin")
            print(
                f"| graft-{eng} | {rk[1:]} | {fmt_time(r.get('base'))} | {fmt_time(single)} | {fmt_time(s)} | {fmt_time(rr)} "
                f"| {pct(s, single)} | {pct(rr, single)} |"
            )

swaps = sorted(g for g in by_group if g.startswith("lora_swap/"))
perc_path = os.path.join(root, "lora_swap_percentiles.json")
perc = json.load(open(perc_path)) if os.path.exists(perc_path) else {}
if swaps or perc:
    print("\n### Adapter swap: `Registry::replace` (publish) while readers run batches of 16 continuously\n")
    print("p50/p99/max of timed swaps, one every 20 µs (`lora_swap_percentiles.json`); mean of back-to-back swaps from criterion.")
    print("Budget (DESIGN §10): p99 ≤ 20 µs, independent of model size.\n")
    print("| model tables | readers | swaps | p50 | p99 | max | criterion mean | reader batches meanwhile | p99 within budget |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = sorted(set(perc) | {g.split("/", 1)[1] for g in swaps}, key=lambda k: (size_key("x/" + k.split("/")[0]), k))
    for k in keys:
        p = perc.get(k, {})
        mean = by_group.get(f"lora_swap/{k}", {}).get("publish")
        ok = "—" if "p99_ns" not in p else ("yes" if p["p99_ns"] <= BUDGET_SWAP_NS else "**no**")
        size, readers = k.split("/")
        print(
            f"| {size} | {readers[7:]} | {p.get('swaps', '—')} | {fmt_time(p.get('p50_ns'))} | {fmt_time(p.get('p99_ns'))} "
            f"| {fmt_time(p.get('max_ns'))} | {fmt_time(mean)} | {p.get('reader_batches', '—')} | {ok} |"
        )

peer = sorted(g for g in by_group if g.startswith("lora_peer/"))
if peer:
    print("\n### LoRA overhead: graft vs ONNX Runtime's own LoRA (same demo DLRM, f32, adapter on every linear)\n")
    print("ORT: the export with LoRA matrices as graph inputs and an `.onnx_adapter` made active through `RunOptions`,")
    print("against the plain export (`ort-plain`). graft: f32 file, `run_with` against `run` (from `lora_overhead`).")
    print("Peers report +10–20 % for r=8 at batch 256 (DESIGN §10).\n")
    print("| batch | threads | rank | ORT plain | ORT LoRA | ORT LoRA session, adapter off | ORT overhead | graft f32 base | graft f32 LoRA | graft overhead | ORT LoRA / graft LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for g in sorted(peer, key=lambda g: (int(g.split("/")[1][5:]), g)):
        _, b, t = g.split("/")
        r = by_group[g]
        gr = by_group.get(f"lora_overhead/f32/{b}/{t}", {})
        for rk in sorted({int(fn.split("-r")[1].split("-")[0]) for fn in r if fn.startswith("ort-lora-r")}):
            ol, plain = r.get(f"ort-lora-r{rk}"), r.get("ort-plain")
            gl, gb = gr.get(f"r{rk}"), gr.get("base")
            print(
                f"| {b[5:]} | {t[1:]} | {rk} | {fmt_time(plain)} | {fmt_time(ol)} | {fmt_time(r.get(f'ort-lora-r{rk}-off'))} "
                f"| {pct(ol, plain)} | {fmt_time(gb)} | {fmt_time(gl)} | {pct(gl, gb)} | {ratio(ol, gl)} |"
            )

# Library models (the zoo): runtime/benches/zoo.rs, interleaved rounds.
zoo = load_json("zoo_paired.json")  # not zoo_paired_quick.json: test-mode timings
if zoo:
    machine = zoo.get("_machine", {})
    entries = {k: v for k, v in zoo.items() if not k.startswith("_")}
    print("\n### Library models (the zoo): median latency per batch, interleaved rounds\n")
    if machine:
        flags = ", ".join(machine.get("flags", [])) or "none"
        print(f"CPU: {machine.get('model', '?')}, {machine.get('cpus', '?')} CPUs (flags: {flags}).")
    print("Ratios are medians of per-round ratios (peer time / graft time, > 1: graft faster);")
    print("tract runs single-threaded only. `—`: the engine did not run (see notes).\n")
    us = lambda v, k: fmt_time(v[k] * 1e3) if k in v else "—"
    rx = lambda v, k: f"{v[k]:.2f}×" if k in v else "—"
    ids = list(dict.fromkeys(k.split("/")[0] for k in entries))
    configs = [("1", "1"), ("16", "1"), ("256", "1"), ("256", "2")]
    for b, t in configs:
        rows = [(m, entries.get(f"{m}/batch{b}/t{t}")) for m in ids]
        rows = [(m, v) for m, v in rows if v]
        if not rows:
            continue
        print(f"\nBatch {b}, {t} thread{'s' if t != '1' else ''}:\n")
        print("| model | graft f32 | graft q8 | ORT f32 | ORT int8 | tract | ORT f32 / graft f32 | ORT int8 / graft q8 |")
        print("|---|---|---|---|---|---|---|---|")
        for m, v in rows:
            print(
                f"| {m} | {us(v, 'graft-f32_us')} | {us(v, 'graft-q8_us')} | {us(v, 'ort-f32_us')} | {us(v, 'ort-int8_us')} "
                f"| {us(v, 'tract-f32_us')} | {rx(v, 'ort-f32/graft-f32')} | {rx(v, 'ort-int8/graft-q8')} |"
            )
    # Targets: batch 1 >= 2x ORT f32; batch 256 >= 1.2x ORT f32 at 1 and 2 threads; q8 ahead of ORT int8 everywhere.
    print("\nTargets (graft f32 vs ORT f32, graft q8 vs ORT int8; paired ratios):\n")
    print("| model | batch 1 ≥ 2× ORT f32 | batch 256 t1 ≥ 1.2× | batch 256 t2 ≥ 1.2× | q8 ahead of ORT int8 (all configs) |")
    print("|---|---|---|---|---|")
    verdict = lambda x, goal: "—" if x is None else (f"yes ({x:.2f}×)" if x >= goal else f"**no** ({x:.2f}×)")
    for m in ids:
        get = lambda b, t, k: entries.get(f"{m}/batch{b}/t{t}", {}).get(k)
        q8 = [get(b, t, "ort-int8/graft-q8") for b, t in configs if get(b, t, "ort-int8/graft-q8") is not None]
        worst = min(q8) if q8 else None
        print(
            f"| {m} | {verdict(get('1', '1', 'ort-f32/graft-f32'), 2.0)} | {verdict(get('256', '1', 'ort-f32/graft-f32'), 1.2)} "
            f"| {verdict(get('256', '2', 'ort-f32/graft-f32'), 1.2)} | {verdict(worst, 1.0).replace('(', '(worst ')} |"
        )
