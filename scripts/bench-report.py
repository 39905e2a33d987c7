#!/usr/bin/env python3
"""Benchmark tables for BENCHMARKS.md, from the results the benches leave in target/criterion.

Usage:
  scripts/bench-report.py [CRITERION_DIR]
      Print every table (default directory: target/criterion).
  scripts/bench-report.py --run [--quick] [--benches models,gemv,open,zoo] [--write BENCHMARKS.md]
      First run the benches behind the peer tables (one `cargo bench` each; about 12–15 min
      on 2 cores with the models cached, plus about 5 min the first time for writing them),
      then print the tables, or with --write replace the generated regions of the file
      (between `<!-- bench-report:NAME -->` and `<!-- /bench-report:NAME -->`).
      --quick: 1 s per configuration instead of 4 (GRAFT_BENCH_SECONDS) and short
      criterion groups for `open`: a smoke run of the whole pipeline, not for publishing.

ONNX Runtime: ORT_DYLIB_PATH, else the library of the onnxruntime wheel in .venv (what CI
creates) or scripts/zoo/.venv. The int8 twins need that Python too (onnxruntime, onnx).

Sources: fair_models.json (`--bench models`), fair_gemv.json (`--bench gemv`), criterion
groups open_first_inference/* (`--bench open`), zoo_paired.json (`--bench zoo`), and the
adapter benches' files (`--bench lora`, `--bench kinds`), each only if present.
"""
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCHES = ["models", "gemv", "open", "zoo"]

results = {}  # (group, function) -> median ns (criterion groups)
throughput = {}  # (group, function) -> bytes per iteration, when declared
by_group = defaultdict(dict)
root = "target/criterion"


def load(directory):
    global root
    root = directory
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
    for (g, fn), ns in results.items():
        by_group[g][fn] = ns


def load_json(name):
    path = os.path.join(root, name)
    return json.load(open(path)) if os.path.exists(path) else {}


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


def fmt_bytes(b):
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= m:
            return f"{b / m:.1f} {unit}"
    return f"{b} B"


def machine_header(m, what):
    """The machine / date / command lines every table carries."""
    if not m:
        return f"*{what}: no machine record (an old results file).*\n"
    caches = ", ".join(f"L{c['level']} {fmt_bytes(c['bytes'])}" for c in m.get("caches", []))
    flags = ", ".join(m.get("flags", [])) or "none of the listed"
    lines = [
        f"**Machine:** {m.get('model', '?')}, {m.get('cpus', '?')} CPUs; caches (per CPU 0, sysfs): {caches or '?'}; "
        f"flags: {flags}. graft kernel level: **{m.get('graft_level') or '?'}**"
        + (f" (GRAFT_KERNELS={m['kernels_env']})" if m.get("kernels_env") else "")
        + f"; ONNX Runtime {m.get('ort') or 'not loaded'}"
        + (f"; streaming read kernel: {m['read_kernel']}" if m.get("read_kernel") else "")
        + ".",
        f"**Date:** {m.get('date', '?')}; load average {m.get('loadavg_start', '?')} at start, "
        f"{m.get('loadavg_end', '?')} at end (1/5/15 min).",
        f"**Command:** `{m.get('command', '?')}`",
    ]
    return "\n".join(lines) + "\n"


def rx(v, key):
    """A recorded per-round ratio `[median, p25, p75]` as text."""
    x = v.get(key)
    return f"{x[0]:.2f}×" if x else "—"


def us(v, key):
    return fmt_time(v[key] * 1e3) if key in v else "—"


# ---------------------------------------------------------------- whole models (--bench models)
TARGETS = {1: 2.0, 16: 1.5, 256: 1.3}
ENGINES = [
    ("graft-f32", "graft f32"),
    ("ort-f32", "ORT f32"),
    ("tract-f32", "tract f32"),
    ("graft-q8", "graft q8"),
    ("graft-q8-exact", "graft q8 exact"),
    ("ort-int8", "ORT int8"),
    ("graft-q4", "graft q4"),
]
RATIOS = [
    ("ort-f32/graft-f32", "ORT f32 / graft f32"),
    ("tract-f32/graft-f32", "tract / graft f32"),
    ("ort-int8/graft-q8", "ORT int8 / graft q8"),
    ("ort-f32/graft-q8", "ORT f32 / graft q8"),
    ("ort-int8/graft-q4", "ORT int8 / graft q4"),
    ("graft-q8-exact/graft-q8", "graft q8 exact / q8"),
]


def config_key(k):
    _, variant, b, t = k.split("/")
    return (variant != "fresh", int(b[5:]), int(t[1:]))


def section_models():
    data = load_json("fair_models.json")
    if not data:
        return ""
    out = ["### Whole models: graft against ONNX Runtime and tract, like with like\n"]
    out.append(machine_header(data.get("_machine"), "models"))
    out.append(
        "Median time per batch; ratios are medians of per-round ratios (peer time / graft time, > 1: graft is\n"
        "faster), every engine run once per round in ABBA order. Columns pair like with like: f32 against f32,\n"
        "graft q8 (its default q8 path) against ONNX Runtime int8 (`quantize_dynamic` of the same export); q4\n"
        "beside both. **fresh**: every run reads the next batch of a pre-generated ring whose gathered rows\n"
        "are ≥ 2× the L3; **warm**: one batch repeated (cache-warm gathers; shown for comparison with the\n"
        "previous tables, not checked against targets). ORT's intra-op threads match graft's; tract runs\n"
        "single-threaded only.\n"
    )
    entries = {k: v for k, v in data.items() if not k.startswith("_")}
    for model in ["dlrm_demo", "dlrm_fixture"]:
        for variant in ["fresh", "warm"]:
            keys = sorted((k for k in entries if k.startswith(f"{model}/{variant}/")), key=config_key)
            if not keys:
                continue
            vs = [entries[k] for k in keys]
            engines = [(e, n) for e, n in ENGINES if any(f"{e}_us" in v for v in vs)]
            ratios = [(r, n) for r, n in RATIOS if any(r in v for v in vs)]
            v0 = vs[0]
            label = "fresh inputs" if variant == "fresh" else "**warm batch** (one batch repeated)"
            out.append(
                f"\n**{model}**, {label}; ids: {v0.get('ids', '?')}; graft kernels {v0.get('graft_level', '?')}, "
                f"q8 mode `{v0.get('q8_math', 'exact (no option)')}` (`graft q8 exact`: `Q8Math::Exact`):\n"
            )
            out.append(
                "| batch | threads | ring | " + " | ".join(n for _, n in engines) + " | " + " | ".join(n for _, n in ratios) + " |"
            )
            out.append("|---" * (3 + len(engines) + len(ratios)) + "|")
            for k, v in zip(keys, vs):
                _, _, b, t = k.split("/")
                out.append(
                    f"| {b[5:]} | {t[1:]} | {v.get('ring', '?')} | "
                    + " | ".join(us(v, f"{e}_us") for e, _ in engines)
                    + " | "
                    + " | ".join(rx(v, r) for r, _ in ratios)
                    + " |"
                )
    # Targets (issue: q8 vs ORT int8 and vs ORT f32, fresh inputs, 1 and 2 threads).
    keys = sorted((k for k in entries if k.startswith("dlrm_demo/fresh/")), key=config_key)
    if keys:
        out.append(
            "\n**Targets**, demo DLRM, fresh inputs: graft q8 ≥ 2× at batch 1, ≥ 1.5× at 16, ≥ 1.3× at 256, against\n"
            "ORT int8 and ORT f32. The last columns are the first things to read when a target is missed: each\n"
            "engine's own gain from 8-bit weights (f32 time / int8 or q8 time, paired), and what fresh inputs cost\n"
            "each 8-bit engine (fresh median / warm median at 1 thread: cold gathers of the batch's table rows).\n"
        )
        out.append(
            "| batch | threads | target | ORT int8 / graft q8 | ORT f32 / graft q8 | verdict | ORT f32 / ORT int8 "
            "| graft f32 / graft q8 | graft q8 fresh / warm | ORT int8 fresh / warm |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in keys:
            v = entries[k]
            _, _, b, t = k.split("/")
            goal = TARGETS.get(int(b[5:]))
            got = [v.get(r, [None])[0] for r in ("ort-int8/graft-q8", "ort-f32/graft-q8")]
            if goal is None or any(x is None for x in got):
                verdict = "—"
            else:
                verdict = "met" if min(got) >= goal else f"**missed** ({min(got):.2f}×)"
            warm = entries.get(f"dlrm_demo/warm/{b}/t1", {}) if t == "t1" else {}
            cold = lambda e: f"{v[e] / warm[e]:.2f}×" if e in v and e in warm else "—"
            out.append(
                f"| {b[5:]} | {t[1:]} | ≥ {goal}× | {rx(v, 'ort-int8/graft-q8')} | {rx(v, 'ort-f32/graft-q8')} | {verdict} "
                f"| {rx(v, 'ort-f32/ort-int8')} | {rx(v, 'graft-f32/graft-q8')} | {cold('graft-q8_us')} | {cold('ort-int8_us')} |"
            )
    if entries:
        worst = {}
        for v in entries.values():
            for e, _ in ENGINES:
                d = v.get(f"{e}_max_diff")
                if d is not None:
                    worst[e] = max(worst.get(e, 0.0), d)
        if worst:
            out.append(
                "\nLargest output difference from ORT f32 on the first ring batch (asserted: graft f32 ≤ 1e-4, graft q8 ≤ 0.05): "
                + ", ".join(f"{e} {d:.1e}" for e, d in worst.items())
                + "."
            )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- GEMV (--bench gemv)
GEMV_ENGINES = [
    ("graft-f32", "read-f32"),
    ("ort-f32", "read-f32"),
    ("tract-f32", "read-f32"),
    ("graft-q8", "read-q8"),
    ("graft-q8-exact", "read-q8"),
    ("ort-int8", "read-q8"),
    ("graft-q4", "read-q4"),
]


def section_gemv():
    data = load_json("fair_gemv.json")
    if not data:
        return ""
    m = data.get("_machine", {})
    l3 = next((c["bytes"] for c in m.get("caches", []) if c["level"] == 3), None)
    out = ["### Batch-1 GEMV against the bandwidth of its cache level\n"]
    out.append(machine_header(m, "gemv"))
    out.append(
        "One linear layer `y = W x` (no bias, n × n), batch 1, 1 thread, a fresh x every run. Sizes from this\n"
        "machine's caches: **L2** (f32 weight ≤ half the L2), **L3** (f32 ≤ half the L3), **DRAM** (every format\n"
        "≥ 4× L3, n ≤ 16384). GB/s = weight bytes / median time. *Fraction* = the median per-round ratio of a\n"
        "streaming read (a vectorized sum over a buffer of the same bytes, timed in the same ABBA rounds) to the\n"
        "engine's time: 1.0 means the engine reads its weights as fast as the machine can read those bytes from\n"
        "that level.\n"
    )
    first = next((data[k] for k in data if not k.startswith("_")), {})
    out.append(
        f"graft kernels {first.get('graft_level', '?')}; `graft-q8` runs graft's default q8 mode "
        f"(`{first.get('q8_math', 'exact (no option)')}`), `graft-q8-exact` `Q8Math::Exact`; ORT int8 is "
        "`quantize_dynamic` (per-tensor int8 weights, activations quantized per run).\n"
    )
    out.append("| level | n | engine | weight | × L3 | time | GB/s | streaming read, same bytes | fraction of read |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    order = {"L2": 0, "L3": 1, "DRAM": 2}
    keys = sorted((k for k in data if not k.startswith("_")), key=lambda k: order.get(k.split("/")[1], 9))
    for k in keys:
        v = data[k]
        level = k.split("/")[1]
        for e, read in GEMV_ENGINES:
            if f"{e}_us" not in v:
                continue
            b = v["bytes"].get(e)
            rb = v.get("read_bytes", {}).get(read)
            t = v[f"{e}_us"] * 1e-6
            rt = v.get(f"{read}_us", 0) * 1e-6
            frac = v.get(f"{read}/{e}")
            xl3 = ("<0.01" if b / l3 < 0.01 else f"{b / l3:.2f}") if l3 and b else "—"
            gbs = f"{b / t / 1e9:.1f}" if b and t else "—"
            rbw = f"{rb / rt / 1e9:.1f} GB/s" if rb and rt else "—"
            fr = f"{frac[0]:.2f}" if frac else "—"
            weight = fmt_bytes(b) if b else "—"
            out.append(f"| {level} | {v['n']} | {e} | {weight} | {xl3} | {fmt_time(t * 1e9)} | {gbs} | {rbw} | {fr} |")
    out.append("\nPeers at the same size (per-round ratios, > 1: graft is faster):\n")
    out.append("| level | n | ORT f32 / graft f32 | tract / graft f32 | ORT int8 / graft q8 | ORT int8 / graft q4 |")
    out.append("|---|---|---|---|---|---|")
    for k in keys:
        v = data[k]
        out.append(
            f"| {k.split('/')[1]} | {v['n']} | {rx(v, 'ort-f32/graft-f32')} | {rx(v, 'tract-f32/graft-f32')} "
            f"| {rx(v, 'ort-int8/graft-q8')} | {rx(v, 'ort-int8/graft-q4')} |"
        )
    dram = data.get("gemv/DRAM")
    if dram:
        got = {e: dram.get(f"read-{e[6:]}/{e}", [None])[0] for e in ("graft-q8", "graft-q4")}
        verdict = lambda x, goal: "—" if x is None else (f"met ({x:.2f})" if x >= goal else f"**missed** ({x:.2f})")
        out.append(
            f"\nTargets at the DRAM size: q8 ≥ 0.85 of streaming read: {verdict(got['graft-q8'], 0.85)}; "
            f"q4 ≥ 0.7: {verdict(got['graft-q4'], 0.7)}."
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- open + first inference (--bench open)
def size_key(g):
    label = g.split("/")[1]
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    return next((float(label[: -len(u)]) * m for u, m in units.items() if label.endswith(u)), 0.0)


def section_open():
    opens = sorted((g for g in by_group if g.startswith("open_first_inference/")), key=size_key)
    if not opens:
        return ""
    out = ["### Open + first inference (warm page cache)\n"]
    run = load_json("bench_report_runs.json").get("open")
    if run:
        out.append(f"Criterion medians; machine as in the tables above. **Date:** {run['date']}. **Command:** `{run['command']}`\n")
    out.append("| tables | graft | ORT | tract | ORT / graft | tract / graft |")
    out.append("|---|---|---|---|---|---|")
    for g in opens:
        r = by_group[g]
        out.append(
            f"| {g.split('/')[1]} | {fmt_time(r.get('graft'))} | {fmt_time(r.get('ort'))} | {fmt_time(r.get('tract'))} "
            f"| {ratio(r.get('ort'), r.get('graft'))} | {ratio(r.get('tract'), r.get('graft'))} |"
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- library models (--bench zoo)
def section_zoo():
    # Library models (the zoo): runtime/benches/zoo.rs, interleaved rounds.
    zoo = load_json("zoo_paired.json")  # not zoo_paired_quick.json: test-mode timings
    if zoo:
        machine = zoo.get("_machine", {})
        entries = {k: v for k, v in zoo.items() if not k.startswith("_")}
        print("\n### Library models (the zoo): median latency per batch, interleaved rounds\n")
        if machine:
            flags = ", ".join(machine.get("flags", [])) or "none"
            print(machine_header(machine, "zoo"))
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


# ---------------------------------------------------------------- adapters (--bench lora, --bench kinds)
def section_adapters():
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


SECTIONS = {"models": section_models, "gemv": section_gemv, "open": section_open, "zoo": section_zoo}


def captured(fn):
    """A section function's text: returned, or printed (the older sections print)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        text = fn() or ""
    return (buf.getvalue() + text).strip("\n")


def find_ort():
    """ORT_DYLIB_PATH, else the onnxruntime wheel's library in .venv or scripts/zoo/.venv."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    for venv in (".venv", "scripts/zoo/.venv"):
        hits = sorted(glob.glob(os.path.join(ROOT, venv, "lib", "python3*", "site-packages", "onnxruntime", "capi", "libonnxruntime.so.1.*")))
        if hits:
            return hits[-1]
    return None


def run_benches(benches, quick, command):
    env = dict(os.environ)
    ort = find_ort()
    if not ort:
        sys.exit(
            "bench-report: ONNX Runtime not found. Set ORT_DYLIB_PATH, or create the venv CI uses:\n"
            "  python3 -m venv .venv && .venv/bin/pip install onnxruntime==1.32.0 numpy onnx==1.23.2"
        )
    env["ORT_DYLIB_PATH"] = ort
    if quick:
        env.setdefault("GRAFT_BENCH_SECONDS", "1")
    runs = load_json("bench_report_runs.json")
    for b in benches:
        cmd = ["cargo", "bench", "-p", "graft", "--features", "onnx", "--bench", b]
        if b == "open" and quick:
            cmd += ["--", "--warm-up-time", "0.5", "--measurement-time", "1"]
        env["GRAFT_BENCH_COMMAND"] = f"{command}  →  {shlex.join(cmd)}"
        print(f"bench-report: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        print(f"bench-report: {b} took {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        runs[b] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": env["GRAFT_BENCH_COMMAND"],
            "seconds": round(time.time() - start),
        }
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "bench_report_runs.json"), "w") as f:
            json.dump(runs, f, indent=2)


def write_regions(path, texts):
    """Replaces `<!-- bench-report:NAME -->` … `<!-- /bench-report:NAME -->` regions."""
    doc = open(path).read()
    for name, text in texts.items():
        pattern = re.compile(rf"(<!-- bench-report:{name} -->\n).*?(<!-- /bench-report:{name} -->)", re.S)
        if not pattern.search(doc):
            print(f"bench-report: {path} has no region `{name}`; not written", file=sys.stderr)
            continue
        if not text:
            print(f"bench-report: no results for `{name}`; region left as it was", file=sys.stderr)
            continue
        doc = pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc)
    open(path, "w").write(doc)


def main(argv):
    args = list(argv)
    run = "--run" in args
    quick = "--quick" in args
    benches, write = BENCHES, None
    rest = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--run", "--quick"):
            pass
        elif a == "--benches":
            i += 1
            benches = [b for b in args[i].split(",") if b]
            unknown = set(benches) - set(BENCHES)
            if unknown:
                sys.exit(f"bench-report: unknown benches {sorted(unknown)} (known: {', '.join(BENCHES)})")
        elif a == "--write":
            i += 1
            write = args[i]
        elif a in ("-h", "--help"):
            print(__doc__)
            return
        else:
            rest.append(a)
        i += 1
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    directory = rest[0] if rest else os.environ.get("CRITERION_HOME", os.path.join(target, "criterion"))
    global root
    root = directory
    if run:
        command = "python3 scripts/bench-report.py " + shlex.join(argv)
        run_benches(benches, quick, command)
    load(directory)
    texts = {name: captured(fn) for name, fn in SECTIONS.items()}
    if write:
        write_regions(write, {k: v for k, v in texts.items() if not run or k in benches})
        print(f"bench-report: wrote {write}", file=sys.stderr)
    else:
        for name in SECTIONS:
            if texts[name]:
                print(texts[name] + "\n")
        adapters = captured(section_adapters)
        if adapters:
            print(adapters)


if __name__ == "__main__":
    main(sys.argv[1:])
