"""The PyTorch peer of graft's GPU benchmark (run by gpu-check.sh).

Reads what `cargo run --example cuda_bench -- --export DIR` wrote (the demo DLRM's
weights dequantized to f32, its shape, a batch of 256 rows and graft's outputs for it),
runs the same model in PyTorch on cuda:0 in f32, checks it agrees with graft and prints
batch-1 and batch-256 latency in the same format as the Rust benchmark.

Usage: python bench_torch.py DIR
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def main(d):
    spec = json.load(open(os.path.join(d, "spec.json")))
    dev = torch.device("cuda:0")
    load = lambda name: torch.from_numpy(np.load(os.path.join(d, name))).to(dev)
    linears = [(load(w + ".npy"), load(n + ".bias.npy")) for n, w in spec["linears"]]
    tables = [load(t + ".npy") for t in spec["tables"]]
    n_bottom = len(spec["bottom"])
    dense = load("input_dense.npy")
    ids = [load(f"input_ids_{f}.npy") for f in range(spec["fields"])]

    def forward(x, ids):
        for w, b in linears[:n_bottom]:
            x = F.relu(F.linear(x, w, b))
        parts = [x] + [F.embedding_bag(i, t, mode="sum") for i, t in zip(ids, tables)]
        z = torch.cat(parts, dim=1)
        for w, b in linears[n_bottom:-1]:
            z = F.relu(F.linear(z, w, b))
        w, b = linears[-1]
        return torch.sigmoid(F.linear(z, w, b))

    with torch.inference_mode():
        prob = forward(dense, ids).flatten().cpu().numpy()
        want = np.load(os.path.join(d, "graft_prob.npy"))
        diff = float(np.abs(prob - want).max())
        print(f"torch    dlrm f32 (graft's q8 weights dequantized) agrees with graft: max |dprob| {diff:.2e}")
        for batch in (1, 256):
            x, i = dense[:batch].contiguous(), [t[:batch].contiguous() for t in ids]
            # Like graft's session: host inputs in, host outputs out.
            xh, ih = x.cpu().pin_memory(), [t.cpu().pin_memory() for t in i]
            run = lambda: forward(xh.to(dev, non_blocking=True), [t.to(dev, non_blocking=True) for t in ih]).cpu()
            run()
            torch.cuda.synchronize()
            reps = 200 if batch == 1 else 50
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            dt = (time.perf_counter() - t0) / reps
            print(f"torch    dlrm f32 batch {batch}: {dt * 1e6:.1f} us ({batch / dt:.0f} rows/s), torch {torch.__version__}")
    if diff > 1e-3:
        print("torch    MISMATCH: PyTorch and graft disagree beyond 1e-3")
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
