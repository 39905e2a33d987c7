"""FuxiCTR builders for make_zoo.py.

The model classes are FuxiCTR's own `model_zoo` classes, which the PyPI wheel does not
ship: point FUXICTR_MODEL_ZOO at the `model_zoo` folder of a FuxiCTR checkout (upstream
commit 0245987f, release 2.3.10). They are not copied into this repository. Everything
else (FeatureMap, BaseModel, layers) comes from the pinned `fuxictr` wheel.
"""
import logging
import os
import sys
import tempfile
from collections import OrderedDict

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
_ZOO = os.environ.get("FUXICTR_MODEL_ZOO")
if not _ZOO or not os.path.isdir(_ZOO):
    raise ImportError("FUXICTR_MODEL_ZOO is not set to FuxiCTR's model_zoo folder: FuxiCTR models skipped")
# The builders import `fuxictr_model_zoo.<Model>.src`.
_PARENT = os.path.join(tempfile.gettempdir(), "graft_fuxictr_zoo")
os.makedirs(_PARENT, exist_ok=True)
if not os.path.exists(os.path.join(_PARENT, "fuxictr_model_zoo")):
    os.symlink(os.path.abspath(_ZOO), os.path.join(_PARENT, "fuxictr_model_zoo"))
sys.path.insert(0, _PARENT)
logging.disable(logging.CRITICAL)

import make_zoo as mz  # noqa: E402  (Inp, single_out)

EMB = 8
FIELDS = [("user_id", 200, "user"), ("item_id", 150, "item"), ("cate_id", 40, "item"),
          ("city", 20, "user"), ("device", 24, "context")]
COMMON = dict(gpu=-1, verbose=0, model_root=os.path.join(tempfile.gettempdir(), "fuxictr_zoo"),
              metrics=["AUC"], optimizer="adam", loss="binary_crossentropy", task="binary_classification",
              embedding_regularizer=None, net_regularizer=None)


def feature_map(with_numeric=True, with_seq=False, seq_len=10):
    from fuxictr.features import FeatureMap
    fm = FeatureMap("zoo", tempfile.gettempdir())
    feats = OrderedDict()
    for n, v, src in FIELDS:
        feats[n] = {"source": src, "type": "categorical", "vocab_size": v, "padding_idx": 0}
    inps = [mz.Inp(n, "id", v) for n, v, _ in FIELDS]
    if with_numeric:
        for n in ("price", "age"):
            feats[n] = {"source": "item" if n == "price" else "user", "type": "numeric"}
            inps.append(mz.Inp(n, "dense1"))
    if with_seq:
        feats["click_history"] = {"source": "user", "type": "sequence", "vocab_size": 150, "max_len": seq_len,
                                  "padding_idx": 0, "share_embedding": "item_id", "feature_encoder": None}
        feats["cate_history"] = {"source": "user", "type": "sequence", "vocab_size": 40, "max_len": seq_len,
                                 "padding_idx": 0, "share_embedding": "cate_id", "feature_encoder": None}
        inps += [mz.Inp("click_history", "seq", 150, seq_len), mz.Inp("cate_history", "seq", 40, seq_len)]
    fm.features = feats
    fm.labels = ["label"]
    fm.default_emb_dim = EMB
    fm.num_fields = fm.get_num_fields()
    fm.set_column_index()
    return fm, inps


def reinit_embeddings(model, std=0.3):
    """FuxiCTR's default embedding init is N(0, 1e-4) (outputs would be ~constant);
    re-draw embedding tables with N(0, std), keeping padding rows zero."""
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            with torch.no_grad():
                nn.init.normal_(m.weight, 0.0, std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()


def fux_call(m, x):
    return (m(x)["y_pred"],)


def mlp_block_linears(model):
    from fuxictr.pytorch.layers import MLP_Block
    names = []
    for pn, pm in model.named_modules():
        if isinstance(pm, MLP_Block):
            for cn, cm in pm.named_modules():
                if isinstance(cm, nn.Linear):
                    names.append(f"{pn}.{cn}" if cn else pn)
    return sorted(set(names))


def _mk(cls_name, family, notes="", fm_kw=None, lora_targets=None, emb_std=0.3, randomize_bn=True, **kw):
    def builder():
        import importlib
        mod = importlib.import_module(f"fuxictr_model_zoo.{cls_name}")
        cls = getattr(mod, cls_name)
        fm, inps = feature_map(**(fm_kw or {}))
        params = dict(COMMON)
        params.update(embedding_dim=EMB, model_id=cls_name)
        params.update(kw)
        m = cls(fm, **params)
        reinit_embeddings(m, emb_std)
        d = dict(model=m, inputs=inps, outputs=["prob"], call=fux_call, family=family, pkg="fuxictr",
                 notes=("FuxiCTR model_zoo class (upstream model_zoo @0245987, fuxictr 2.3.10, via FUXICTR_MODEL_ZOO) "
                        "on a programmatic FeatureMap; forward returns {'y_pred': sigmoid [B,1]}; "
                        "embeddings re-drawn N(0,%g). " % emb_std + notes).strip(),
                 randomize_bn=randomize_bn,
                 lora_fn=mlp_block_linears)
        if lora_targets:
            d["lora_targets"] = lora_targets
        return d
    return builder


MLP = dict(dnn_hidden_units=[32, 16], batch_norm=True, net_dropout=0)
MODELS = [
    ("fuxictr_autoint", "fuxictr", "fuxictr_model_zoo.AutoInt.AutoInt",
     _mk("AutoInt", "attention", attention_layers=2, num_heads=2, attention_dim=8, use_residual=True,
         use_scale=True, layer_norm=False, use_wide=True, **MLP), True),
    ("fuxictr_xdeepfm", "fuxictr", "fuxictr_model_zoo.xDeepFM.xDeepFM",
     _mk("xDeepFM", "cross", cin_hidden_units=[8, 8], **MLP), True),
    ("fuxictr_dcnv2", "fuxictr", "fuxictr_model_zoo.DCNv2.DCNv2",
     _mk("DCNv2", "cross", model_structure="parallel", use_low_rank_mixture=False, num_cross_layers=2,
         parallel_dnn_hidden_units=[32, 16], batch_norm=True, net_dropout=0), True),
    ("fuxictr_fibinet", "fuxictr", "fuxictr_model_zoo.FiBiNET.FiBiNET",
     _mk("FiBiNET", "bilinear", hidden_units=[32, 16], reduction_ratio=2, bilinear_type="field_interaction",
         batch_norm=True, net_dropout=0), True),
    ("fuxictr_pnn", "fuxictr", "fuxictr_model_zoo.PNN.PNN",
     _mk("PNN", "product", hidden_units=[32, 16], product_type="inner", batch_norm=True, net_dropout=0), True),
    ("fuxictr_nfm", "fuxictr", "fuxictr_model_zoo.NFM.NFM",
     _mk("NFM", "fm", hidden_units=[32, 16], batch_norm=True, net_dropout=0, embedding_dropout=0), True),
    ("fuxictr_afn", "fuxictr", "fuxictr_model_zoo.AFN.AFN",
     _mk("AFN", "log_transform", ensemble_dnn=True, dnn_hidden_units=[32, 16], afn_hidden_units=[32, 16],
         logarithmic_neurons=4, batch_norm=True, emb_std=1.0, randomize_bn=False,
         notes="AFN takes log(max(|emb|,1e-5)) then exp; BatchNorm stats left at defaults (mean 0, var 1) "
               "because randomised stats saturate the exp path"), True),
    ("fuxictr_ccpm", "fuxictr", "fuxictr_model_zoo.CCPM.CCPM",
     _mk("CCPM", "conv", channels=[4, 2], kernel_heights=[3, 2], activation="Tanh",
         lora_targets=["fc"], notes="no MLP: LoRA targets the final nn.Linear 'fc'"), True),
    ("fuxictr_din", "fuxictr", "fuxictr_model_zoo.DIN.DIN",
     _mk("DIN", "din", fm_kw=dict(with_numeric=False, with_seq=True), dnn_hidden_units=[32, 16],
         attention_hidden_units=[16], attention_hidden_activations="Dice", din_use_softmax=False,
         din_target_field=[("item_id", "cate_id")], din_sequence_field=[("click_history", "cate_history")],
         batch_norm=True, net_dropout=0,
         notes="history right-padded with 0; DIN_Attention masks with (click_history != 0)"), True),
]
