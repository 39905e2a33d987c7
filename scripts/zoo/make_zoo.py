#!/usr/bin/env python3
"""Build the graft CTR model zoo test fixtures.

Small, randomly initialised (fixed seeds) versions of standard CTR architectures,
built with the public libraries' own model classes (torch-rechub, FuxiCTR, plain
torch), exported to ONNX (legacy TorchScript exporter and, for some, the dynamo
exporter), checked with onnxruntime, plus a PEFT LoRA adapter per model.

Usage (from the repo root):
    scripts/zoo/.venv/bin/python scripts/zoo/make_zoo.py [--out tests/fixtures/zoo] [--only id1,id2]

See scripts/zoo/README.md.
"""
import argparse
import copy
import importlib.metadata as md
import json
import os
import random
import shutil
import sys
import traceback
import warnings

import numpy as np
import torch
import torch.nn as nn

warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SEED = 20261207
BATCH = 8
BATCH2 = 3
OPSET = 17
TOL = 1e-5


def ver(pkg):
    try:
        return md.version(pkg)
    except Exception:
        return None


def set_seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# --------------------------------------------------------------------------
# input specs
# --------------------------------------------------------------------------
class Inp:
    """One positional ONNX input.

    kind: 'id' -> int64 [B], 'seq' -> int64 [B, L] (0 = padding), 'dense' -> float32 [B, k]
    'dense1' -> float32 [B] (scalar dense feature), 'flat_ids' / 'offsets' for EmbeddingBag.
    """

    def __init__(self, name, kind, vocab=None, seq_len=None, k=None):
        self.name, self.kind, self.vocab, self.seq_len, self.k = name, kind, vocab, seq_len, k

    def shape_per_row(self):
        return {"id": [], "seq": [self.seq_len], "dense": [self.k], "dense1": []}.get(self.kind)

    def manifest(self):
        d = {"name": self.name, "dtype": "float32" if self.kind.startswith("dense") else "int64",
             "shape_per_row": self.shape_per_row()}
        if self.vocab is not None:
            d["vocab"] = self.vocab
        if self.kind == "seq":
            d["padding_id"] = 0
        return d


def make_inputs(inps, batch, rng):
    out = []
    for i in inps:
        if i.kind == "id":
            out.append(rng.integers(1, i.vocab, size=(batch,), dtype=np.int64))
        elif i.kind == "seq":
            a = rng.integers(1, i.vocab, size=(batch, i.seq_len), dtype=np.int64)
            # right padding with 0; row r keeps between 1 and seq_len valid items
            for r in range(batch):
                n = 1 + (r * 3) % i.seq_len
                a[r, n:] = 0
            out.append(a)
        elif i.kind == "dense":
            out.append(rng.standard_normal((batch, i.k)).astype(np.float32))
        elif i.kind == "dense1":
            out.append(rng.standard_normal((batch,)).astype(np.float32))
        else:
            raise ValueError(i.kind)
    return out


# --------------------------------------------------------------------------
# wrapper with an explicit positional signature (needed by torch.export)
# --------------------------------------------------------------------------
def make_wrapper(model, in_names, call):
    """call(model, dict_of_tensors) -> tuple of output tensors."""
    src = "def forward(self, {a}):\n    return self._call(self.model, {{{d}}})\n".format(
        a=", ".join(in_names), d=", ".join(f"'{n}': {n}" for n in in_names))
    ns = {}
    exec(src, ns)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self._call = call
        forward = ns["forward"]

    return Wrapper()


def randomize_bn(model, gen):
    """Give BatchNorm layers non-trivial eval statistics so they are not identities."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def he_init_linears(model, gen):
    """Re-draw nn.Linear weights with He-normal std sqrt(2/fan_in) and small random biases.
    torch's default Linear init shrinks activations layer by layer so deep towers (MMOE/PLE/DIN)
    produce almost constant outputs; this keeps the fixtures' outputs spread out."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.in_features) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


# --------------------------------------------------------------------------
# model builders: each returns dict(model, inputs, outputs, call, lora_targets, ...)
# --------------------------------------------------------------------------
def rechub_feats():
    from torch_rechub.basic.features import SparseFeature, DenseFeature, SequenceFeature
    from torch_rechub.basic.initializers import RandomNormal
    init = RandomNormal(0.0, 0.3)
    return SparseFeature, DenseFeature, SequenceFeature, init


def rechub_mlp_linears(model):
    from torch_rechub.basic.layers import MLP
    names = []
    for pn, pm in model.named_modules():
        if isinstance(pm, MLP):
            for cn, cm in pm.named_modules():
                if isinstance(cm, nn.Linear):
                    names.append(f"{pn}.{cn}" if cn else pn)
    return sorted(set(names))


def single_out(m, x):
    return (m(x),)


def ctr_fields():
    # (name, vocab, emb)
    return [("user_id", 200, 8), ("item_id", 150, 8), ("cate_id", 40, 8), ("city", 20, 8), ("device", 24, 8)]


def b_rechub_deepfm():
    from torch_rechub.models.ranking import DeepFM
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    sp = [SF(n, v, e, initializer=init) for n, v, e in f]
    dense = DF("dense", embed_dim=3)
    m = DeepFM(deep_features=sp + [dense], fm_features=sp, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"})
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("dense", "dense", k=3)]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="fm")


def b_rechub_widedeep():
    from torch_rechub.models.ranking import WideDeep
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    wide = [SF(n, v, e, initializer=init) for n, v, e in f[:2]]
    deep = [SF(n, v, e, initializer=init) for n, v, e in f[2:]] + [DF("dense", embed_dim=3)]
    m = WideDeep(wide_features=wide, deep_features=deep, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"})
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("dense", "dense", k=3)]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="wide_deep")


def b_rechub_dcnv2():
    from torch_rechub.models.ranking import DCNv2
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    feats = [SF(n, v, e, initializer=init) for n, v, e in f] + [DF("dense", embed_dim=3)]
    m = DCNv2(feats, n_cross_layers=2, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"},
              model_structure="parallel", use_low_rank_mixture=True, low_rank=8, num_experts=2)
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("dense", "dense", k=3)]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="cross",
                notes="DCNv2 parallel structure with CrossNetMix (low_rank=8, num_experts=2)")


def b_rechub_dcn():
    from torch_rechub.models.ranking import DCN
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    feats = [SF(n, v, e, initializer=init) for n, v, e in f] + [DF("dense", embed_dim=3)]
    m = DCN(feats, n_cross_layers=2, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"})
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("dense", "dense", k=3)]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="cross")


def _din_like(cls, seq_len=10, **kw):
    SF, DF, QF, init = rechub_feats()
    e = 8
    feats = [SF("user_id", 200, e, initializer=init), SF("city", 20, e, initializer=init)]
    hist = [QF("hist_item_id", 150, e, pooling="concat", shared_with="item_id", padding_idx=0, initializer=init),
            QF("hist_cate_id", 40, e, pooling="concat", shared_with="cate_id", padding_idx=0, initializer=init)]
    tgt = [SF("item_id", 150, e, padding_idx=0, initializer=init), SF("cate_id", 40, e, padding_idx=0, initializer=init)]
    inps = [Inp("user_id", "id", 200), Inp("city", "id", 20), Inp("hist_item_id", "seq", 150, seq_len),
            Inp("hist_cate_id", "seq", 40, seq_len), Inp("item_id", "id", 150), Inp("cate_id", "id", 40)]
    return feats, hist, tgt, inps


def b_rechub_din():
    from torch_rechub.models.ranking import DIN
    feats, hist, tgt, inps = _din_like("DIN")
    m = DIN(feats, hist, tgt, mlp_params={"dims": [32, 16], "dropout": 0.0},
            attention_mlp_params={"dims": [16, 8], "activation": "dice", "use_softmax": False})
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="din",
                notes="history sequences right-padded with id 0; sequence embeddings are shared with the target "
                      "item/cate tables (shared_with) whose padding_idx=0 row is zero, which is how torch-rechub "
                      "DIN masks padding (no explicit mask in ActivationUnit). MLP activation: Dice.")


def b_rechub_bst():
    from torch_rechub.models.ranking import BST
    feats, hist, tgt, inps = _din_like("BST")
    m = BST(feats, hist, tgt, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"},
            nhead=2, dropout=0.0, num_layers=1, max_seq_len=16)
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="transformer",
                notes="nn.TransformerEncoder (1 layer, 2 heads, d_model=16) with src_key_padding_mask from id 0")


def b_rechub_afm():
    from torch_rechub.models.ranking import AFM
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    feats = [SF(n, v, e, initializer=init) for n, v, e in f]
    m = AFM(feats, embed_dim=8, t=16)
    inps = [Inp(n, "id", v) for n, v, _ in f]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="fm",
                lora_targets=["attention_liner", "linear.fc"],
                notes="AFM has no MLP; LoRA targets the attention nn.Linear and the first-order LR nn.Linear. "
                      "Note: torch-rechub AFM softmaxes a [B,1] tensor over dim 1, so attention weights are always 1 "
                      "and the attention_liner LoRA has no effect on the output (library behaviour)")


def b_rechub_fibinet():
    from torch_rechub.models.ranking import FiBiNet
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    feats = [SF(n, v, e, initializer=init) for n, v, e in f]
    m = FiBiNet(feats, mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"}, reduction_ratio=2,
                bilinear_type="field_interaction")
    inps = [Inp(n, "id", v) for n, v, _ in f]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="bilinear")


def b_rechub_autoint():
    from torch_rechub.models.ranking import AutoInt
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    sp = [SF(n, v, e, initializer=init) for n, v, e in f]
    dn = [DF("price"), DF("age")]
    m = AutoInt(sp, dn, num_layers=2, num_heads=2, dropout=0.0,
                mlp_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"})
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("price", "dense1"), Inp("age", "dense1")]
    return dict(model=m, inputs=inps, outputs=["prob"], call=single_out, he_init=True, family="attention",
                notes="dense features are scalar float32 [batch] inputs (AutoInt embeds each with nn.Linear(1, d))")


def b_rechub_dssm():
    from torch_rechub.models.matching import DSSM
    SF, DF, _, init = rechub_feats()
    uf = [SF("user_id", 200, 8, initializer=init), SF("city", 20, 8, initializer=init), SF("device", 24, 8, initializer=init)]
    itf = [SF("item_id", 150, 8, initializer=init), SF("cate_id", 40, 8, initializer=init)]
    m = DSSM(uf, itf, user_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"},
             item_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"}, temperature=1.0)
    inps = [Inp("user_id", "id", 200), Inp("city", "id", 20), Inp("device", "id", 24),
            Inp("item_id", "id", 150), Inp("cate_id", "id", 40)]
    return dict(model=m, inputs=inps, outputs=["score"], call=single_out, he_init=True, family="two_tower",
                notes="scoring mode (model.mode=None): sigmoid(dot(L2norm(user_tower), L2norm(item_tower))); "
                      "towers are MLP [32,16] with BatchNorm+ReLU, output_layer=False")


def _mt_feats():
    SF, DF, _, init = rechub_feats()
    f = ctr_fields()
    feats = [SF(n, v, e, initializer=init) for n, v, e in f] + [DF("dense", embed_dim=3)]
    inps = [Inp(n, "id", v) for n, v, _ in f] + [Inp("dense", "dense", k=3)]
    return feats, inps


def mt_call(n):
    def call(m, x):
        y = m(x)
        return tuple(y[:, i] for i in range(n))
    return call


def b_rechub_mmoe():
    from torch_rechub.models.multi_task import MMOE
    feats, inps = _mt_feats()
    m = MMOE(feats, task_types=["classification", "classification"], n_expert=3,
             expert_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"},
             tower_params_list=[{"dims": [8], "dropout": 0.0}, {"dims": [8], "dropout": 0.0}])
    return dict(model=m, inputs=inps, outputs=["ctr", "cvr"], call=mt_call(2), he_init=True, family="multi_task",
                notes="library returns [B,2] (cat of per-task sigmoid probs); the wrapper returns column i as output i")


def b_rechub_ple():
    from torch_rechub.models.multi_task import PLE
    feats, inps = _mt_feats()
    m = PLE(feats, task_types=["classification", "classification"], n_level=2, n_expert_specific=2, n_expert_shared=1,
            expert_params={"dims": [32, 16], "dropout": 0.0, "activation": "relu"},
            tower_params_list=[{"dims": [8], "dropout": 0.0}, {"dims": [8], "dropout": 0.0}])
    return dict(model=m, inputs=inps, outputs=["ctr", "cvr"], call=mt_call(2), he_init=True, family="multi_task",
                notes="2 CGC levels, 2 task-specific + 1 shared expert; output i = column i of the library's [B,2]")


class BagModel(nn.Module):
    """Plain torch EmbeddingBag(sum, offsets) + MLP."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(100, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids, offsets):
        return torch.sigmoid(self.mlp(self.bag(ids, offsets)).squeeze(1))


def b_torch_embeddingbag():
    return dict(model=BagModel(), inputs=None, outputs=["prob"], family="bag", bag=True,
                lora_targets=["mlp.0", "mlp.2"],
                notes="inputs: ids int64 [nnz] (vocab 100, flattened bags) and offsets int64 [batch] (bag starts, "
                      "offsets[0]=0, last bag runs to nnz); ids axis 0 is dynamic 'nnz', offsets axis 0 is 'batch'")


# id -> (library pkg for version, class name, builder, dynamo?)
MODELS = [
    ("rechub_deepfm", "torch-rechub", "torch_rechub.models.ranking.DeepFM", b_rechub_deepfm, True),
    ("rechub_dcnv2", "torch-rechub", "torch_rechub.models.ranking.DCNv2", b_rechub_dcnv2, True),
    ("rechub_din", "torch-rechub", "torch_rechub.models.ranking.DIN", b_rechub_din, True),
    ("rechub_mmoe", "torch-rechub", "torch_rechub.models.multi_task.MMOE", b_rechub_mmoe, True),
    ("rechub_dssm", "torch-rechub", "torch_rechub.models.matching.DSSM", b_rechub_dssm, True),
    ("rechub_widedeep", "torch-rechub", "torch_rechub.models.ranking.WideDeep", b_rechub_widedeep, True),
    ("rechub_ple", "torch-rechub", "torch_rechub.models.multi_task.PLE", b_rechub_ple, True),
    ("rechub_dcn", "torch-rechub", "torch_rechub.models.ranking.DCN", b_rechub_dcn, True),
    ("rechub_bst", "torch-rechub", "torch_rechub.models.ranking.BST", b_rechub_bst, True),
    ("rechub_afm", "torch-rechub", "torch_rechub.models.ranking.AFM", b_rechub_afm, True),
    ("rechub_fibinet", "torch-rechub", "torch_rechub.models.ranking.FiBiNet", b_rechub_fibinet, True),
    ("rechub_autoint", "torch-rechub", "torch_rechub.models.ranking.AutoInt", b_rechub_autoint, True),
    ("torch_embeddingbag", "torch", "torch.nn.EmbeddingBag", b_torch_embeddingbag, True),
]
EXTERNAL_DATA_MODEL = "rechub_deepfm"

sys.path.insert(0, HERE)
sys.modules.setdefault("make_zoo", sys.modules[__name__])
for _extra in ("fuxictr_zoo", "recbole_zoo"):  # FuxiCTR / RecBole builders (optional)
    try:
        MODELS += __import__(_extra).MODELS
    except Exception as e:  # pragma: no cover
        print(f"{_extra} unavailable:", repr(e))


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def ort_run(path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return names, s.run(None, feeds)


def maxdiff(a_list, b_list):
    return float(max(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) for a, b in zip(a_list, b_list)))


def torch_out(wrapper, arrays):
    with torch.no_grad():
        ys = wrapper(*[torch.from_numpy(a) for a in arrays])
    if isinstance(ys, torch.Tensor):
        ys = (ys,)
    return [y.detach().float().numpy() for y in ys]


def errstr(e, limit=700):
    """Exception text incl. its causes (the dynamo exporter wraps the real reason), ANSI codes removed."""
    import re
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        parts.append(f"{type(e).__name__}: {msg[0] if msg else ''}"[:limit])
        e = e.__cause__ or e.__context__
    return " <- ".join(reversed(parts))[: 3 * limit]


def fsize(p):
    return os.path.getsize(p) if os.path.exists(p) else 0


def build_one(mid, lib, cls, builder, want_dynamo, outdir):
    d = os.path.join(outdir, mid)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    seed = SEED + sum(map(ord, mid))
    set_seed(seed)
    spec = builder()
    model = spec["model"]
    gen = torch.Generator().manual_seed(seed + 1)
    if spec.get("he_init"):
        he_init_linears(model, gen)
    if spec.get("randomize_bn", True):
        randomize_bn(model, gen)
    model.eval()
    out_names = spec["outputs"]
    entry = {"id": mid, "library": lib, "library_version": ver(spec.get("pkg", lib)), "class": cls,
             "family": spec["family"], "seed": seed, "files": {}, "notes": spec.get("notes", "")}
    rng = np.random.default_rng(seed)
    if spec.get("bag"):
        in_names = ["ids", "offsets"]

        def bag_inputs(batch):
            lens = rng.integers(1, 5, size=batch)
            ids = rng.integers(0, 100, size=int(lens.sum()), dtype=np.int64)
            offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
            return [ids, offs]
        x8, x3 = bag_inputs(BATCH), bag_inputs(BATCH2)
        wrapper = model
        dyn_axes = {"ids": {0: "nnz"}, "offsets": {0: "batch"}, out_names[0]: {0: "batch"}}
        entry["inputs"] = [{"name": "ids", "dtype": "int64", "shape_per_row": None, "vocab": 100,
                            "dynamic_dim0": "nnz"},
                           {"name": "offsets", "dtype": "int64", "shape_per_row": []}]
        call = None
    else:
        inps = spec["inputs"]
        in_names = [i.name for i in inps]
        call = spec["call"]
        wrapper = make_wrapper(model, in_names, call)
        x8 = make_inputs(inps, BATCH, rng)
        x3 = make_inputs(inps, BATCH2, rng)
        dyn_axes = {n: {0: "batch"} for n in in_names + out_names}
        entry["inputs"] = [i.manifest() for i in inps]
    wrapper.eval()
    y8 = torch_out(wrapper, x8)
    y3 = torch_out(wrapper, x3)
    assert len(y8) == len(out_names), (len(y8), out_names)
    entry["outputs"] = [{"name": n, "dtype": "float32", "shape_per_row": list(y.shape[1:])} for n, y in zip(out_names, y8)]
    for n, a in zip(in_names, x8):
        np.save(os.path.join(d, f"{n}.npy"), a)
    for n, a in zip(in_names, x3):
        np.save(os.path.join(d, f"b3_{n}.npy"), a)
    for n, a in zip(out_names, y8):
        np.save(os.path.join(d, f"out_{n}.npy"), a.astype(np.float32))
    for n, a in zip(out_names, y3):
        np.save(os.path.join(d, f"b3_out_{n}.npy"), a.astype(np.float32))
    feeds8 = dict(zip(in_names, x8))
    feeds3 = dict(zip(in_names, x3))

    # ---- legacy exporter
    p = os.path.join(d, "model.onnx")
    try:
        torch.onnx.export(wrapper, tuple(torch.from_numpy(a) for a in x8), p, dynamo=False, opset_version=OPSET,
                          do_constant_folding=True, input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn_axes)
        _, o8 = ort_run(p, feeds8)
        _, o3 = ort_run(p, feeds3)
        entry["files"]["onnx"] = "model.onnx"
        entry["ort_max_abs_diff"] = maxdiff(y8, o8)
        entry["ort_max_abs_diff_b3"] = maxdiff(y3, o3)
        entry["opset"] = OPSET
        if max(entry["ort_max_abs_diff"], entry["ort_max_abs_diff_b3"]) > TOL:
            entry["notes"] += f" WARNING: legacy ORT diff above {TOL}."
    except Exception as e:
        entry["files"]["onnx"] = None
        entry["legacy_error"] = errstr(e)
        traceback.print_exc()
        if os.path.exists(p):
            os.remove(p)

    # ---- dynamo exporter
    if want_dynamo:
        pd = os.path.join(d, "model.dynamo.onnx")
        try:
            B = torch.export.Dim("batch", min=1, max=4096)
            if spec.get("bag"):
                dyn = ({0: torch.export.Dim("nnz", min=1, max=1 << 20)}, {0: B})
            else:
                dyn = tuple({0: B} for _ in in_names)
            prog = torch.onnx.export(wrapper, tuple(torch.from_numpy(a) for a in x8), None, dynamo=True,
                                     input_names=in_names, output_names=out_names, dynamic_shapes=dyn,
                                     optimize=True, verbose=False)
            ext = mid == EXTERNAL_DATA_MODEL
            prog.save(pd, external_data=ext)
            if ext:
                # torch writes <file>.data next to the model with a relative location
                import onnx
                mproto = onnx.load(pd, load_external_data=False)
                locs = sorted({kv.value for t in mproto.graph.initializer for kv in t.external_data if kv.key == "location"})
                entry["files"]["dynamo_external_data"] = locs[0] if len(locs) == 1 else locs
            _, o8 = ort_run(pd, feeds8)
            _, o3 = ort_run(pd, feeds3)
            entry["files"]["dynamo_onnx"] = "model.dynamo.onnx"
            entry["dynamo_ort_max_abs_diff"] = maxdiff(y8, o8)
            entry["dynamo_ort_max_abs_diff_b3"] = maxdiff(y3, o3)
            import onnx
            mp = onnx.load(pd, load_external_data=False)
            entry["dynamo_opset"] = [o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")][0]
        except Exception as e:
            entry["dynamo_error"] = errstr(e)
            traceback.print_exc()
            for f in os.listdir(d):
                if f.startswith("model.dynamo"):
                    os.remove(os.path.join(d, f))

    # ---- LoRA
    entry["lora"] = None
    try:
        targets = spec.get("lora_targets") or spec.get("lora_fn", rechub_mlp_linears)(model)
        if not targets:
            raise RuntimeError("no nn.Linear MLP layers")
        entry["lora"] = do_lora(mid, builder, spec, seed, targets, wrapper, model, in_names, out_names, x8, d, call)
        entry["lora"]["onnx_base_weights"] = {
            k: onnx_weight_match(os.path.join(d, entry["files"][k]), model, targets, "" if spec.get("bag") else "model.")
            for k in ("onnx", "dynamo_onnx") if entry["files"].get(k)}
    except Exception as e:
        entry["lora_error"] = errstr(e)
        traceback.print_exc()
        if os.path.exists(os.path.join(d, "lora")):
            shutil.rmtree(os.path.join(d, "lora"))
    entry["size_bytes"] = sum(fsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    return entry


def onnx_weight_match(path, model, targets, prefix):
    """For each LoRA target, where its base weight lives in the ONNX file: 'exact' (initializer
    '<prefix><target>.weight' equals the torch weight), 'transposed', 'changed' (same name, other values,
    e.g. BatchNorm folded in by the exporter's optimiser), or 'missing'."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path, load_external_data=True)
    inits = {t.name: t for t in m.graph.initializer}
    mods = dict(model.named_modules())
    res = {}
    for t in targets:
        w = mods[t].weight.detach().numpy()
        name = f"{prefix}{t}.weight"
        if name not in inits:
            res[t] = {"initializer": None, "match": "missing"}
            continue
        a = numpy_helper.to_array(inits[name])
        if a.shape == w.shape and np.allclose(a, w, atol=0, rtol=0):
            mt = "exact"
        elif a.shape == w.T.shape and np.allclose(a, w.T, atol=0, rtol=0):
            mt = "transposed"
        else:
            mt = "changed"
        res[t] = {"initializer": name, "match": mt}
    return res


def do_lora(mid, builder, spec, seed, targets, wrapper, model, in_names, out_names, x8, d, call):
    import peft
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, lora_dropout=0.0)
    base = copy.deepcopy(model)
    torch.manual_seed(seed + 2)
    pm = peft.get_peft_model(base, cfg)
    pm.eval()
    if spec.get("bag"):
        lw = pm
    else:
        lw = make_wrapper(pm, in_names, call)
    ylora = torch_out(lw, x8)
    ldir = os.path.join(d, "lora")
    pm.save_pretrained(ldir)
    if os.path.exists(os.path.join(ldir, "README.md")):  # auto-generated model card, not needed
        os.remove(os.path.join(ldir, "README.md"))
    cfgp = os.path.join(ldir, "adapter_config.json")  # PEFT writes target_modules from a set: sort it
    acfg = json.load(open(cfgp))
    if isinstance(acfg.get("target_modules"), list):
        acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(cfgp, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    for n, a in zip(out_names, ylora):
        np.save(os.path.join(d, f"out_lora_{n}.npy"), a.astype(np.float32))
    base_out = [np.load(os.path.join(d, f"out_{n}.npy")) for n in out_names]
    # reload check: fresh base model with identical weights + PeftModel.from_pretrained
    base2 = copy.deepcopy(model)
    pm2 = peft.PeftModel.from_pretrained(base2, ldir)
    pm2.eval()
    lw2 = pm2 if spec.get("bag") else make_wrapper(pm2, in_names, call)
    yre = torch_out(lw2, x8)
    # merged check
    merged = pm2.merge_and_unload()
    merged.eval()
    lw3 = merged if spec.get("bag") else make_wrapper(merged, in_names, call)
    ymerge = torch_out(lw3, x8)
    # ORT check of the LoRA result: export the merged model (legacy exporter, temp file, not kept)
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        tp = os.path.join(td, "merged.onnx")
        if spec.get("bag"):
            dyn = {"ids": {0: "nnz"}, "offsets": {0: "batch"}, out_names[0]: {0: "batch"}}
        else:
            dyn = {n: {0: "batch"} for n in in_names + out_names}
        torch.onnx.export(lw3, tuple(torch.from_numpy(a) for a in x8), tp, dynamo=False, opset_version=OPSET,
                          do_constant_folding=True, input_names=in_names, output_names=out_names, dynamic_axes=dyn)
        _, ym_ort = ort_run(tp, dict(zip(in_names, x8)))
    lora_keys = []
    from safetensors import safe_open
    with safe_open(os.path.join(ldir, "adapter_model.safetensors"), "pt") as f:
        lora_keys = sorted(f.keys())
    return {"dir": "lora", "targets": list(targets), "r": 4, "lora_alpha": 8, "scaling": 2.0,
            "safetensors_keys": lora_keys,
            "outputs": [f"out_lora_{n}.npy" for n in out_names],
            "ort_or_peft_max_abs_diff": maxdiff(ylora, ym_ort),
            "ort_or_peft_check": "out_lora vs onnxruntime on a legacy export of PeftModel.merge_and_unload()",
            "peft_reload_max_abs_diff": maxdiff(ylora, yre),
            "peft_merged_max_abs_diff": maxdiff(ylora, ymerge),
            "lora_vs_base_max_abs_diff": maxdiff(ylora, base_out),
            "key_convention": "safetensors key 'base_model.model.<target>.lora_A.weight' [r,in] / "
                              "'.lora_B.weight' [out,r]; delta W = scaling * B @ A applied to base weight "
                              "'<target>.weight' (the ONNX initializer name is 'model.<target>.weight' when the "
                              "exporter keeps it; the wrapper adds the 'model.' prefix)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "zoo"))
    ap.add_argument("--only", default="")
    ap.add_argument("--verify", action="store_true",
                    help="only re-check the fixtures on disk: every ONNX file vs the saved outputs (8 and 3 rows)")
    a = ap.parse_args()
    if a.verify:
        sys.exit(verify(a.out))
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    only = set(x for x in a.only.split(",") if x)
    mpath = os.path.join(a.out, "manifest.json")
    old = {}
    if only and os.path.exists(mpath):
        old = {e["id"]: e for e in json.load(open(mpath))["models"]}
    entries = dict(old)
    failed = {}
    for mid, lib, cls, builder, dyn in MODELS:
        if only and mid not in only:
            continue
        print(f"==== {mid}", flush=True)
        try:
            e = build_one(mid, lib, cls, builder, dyn, a.out)
            if not e["files"].get("onnx"):
                failed[mid] = e.get("legacy_error")
            entries[mid] = e
            print(json.dumps({k: e.get(k) for k in ("ort_max_abs_diff", "dynamo_ort_max_abs_diff", "dynamo_error", "lora_error")}))
        except Exception as ex:
            traceback.print_exc()
            failed[mid] = errstr(ex)
            entries[mid] = {"id": mid, "library": lib, "class": cls, "build_error": failed[mid], "files": {}}
            shutil.rmtree(os.path.join(a.out, mid), ignore_errors=True)
    order = [m[0] for m in MODELS]
    models = sorted(entries.values(), key=lambda e: order.index(e["id"]) if e["id"] in order else 999)
    man = {
        "generator": "scripts/zoo/make_zoo.py",
        "base_seed": SEED, "seed_rule": "per model: base_seed + sum(ord(c) for c in id); BN stats use seed+1, LoRA init seed+2",
        "batch": BATCH, "batch2": BATCH2, "tolerance": TOL,
        "conventions": {
            "inputs": "<input>.npy (8 rows), b3_<input>.npy (3 rows); ids int64 within [1, vocab), "
                      "sequence padding id 0 (right padded); dense float32",
            "outputs": "out_<output>.npy / b3_out_<output>.npy float32 from torch; out_lora_<output>.npy from "
                       "the PEFT-wrapped model on the 8-row inputs",
            "batchnorm": "BatchNorm running stats/affine params are randomised (seeded) so eval BN is not identity",
            "embeddings": "torch-rechub features use the library's RandomNormal(0, 0.3) initializer",
        },
        "tools": {p: ver(p) for p in ["torch", "onnx", "onnxruntime", "onnxscript", "peft", "torch-rechub",
                                       "fuxictr", "numpy", "safetensors"]},
        "python": sys.version.split()[0],
        "skipped": {"torchrec": "torchrec 1.9.2 does not import with torch 2.15.0: fbgemm-gpu 1.9.0 needs "
                                "libnvidia-ml.so.1, fbgemm-gpu-cpu 1.9.0 is ABI-incompatible (undefined symbol "
                                "c10::report_overflow); see scripts/zoo/README.md"},
        "models": models,
    }
    with open(mpath, "w") as f:
        json.dump(man, f, indent=1)
    write_readme(a.out, man)
    print("FAILED:", json.dumps(failed, indent=1))


def verify(out):
    man = json.load(open(os.path.join(out, "manifest.json")))
    bad = 0
    for e in man["models"]:
        d = os.path.join(out, e["id"])
        for key in ("onnx", "dynamo_onnx"):
            f = e["files"].get(key)
            if not f:
                continue
            for pre in ("", "b3_"):
                feeds = {i["name"]: np.load(os.path.join(d, f"{pre}{i['name']}.npy")) for i in e["inputs"]}
                names, outs = ort_run(os.path.join(d, f), feeds)
                ref = [np.load(os.path.join(d, f"{pre}out_{n}.npy")) for n in names]
                diff = maxdiff(ref, outs)
                ok = diff <= TOL
                bad += not ok
                print(f"{'ok ' if ok else 'BAD'} {e['id']:22s} {f:18s} {pre or 'b8_':4s} max_abs_diff={diff:.2e}")
    print("verify:", "all ok" if not bad else f"{bad} failures")
    return 1 if bad else 0


def write_readme(out, man):
    def kb(n):
        return f"{n / 1024:.0f} KB"
    rows = []
    total = 0
    for e in man["models"]:
        sz = e.get("size_bytes", 0)
        total += sz
        files = [k for k, v in e.get("files", {}).items() if v]
        if e.get("lora"):
            files.append("lora")
        fails = []
        for k in ("build_error", "legacy_error", "dynamo_error", "lora_error"):
            if e.get(k):
                fails.append(f"{k.split('_')[0]}: {e[k].splitlines()[0][:120]}")
        d1 = e.get("ort_max_abs_diff")
        d2 = e.get("dynamo_ort_max_abs_diff")
        diffs = ("-" if d1 is None else f"{d1:.1e}") + (" / " + f"{d2:.1e}" if d2 is not None else "")
        rows.append(f"| {e['id']} | {e['library']} {e.get('library_version') or ''} | `{e['class'].split('.')[-1]}` | "
                    f"{e.get('family', '')} | {', '.join(files)} | {kb(sz)} | {diffs} | {'; '.join(fails) or '-'} |")
    txt = f"""# CTR model zoo fixtures

Generated by `scripts/zoo/make_zoo.py` (see `scripts/zoo/README.md`); do not edit by hand.
`manifest.json` is the machine-readable description (inputs, vocabularies, outputs, diffs, LoRA targets).

Per model directory: `model.onnx` (legacy exporter, opset {OPSET}, dynamic batch), optionally
`model.dynamo.onnx` (+ `.data` external weights), `<input>.npy` (8 rows), `b3_<input>.npy` (3 rows),
`out_<o>.npy`, `b3_out_<o>.npy`, `lora/` (PEFT adapter) and `out_lora_<o>.npy`.

ORT diff column: max |torch - onnxruntime| for legacy / dynamo export (8-row batch).
Only `rechub_deepfm` stores its dynamo weights as external data (`model.dynamo.onnx.data`).
FuxiCTR classes are the upstream `model_zoo` classes (the PyPI wheel does not ship them); regenerating
them needs `FUXICTR_MODEL_ZOO` (see scripts/zoo/README.md). TorchRec was skipped: {man['skipped']['torchrec']}

| model | library | class | family | files | size | ORT diff | failures |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"\n\nTotal: {total / 1024 / 1024:.2f} MB.\n"
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(txt)


if __name__ == "__main__":
    main()
