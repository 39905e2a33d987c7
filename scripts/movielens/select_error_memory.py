"""Chooses the error memory's settings on a validation slice and reports on the rest.

    python scripts/movielens/select_error_memory.py [OUT]     # OUT: tests/fixtures/movielens

The held-out stream (rows 80 000–99 999 in timestamp order) is split in time:
- validation slice: its first 5 000 rows (80 000–84 999), which alone choose the settings
  (grid `EM_GRID` of train.py, lowest mean logloss over projection seeds 6001–6003);
- report window: the other 15 000 rows (85 000–99 999), on which every variant is reported.

The memory starts empty at row 80 000 and learns from each label right after its
prediction, through both parts. Only the committed base model (`weights.safetensors`) and
the data are read; nothing is retrained. Writes `error_memory.safetensors` (the chosen
config) and the `error_memory_sim` and `report_window` entries of
`reference_metrics.json`, and updates their sizes and hashes in `manifest.json`.
Deterministic (numpy default_rng seeds, torch on one thread): two runs write identical files.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import error_memory  # noqa: E402
import metrics  # noqa: E402
import stream as st  # noqa: E402
import train  # noqa: E402  (constants and helpers only; importing it trains nothing)
from models import CtrModel  # noqa: E402


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(train.WORKSPACE, "tests/fixtures/movielens")
    s = st.Stream(train.data_dir())
    rp = s.replay()
    lab = s.label[rp]
    base = CtrModel()
    base.load_state_dict(load_file(os.path.join(out, "weights.safetensors")))
    base.eval()
    with torch.no_grad():
        z = base.concat(*train.tensors(s.inputs(rp)))
        prob = torch.sigmoid(base.head(z)).numpy().ravel()
        keys = base.hidden2(z).numpy()
    ref_path = os.path.join(out, "reference_metrics.json")
    ref = json.load(open(ref_path))
    # The committed base must be the one the references were made with.
    got = metrics.logloss(prob, lab)
    if abs(got - ref["base"]["replay"]["logloss"]) > 1e-9:
        raise SystemExit(f"base replay logloss {got} differs from reference_metrics.json")

    result, params = selection(keys, prob, lab)
    ref["error_memory_sim"] = result
    ref["report_window"] = {
        "rows": [s.n_train + error_memory.VALIDATION_ROWS, s.n],
        "base": metrics.both(prob[error_memory.VALIDATION_ROWS:], lab[error_memory.VALIDATION_ROWS:]),
        "error_memory_sim": result["report"],
    }
    train.write_json(out, "reference_metrics.json", ref)
    cfg = em_config(params)
    save_file({}, os.path.join(out, "error_memory.safetensors"), metadata=train.adapter_meta(cfg))
    man_path = os.path.join(out, "manifest.json")
    man = json.load(open(man_path))
    for name in ("reference_metrics.json", "error_memory.safetensors"):
        man["files"][name] = {"bytes": os.path.getsize(os.path.join(out, name)), "sha256": train.sha256(os.path.join(out, name))}
    man["total_bytes"] = sum(f["bytes"] for f in man["files"].values())
    man["hyperparameters"]["error_memory_selection"] = result["protocol"]
    train.write_json(out, "manifest.json", man)
    print(json.dumps({k: result[k] for k in ("params", "validation", "report")}, indent=1))
    print("report window base:", ref["report_window"]["base"])


def selection(keys, prob, lab):
    """Runs the protocol; returns the `error_memory_sim` entry and the chosen settings."""
    seeds = [train.SEED_EM_SIM + i for i in range(train.EM_SEEDS)]
    (L, p, lam, rho), ranked = error_memory.select(keys, prob, lab, train.EM_GRID, seeds, metrics.logloss)
    v = error_memory.VALIDATION_ROWS
    q = error_memory.simulate(keys, prob, lab, L, p, lam, rho, train.SEED_EM_SIM)
    per_seed_report = [
        metrics.logloss(error_memory.simulate(keys, prob, lab, L, p, lam, rho, seed)[v:], lab[v:]) for seed in seeds
    ]
    params = {"L": L, "p": p, "lambda": lam, "rho": rho}
    return {
        "params": params,
        "validation": metrics.both(q[:v], lab[:v]),
        "report": metrics.both(q[v:], lab[v:]),
        "report_logloss_per_projection_seed": dict(zip(map(str, seeds), per_seed_report)),
        "top5_by_mean_validation_logloss": [
            {"L": k[0], "p": k[1], "lambda": k[2], "rho": k[3], "mean_logloss": float(np.mean(sc)),
             "max_logloss": float(np.max(sc))} for k, sc in ranked[:5]],
        "grid": train.EM_GRID,
        "protocol": f"held-out rows split in time: the first {v} (validation) choose the settings, the other "
                    f"{len(lab) - v} (report window) are reported; the memory starts empty at the first held-out row; "
                    "per row: predict with the pooled estimate, then insert (h, y - base prob); keys = ReLU(fc2) "
                    "output of the base; decay before every insertion; settings = lowest mean validation logloss "
                    f"over projection seeds {seeds}; 'validation' and 'report' use the first seed",
    }, params


def em_config(params):
    return {"kind": "error-memory", "format_version": 1, "key_node": train.NODE_RELU2, "output_node": train.NODE_SIGMOID,
            "output_is": "prob", "tables": params["L"], "bits": params["p"], "seed": train.SEED_EM_GRAFT,
            "estimate": "pooled", "lambda": params["lambda"], "space": "prob", "decay": params["rho"], "threshold": 0.0}


if __name__ == "__main__":
    main()
