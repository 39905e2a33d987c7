"""Train the MovieLens-100K CTR model and its Adapters-II artifacts; write tests/fixtures/movielens/.

Usage:  python scripts/movielens/train.py [OUT]     (default: <workspace>/tests/fixtures/movielens)
Data:   $GRAFT_ML100K_DIR, else <workspace>/.venv/lib/python3*/site-packages/recbole/dataset_example/ml-100k
Python: torch, peft 0.21.2, onnx, onnxruntime, safetensors, numpy (see README.md).

Everything is seeded and runs on one CPU thread with deterministic algorithms, so a rerun
rewrites identical files (the manifest's sha256 prove it). Nothing derived per row from the data
is written: only trained weights, aggregates, metrics and 64 synthetic rows.
"""
import copy
import glob
import hashlib
import json
import os
import shutil
import sys

if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT writes target_modules from a set
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import error_memory  # noqa: E402
import metrics  # noqa: E402
import stream as st  # noqa: E402
from models import HIDDEN, ONNX_INPUTS, ONNX_OUTPUTS, CtrModel, CtrPadded, Routing, SsfPool  # noqa: E402

WORKSPACE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONNX_OPSET = 17

SEED_BASE, SEED_SHUFFLE = 1001, 1002
SEED_LORA = 2000  # + group
SEED_SSF, SEED_ROUTING, SEED_SYNTH = 3001, 4001, 5001
SEED_EM_SIM = 6001  # projections of the numpy error-memory simulation (graft draws its own)
SEED_EM_GRAFT = 7  # the `seed` written into error_memory.safetensors

BASE = dict(epochs=3, lr=2e-3, batch=512, emb_init_std=0.05)
LORA = dict(r=4, lora_alpha=8, epochs=2, lr=2e-3, batch=256)
SSF = dict(pool=8, top_k=2, epochs=3, lr=5e-3, batch=512, aux_weight=0.1)
ROUTING = dict(clusters=3, dims=[st.CONCAT_WIDTH, 64, 64, 1], beta=0.9, times=3, train_softmax_temperature=0.05, epochs=3,
               lr=2e-3, batch=512)
EM_GRID = dict(L=[8, 16, 32], p=[4, 6, 8], lam=[0.25, 0.5, 0.75, 1.0], rho=[1.0, 0.995, 0.99, 0.98])
EM_SEEDS = 3
N_SYNTH = 64
MIN_GAP = 1e-3  # synthetic rows: top-k and argmax decisions must be clear of f32 noise by this much
TOL_ORT = 1e-5

# graft node names of the converted graph (`graft inspect`: ONNX /fc1/Gemm -> fc1, /Concat -> Concat, ...)
NODE_CONCAT, NODE_FC1, NODE_FC2, NODE_RELU2, NODE_FC3, NODE_SIGMOID = "Concat", "fc1", "fc2", "Relu_1", "fc3", "Sigmoid"


# ----------------------------------------------------------------------------- helpers
def data_dir():
    venv = sorted(glob.glob(os.path.join(WORKSPACE, ".venv/lib/python3*/site-packages/recbole/dataset_example/ml-100k")))
    return st.locate(venv[-1] if venv else None)


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def write_raw(folder, name, arr, dtype):
    np.ascontiguousarray(np.asarray(arr).astype(dtype)).tofile(os.path.join(folder, name))


def write_json(folder, name, doc):
    with open(os.path.join(folder, name), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")


def adapter_meta(config):
    """safetensors metadata: the one key graft reads (a single key keeps the bytes stable)."""
    return {"graft.adapter": json.dumps(config, separators=(",", ":"))}


def tensors(feeds):
    return [torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in ONNX_INPUTS]


def check(name, got, want, tol, log):
    d = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    ok = d <= tol
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: max|diff| {d:.3e} (tol {tol:g})")
    log[name] = {"max_abs_diff": d, "tol": tol}
    if not ok:
        raise SystemExit(f"check failed: {name}")


def batches(n, size, gen):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + size] for i in range(0, n, size)]


# ----------------------------------------------------------------------------- base
def train_base(X, y):
    torch.manual_seed(SEED_BASE)
    m = CtrModel()
    with torch.no_grad():
        for _n, _i, mod, _v, _s in st.FIELDS:
            getattr(m, mod).weight.normal_(0.0, BASE["emb_init_std"])
    opt = torch.optim.Adam(m.parameters(), lr=BASE["lr"])
    gen = torch.Generator().manual_seed(SEED_SHUFFLE)
    lossf = nn.BCEWithLogitsLoss()
    m.train()
    for _ in range(BASE["epochs"]):
        for b in batches(len(y), BASE["batch"], gen):
            loss = lossf(m(*[x[b] for x in X]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def export_onnx(model, path, X):
    wrapper = CtrPadded(model).eval()
    axes = {n: {0: "batch"} for n in ONNX_INPUTS + ONNX_OUTPUTS}
    torch.onnx.export(wrapper, tuple(x[:2] for x in X), path, opset_version=ONNX_OPSET, dynamo=False,
                      input_names=ONNX_INPUTS, output_names=ONNX_OUTPUTS, dynamic_axes=axes, do_constant_folding=True)
    return wrapper


def run_ort(path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(ONNX_OUTPUTS, {k: np.ascontiguousarray(v) for k, v in feeds.items()})


# ----------------------------------------------------------------------------- adapters
def train_lora(base, X, y, group):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SEED_LORA + group)
    cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["lora_alpha"], target_modules=["fc1", "fc2", "fc3"],
                     lora_dropout=0.0, bias="none")
    pm = get_peft_model(copy.deepcopy(base), cfg)
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=LORA["lr"])
    gen = torch.Generator().manual_seed(SEED_LORA + group)
    lossf = nn.BCEWithLogitsLoss()
    pm.train()
    for _ in range(LORA["epochs"]):
        for b in batches(len(y), LORA["batch"], gen):
            loss = lossf(pm(*[x[b] for x in X]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return pm.eval()


def train_ssf(base, Z, y):
    gen = torch.Generator().manual_seed(SEED_SSF)
    pool = SsfPool(base, SSF["pool"], SSF["top_k"], gen)
    opt = torch.optim.Adam([pool.keys, pool.gamma_1, pool.beta_1, pool.gamma_2, pool.beta_2], lr=SSF["lr"])
    lossf = nn.BCEWithLogitsLoss()
    for _ in range(SSF["epochs"]):
        for b in batches(len(y), SSF["batch"], gen):
            logit, idx, sim = pool(Z[b])
            loss = lossf(logit, y[b]) + SSF["aux_weight"] * pool.aux_loss(sim, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return pool.eval()


def train_routing(Z, y):
    gen = torch.Generator().manual_seed(SEED_ROUTING)
    r = Routing(ROUTING["dims"], ROUTING["clusters"], ROUTING["beta"], gen)
    opt = torch.optim.Adam(r.parameters(), lr=ROUTING["lr"])
    lossf = nn.BCEWithLogitsLoss()
    for _ in range(ROUTING["epochs"]):
        for b in batches(len(y), ROUTING["batch"], gen):
            r.update_centers(Z[b], ROUTING["times"], ROUTING["train_softmax_temperature"])
            logit, _ = r(Z[b])
            loss = lossf(logit, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return r.eval()


# ----------------------------------------------------------------------------- synthetic rows
def synth_row(rng):
    row = {st.DENSE_INPUT: np.array([st.year_norm(None if rng.random() < 0.1 else int(rng.integers(1920, 1999)))],
                                    dtype=np.float32)}
    for name, inp, _m, vocab, slots in st.FIELDS:
        if slots == 1:
            row[inp] = np.array([rng.integers(0, vocab)], dtype=np.int64)
        else:
            k = int(rng.integers(0, slots + 1))
            ids = np.sort(rng.choice(vocab, size=k, replace=False)).tolist()
            row[inp] = np.array(ids + [vocab] * (slots - k), dtype=np.int64)
    return row


def synth_edge_rows():
    """Rows 0-2: every field's first id; every field's last id with a full genre bag; an empty genre bag."""
    first = {st.DENSE_INPUT: np.array([st.year_norm(1922)], np.float32)}
    last = {st.DENSE_INPUT: np.array([st.year_norm(1998)], np.float32)}
    empty = {st.DENSE_INPUT: np.array([0.0], np.float32)}
    for name, inp, _m, vocab, slots in st.FIELDS:
        first[inp] = np.array([0] + [vocab] * (slots - 1), np.int64)
        last[inp] = np.arange(vocab - slots, vocab, dtype=np.int64) if slots > 1 else np.array([vocab - 1], np.int64)
        empty[inp] = np.array([vocab] * slots, np.int64) if slots > 1 else np.array([vocab // 2], np.int64)
    return [first, last, empty]


def decisions_clear(base, pool, routing, row):
    with torch.no_grad():
        z = base.concat(*tensors({k: v[None] for k, v in row.items()}))
        sim = torch.sort(pool.similarities(z)[0], descending=True).values
        s = torch.sort((z @ routing.centers.T)[0], descending=True).values
    gaps = (float(sim[0] - sim[1]), float(sim[1] - sim[2]), float(s[0] - s[1]))
    return min(gaps) >= MIN_GAP


def make_synthetic(base, pool, routing):
    rng = np.random.default_rng(SEED_SYNTH)
    rows, redrawn = [], 0
    for e, row in enumerate(synth_edge_rows()):
        # keep the ids; move the dense value (release year) until every decision is clear
        for year in [None] + list(range(1920, 1999)):
            if year is not None:
                row[st.DENSE_INPUT] = np.array([st.year_norm(year)], np.float32)
            if decisions_clear(base, pool, routing, row):
                break
        else:
            raise SystemExit(f"edge row {e}: no release year gives clear top-k/argmax decisions")
        rows.append(row)
    while len(rows) < N_SYNTH:
        row = synth_row(rng)
        if decisions_clear(base, pool, routing, row):
            rows.append(row)
        else:
            redrawn += 1
    return {k: np.stack([r[k] for r in rows]) for k in ONNX_INPUTS}, redrawn


# ----------------------------------------------------------------------------- main
def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(WORKSPACE, "tests/fixtures/movielens")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    import onnx
    import onnxruntime
    import peft
    import safetensors
    import sklearn

    versions = {"python_torch": torch.__version__, "peft": peft.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "safetensors": safetensors.__version__,
                "numpy": np.__version__, "scikit-learn": sklearn.__version__}
    print("versions:", versions)
    checks = {}

    s = st.Stream(data_dir())
    tr, rp = s.train(), s.replay()
    Xtr, Xrp = tensors(s.inputs(tr)), tensors(s.inputs(rp))
    ytr = torch.from_numpy(s.label[tr]).unsqueeze(1)
    lab_tr, lab_rp = s.label[tr], s.label[rp]
    g_tr, g_rp = s.group[tr], s.group[rp]
    print(f"stream: {s.n} rows, train {s.n_train}, replay {s.n - s.n_train}, click rate {s.label.mean():.5f}")

    # ---- base
    print("base")
    trained = train_base(Xtr, ytr)
    state = {k: v.detach().contiguous() for k, v in trained.state_dict().items()}
    save_file(state, os.path.join(out, "weights.safetensors"),
              metadata={"fixture": json.dumps({"model": "movielens ctr base", "layout": "nn.Linear weight [out,in]; "
                                               "emb_<field>.weight [vocab,8] (EmbeddingBag sum, no pad row)"},
                                              sort_keys=True)})
    base = CtrModel()
    base.load_state_dict(load_file(os.path.join(out, "weights.safetensors")))
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        Ztr, Zrp = base.concat(*Xtr), base.concat(*Xrp)
        p_tr = torch.sigmoid(base.head(Ztr)).numpy().ravel()
        p_rp = torch.sigmoid(base.head(Zrp)).numpy().ravel()
        key_rp = base.hidden2(Zrp).numpy()
    results = {"base": {"train": metrics.both(p_tr, lab_tr), "replay": metrics.both(p_rp, lab_rp)}}
    print("  ", results["base"])

    onnx_path = os.path.join(out, "model.onnx")
    wrapper = export_onnx(base, onnx_path, Xrp)
    chunk = slice(0, 4096)
    with torch.no_grad():
        wp, wl = wrapper(*[x[chunk] for x in Xrp])
        ref_logit = base(*[x[chunk] for x in Xrp])
    check("base: torch padded (Gather+sum) vs EmbeddingBag form, replay rows 0..4096 logits", wl.numpy(),
          ref_logit.numpy(), 1e-6, checks)
    o_prob, o_logit = run_ort(onnx_path, {k: v[chunk] for k, v in s.inputs(rp).items()})
    check("base: onnxruntime(model.onnx) vs torch, replay rows 0..4096 logits", o_logit, ref_logit.numpy(), TOL_ORT,
          checks)

    # ---- per-group LoRA
    print("lora")
    lora_models, lora_delta = {}, {}
    p_lora_tr, p_lora_rp = np.zeros_like(p_tr), np.zeros_like(p_rp)
    for g, gname in enumerate(st.GROUP_NAMES):
        rows = np.flatnonzero(g_tr == g)
        pm = train_lora(base, [x[rows] for x in Xtr], ytr[rows], g)
        d = os.path.join(out, f"lora_{gname}")
        pm.save_pretrained(d)
        card = os.path.join(d, "README.md")
        if os.path.exists(card):
            os.remove(card)
        lora_models[gname] = pm
        with torch.no_grad():
            for mask, X, dst in ((g_tr == g, Xtr, p_lora_tr), (g_rp == g, Xrp, p_lora_rp)):
                idx = torch.from_numpy(np.flatnonzero(mask))
                dst[mask] = torch.sigmoid(pm(*[x[idx] for x in X])).numpy().ravel()
        rp_rows = g_rp == g
        lora_delta[gname] = {
            "train_rows": int(len(rows)),
            "replay_rows": int(rp_rows.sum()),
            "replay_logloss_base": metrics.logloss(p_rp[rp_rows], lab_rp[rp_rows]),
            "replay_logloss_lora": metrics.logloss(p_lora_rp[rp_rows], lab_rp[rp_rows]),
        }
        print(f"   {gname}: {lora_delta[gname]}")
    results["lora_per_group"] = {"train": metrics.both(p_lora_tr, lab_tr), "replay": metrics.both(p_lora_rp, lab_rp),
                                 "per_group": lora_delta}
    print("  ", {k: v for k, v in results["lora_per_group"].items() if k != "per_group"})

    # ---- FedIns SSF pool
    print("ssf pool")
    pool = train_ssf(base, Ztr, ytr)
    with torch.no_grad():
        lt, it, _ = pool(Ztr)
        lr_, ir, sim_rp = pool(Zrp)
    sim_sorted = torch.sort(sim_rp, dim=1, descending=True).values
    results["ssf_pool"] = {
        "train": metrics.both(torch.sigmoid(lt).numpy(), lab_tr),
        "replay": metrics.both(torch.sigmoid(lr_).numpy(), lab_rp),
        "replay_entry_use": np.bincount(ir.numpy().ravel(), minlength=SSF["pool"]).tolist(),
        "replay_rows_topk_set_gap_below_1e-5": int((sim_sorted[:, 1] - sim_sorted[:, 2] < 1e-5).sum()),
    }
    print("  ", results["ssf_pool"])
    ssf_cfg = {
        "kind": "ssf-pool", "format_version": 1,
        "sites": [{"node": NODE_FC1, "gamma": "gamma_1", "beta": "beta_1"},
                  {"node": NODE_FC2, "gamma": "gamma_2", "beta": "beta_2"}],
        "pool": {"keys": "keys", "query": NODE_CONCAT, "top_k": SSF["top_k"], "query_eps": 1e-12, "base_query": True},
    }
    save_file({k: getattr(pool, k).detach().contiguous() for k in ("keys", "gamma_1", "beta_1", "gamma_2", "beta_2")},
              os.path.join(out, "ssf_pool.safetensors"), metadata=adapter_meta(ssf_cfg))

    # ---- AdaptDHM routing
    print("routing")
    routing = train_routing(Ztr, ytr)
    with torch.no_grad():
        lt, kt = routing(Ztr)
        lr_, kr = routing(Zrp)
        s_sorted = torch.sort(Zrp @ routing.centers.T, dim=1, descending=True).values
    results["routing"] = {
        "replay_rows_argmax_gap_below_1e-5": int((s_sorted[:, 0] - s_sorted[:, 1] < 1e-5).sum()),
        "train": metrics.both(torch.sigmoid(lt).numpy(), lab_tr),
        "replay": metrics.both(torch.sigmoid(lr_).numpy(), lab_rp),
        "train_cluster_use": np.bincount(kt.numpy(), minlength=ROUTING["clusters"]).tolist(),
        "replay_cluster_use": np.bincount(kr.numpy(), minlength=ROUTING["clusters"]).tolist(),
    }
    print("  ", results["routing"])
    routing_cfg = {"kind": "routing", "format_version": 1, "input_node": NODE_CONCAT, "output_node": NODE_FC3,
                   "output_is": "logit", "clusters": ROUTING["clusters"], "dims": ROUTING["dims"], "activation": "relu",
                   "mode": "hard", "use_bias": False}
    rt = {"centers": routing.centers.detach().clone().contiguous()}
    for l, w in enumerate(routing.shared):
        rt[f"shared.{l}.weight"] = w.detach().contiguous()
    for j in range(ROUTING["clusters"]):
        for l, w in enumerate(routing.cluster[j]):
            rt[f"cluster.{j}.{l}.weight"] = w.detach().contiguous()
    save_file(rt, os.path.join(out, "routing.safetensors"), metadata=adapter_meta(routing_cfg))

    # ---- error memory: choose parameters on the validation slice, report on the rest
    print("error memory")
    for L, p, lam, rho in ((4, 6, 0.5, 1.0), (8, 4, 0.75, 0.95)):
        em_check = error_memory.simulate(key_rp[:3000], p_rp[:3000], lab_rp[:3000], L, p, lam, rho, SEED_EM_SIM)
        em_loop = error_memory.simulate_loop(key_rp[:3000], p_rp[:3000], lab_rp[:3000], L, p, lam, rho, SEED_EM_SIM)
        check(f"error memory: vectorised simulation vs row-by-row loop (3000 rows, L={L} p={p} rho={rho})",
              em_check, em_loop, 1e-9, checks)
    import select_error_memory  # the protocol: validation slice, then the report window

    results["error_memory_sim"], best = select_error_memory.selection(key_rp, p_rp, lab_rp)
    v = error_memory.VALIDATION_ROWS
    results["report_window"] = {"rows": [s.n_train + v, s.n], "base": metrics.both(p_rp[v:], lab_rp[v:]),
                                "error_memory_sim": results["error_memory_sim"]["report"]}
    print("  ", {k: results["error_memory_sim"][k] for k in ("params", "validation", "report")})
    em_cfg = select_error_memory.em_config(best)
    save_file({}, os.path.join(out, "error_memory.safetensors"), metadata=adapter_meta(em_cfg))

    # ---- synthetic parity rows and expected outputs
    print("parity sample")
    feeds, redrawn = make_synthetic(base, pool, routing)
    for k in ONNX_INPUTS:
        write_raw(out, f"{k}.{'f32' if k == st.DENSE_INPUT else 'i64'}", feeds[k], "<f4" if k == st.DENSE_INPUT else "<i8")
    X = tensors(feeds)
    with torch.no_grad():
        z = base.concat(*X)
        logit = base.head(z)
        ssf_logit, ssf_idx, _ = pool(z)
        rt_logit, rt_k = routing(z)
        # LoRA row i uses group i mod 7: one PEFT forward per adapter, then picked row by row
        row_groups = np.arange(N_SYNTH) % st.N_GROUPS
        per = {g: lora_models[n](*X) for g, n in enumerate(st.GROUP_NAMES)}
        lora_logit = torch.stack([per[int(g)][i] for i, g in enumerate(row_groups)])
    outs = {"base": logit, "lora": lora_logit, "ssf_pool": ssf_logit, "routing": rt_logit}
    for name, lg in outs.items():
        write_raw(out, f"out_{name}.f32", torch.sigmoid(lg).numpy(), "<f4")
        write_raw(out, f"out_{name}_logits.f32", lg.numpy(), "<f4")
    write_raw(out, "lora_row_groups.i64", row_groups, "<i8")
    write_raw(out, "ssf_topk.i64", ssf_idx.numpy(), "<i8")
    write_raw(out, "routing_cluster.i64", rt_k.numpy(), "<i8")
    o_prob, o_logit = run_ort(onnx_path, feeds)
    check("base: onnxruntime(model.onnx) vs torch, parity rows, logits", o_logit, logit.numpy(), TOL_ORT, checks)
    check("base: onnxruntime(model.onnx) vs torch, parity rows, probs", o_prob, torch.sigmoid(logit).numpy(), TOL_ORT,
          checks)
    # independent recomputations of the adapter references (numpy f64 from the saved files)
    verify_adapters(out, feeds, row_groups, outs, ssf_idx.numpy(), rt_k.numpy(), checks)
    base_prob = torch.sigmoid(logit).numpy()
    sample_stats = {n: {"mean_abs_prob_diff_vs_base": float(np.mean(np.abs(torch.sigmoid(v).numpy() - base_prob)))}
                    for n, v in outs.items() if n != "base"}
    sample_stats["base"] = {"logit_mean": float(logit.mean()), "logit_std": float(logit.std()),
                            "prob_min": float(base_prob.min()), "prob_max": float(base_prob.max())}
    sample_stats["ssf_entries_used"] = sorted(set(ssf_idx.numpy().ravel().tolist()))
    sample_stats["routing_clusters_used"] = np.bincount(rt_k.numpy(), minlength=ROUTING["clusters"]).tolist()
    sample_stats["redrawn_rows"] = redrawn
    print("  ", sample_stats)

    # ---- json documents
    write_json(out, "features.json", st.features_json())
    write_json(out, "features_digest.json", {
        "definition": "over a part's rows in stream order, k = 0-based row within the part, w = k + 1: rows; clicks = "
                      "sum of labels; label_checksum = sum w*label; first/last timestamp; timestamp_checksum = sum "
                      "w*(timestamp - first timestamp); group_sum/group_checksum = sum group / sum w*group; dense_sum "
                      "/ dense_checksum = f64 sum of the f32 dense values / of w*value; id_sums[field] = sum of every "
                      "slot's id including pad ids; id_checksums[field] = sum_k w * sum_s (s+1)*id[k,s]",
        "replay": s.digest(rp), "train": s.digest(tr)})
    write_json(out, "reference_metrics.json", {
        "definition": "logloss: mean -(y ln p + (1-y) ln(1-p)), p clamped to [1e-7, 1-1e-7], f64; auc: Mann-Whitney "
                      "with tied scores averaged; probs are torch f32 sigmoid outputs",
        "train_rows": s.n_train, "replay_rows": s.n - s.n_train, **results})
    info = {
        "generator": "scripts/movielens/train.py", "versions": versions, "onnx_opset": ONNX_OPSET,
        "exporter": "torch.onnx.export(dynamo=False, do_constant_folding=True), padded Gather+ReduceSum bags",
        "data": "MovieLens-100K from the recbole==1.2.1 wheel (not committed)",
        "rows": s.n, "train_rows": s.n_train, "replay_rows": s.n - s.n_train,
        "click_rate": {"all": float(np.mean(s.label, dtype=np.float64)), "train": float(np.mean(lab_tr, dtype=np.float64)),
                       "replay": float(np.mean(lab_rp, dtype=np.float64))},
        "seeds": {"base": SEED_BASE, "shuffle": SEED_SHUFFLE, "lora": f"{SEED_LORA} + group", "ssf": SEED_SSF,
                  "routing": SEED_ROUTING, "synthetic_rows": SEED_SYNTH, "error_memory_sim": SEED_EM_SIM,
                  "error_memory_graft_seed": SEED_EM_GRAFT},
        "hyperparameters": {"base": BASE, "lora": LORA, "ssf_pool": SSF, "routing": ROUTING, "error_memory_grid": EM_GRID,
                            "error_memory_selection": results["error_memory_sim"]["protocol"]},
        "nodes": {"concat": NODE_CONCAT, "fc1": NODE_FC1, "fc2": NODE_FC2, "fc2_relu": NODE_RELU2, "fc3": NODE_FC3,
                  "sigmoid": NODE_SIGMOID},
        "parity_sample": sample_stats,
        "checks": checks,
    }
    manifest(out, info)
    print("done:", out)


def verify_adapters(out, feeds, row_groups, outs, ssf_idx, rt_k, checks):
    """Recompute every adapter reference in numpy f64 from the committed files alone."""
    from safetensors.numpy import load_file as np_load
    from safetensors import safe_open

    w = {k: v.astype(np.float64) for k, v in np_load(os.path.join(out, "weights.safetensors")).items()}
    z = [feeds[st.DENSE_INPUT].astype(np.float64)]
    for name, inp, mod, vocab, _s in st.FIELDS:
        table = np.vstack([w[f"{mod}.weight"], np.zeros((1, st.EMB_DIM))])
        z.append(table[feeds[inp]].sum(axis=1))
    z = np.concatenate(z, axis=1)

    def lin(x, name, g=None, b=None):
        y = x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
        return y if g is None else g * y + b

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    check("verify: numpy f64 base logits", lin(relu(lin(relu(lin(z, "fc1")), "fc2")), "fc3"), outs["base"].numpy(),
          2e-5, checks)

    # LoRA: y = Wx + b + (alpha/r) B A x on fc1..fc3, adapter from adapter_model.safetensors
    lg = np.zeros((N_SYNTH, 1))
    for g, gname in enumerate(st.GROUP_NAMES):
        a = {k: v.astype(np.float64) for k, v in np_load(os.path.join(out, f"lora_{gname}", "adapter_model.safetensors")).items()}
        sc = LORA["lora_alpha"] / LORA["r"]

        def ll(x, name):
            pre = f"base_model.model.{name}"
            return lin(x, name) + sc * (x @ a[f"{pre}.lora_A.weight"].T) @ a[f"{pre}.lora_B.weight"].T

        rows = row_groups == g
        lg[rows] = ll(relu(ll(relu(ll(z[rows], "fc1")), "fc2")), "fc3")
    check("verify: numpy f64 per-row LoRA logits", lg, outs["lora"].numpy(), 2e-5, checks)

    path = os.path.join(out, "ssf_pool.safetensors")
    with safe_open(path, "np") as fh:
        cfg = json.loads(fh.metadata()["graft.adapter"])
    p = {k: v.astype(np.float64) for k, v in np_load(path).items()}
    q = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    kn = p["keys"] / np.maximum(np.linalg.norm(p["keys"], axis=1, keepdims=True), 1e-12)
    sim = q @ kn.T
    idx = np.array([sorted(range(sim.shape[1]), key=lambda j: (-sim[i, j], j))[:cfg["pool"]["top_k"]]
                    for i in range(len(sim))])
    if not np.array_equal(idx, ssf_idx):
        raise SystemExit("verify: numpy top-k differs from torch")
    checks["verify: numpy top-k == torch top-k (order included)"] = {"exact_equal": True}
    g1, b1 = p["gamma_1"][idx].mean(1), p["beta_1"][idx].mean(1)
    g2, b2 = p["gamma_2"][idx].mean(1), p["beta_2"][idx].mean(1)
    check("verify: numpy f64 SSF pool logits", lin(relu(lin(relu(lin(z, "fc1", g1, b1)), "fc2", g2, b2)), "fc3"),
          outs["ssf_pool"].numpy(), 2e-5, checks)

    r = {k: v.astype(np.float64) for k, v in np_load(os.path.join(out, "routing.safetensors")).items()}
    kappa = np.argmax(z @ r["centers"].T, axis=1)
    if not np.array_equal(kappa, rt_k):
        raise SystemExit("verify: numpy routing clusters differ from torch")
    checks["verify: numpy routing clusters == torch"] = {"exact_equal": True}
    lg = np.zeros((N_SYNTH, 1))
    layers = len(ROUTING["dims"]) - 1
    for i in range(N_SYNTH):
        a = z[i:i + 1]
        for l in range(layers):
            a = a @ (r[f"shared.{l}.weight"] * r[f"cluster.{kappa[i]}.{l}.weight"])
            if l < layers - 1:
                a = relu(a)
        lg[i] = a[0]
    check("verify: numpy f64 routing logits", lg, outs["routing"].numpy(), 2e-5, checks)


def manifest(folder, info):
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, folder).replace(os.sep, "/")
            if rel != "manifest.json":
                files[rel] = {"bytes": os.path.getsize(p), "sha256": sha256(p)}
    doc = dict(info)
    doc["files"] = {k: files[k] for k in sorted(files)}
    doc["total_bytes"] = sum(f["bytes"] for f in files.values())
    write_json(folder, "manifest.json", doc)


if __name__ == "__main__":
    main()
