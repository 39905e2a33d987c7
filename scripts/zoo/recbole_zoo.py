"""RecBole context-aware builders for make_zoo.py.

RecBole models take (config, dataset). No dataset is downloaded: a tiny duck-typed dataset
object provides the field metadata the ContextRecommender constructor reads
(fields(source=...), field2type, num(field)); config is a plain dict.
"""
import torch.nn as nn

import make_zoo as mz

FIELDS = [("user_id", 200, "USER_ID"), ("item_id", 150, "ITEM_ID"), ("cate_id", 40, "ITEM"),
          ("city", 20, "USER"), ("device", 24, "INTERACTION")]


class FakeDataset:
    def __init__(self):
        from recbole.utils import FeatureSource, FeatureType
        self.field2type = {n: FeatureType.TOKEN for n, _, _ in FIELDS}
        self.field2type["label"] = FeatureType.FLOAT
        self._src = {n: getattr(FeatureSource, s) for n, _, s in FIELDS}
        self._src["label"] = FeatureSource.INTERACTION
        self._num = {n: v for n, v, _ in FIELDS}

    def fields(self, ftype=None, source=None):
        return [n for n in list(self._num) + ["label"] if source is None or self._src[n] in source]

    def num(self, field):
        return self._num[field]


def config(**kw):
    c = {"LABEL_FIELD": "label", "embedding_size": 8, "device": "cpu", "double_tower": False,
         "numerical_features": [], "mlp_hidden_size": [32, 16], "dropout_prob": 0.0, "reg_weight": 0.0}
    c.update(kw)
    return c


def predict_call(m, x):
    return (m.predict(x),)


def mlp_linears(model):
    from recbole.model.layers import MLPLayers
    names = []
    for pn, pm in model.named_modules():
        if isinstance(pm, MLPLayers):
            for cn, cm in pm.named_modules():
                if isinstance(cm, nn.Linear):
                    names.append(f"{pn}.{cn}")
    return sorted(set(names))


def _mk(cls_name, family, notes="", **kw):
    def builder():
        import recbole.model.context_aware_recommender as car
        m = getattr(car, cls_name)(config(**kw), FakeDataset())
        inps = [mz.Inp(n, "id", v) for n, v, _ in FIELDS]
        return dict(model=m, inputs=inps, outputs=["prob"], call=predict_call, family=family, pkg="recbole",
                    lora_fn=mlp_linears,
                    notes=("RecBole context-aware model built from a dict config and a duck-typed dataset "
                           "(token fields only); wrapper calls model.predict(interaction_dict) = sigmoid(logit). "
                           "Init is the model's own (xavier_normal). " + notes).strip())
    return builder


MODELS = [
    ("recbole_deepfm", "recbole", "recbole.model.context_aware_recommender.DeepFM", _mk("DeepFM", "fm"), True),
    ("recbole_autoint", "recbole", "recbole.model.context_aware_recommender.AutoInt",
     _mk("AutoInt", "attention", attention_size=8, n_layers=2, num_heads=2, dropout_probs=[0.0, 0.0, 0.0],
         has_residual=True), True),
    ("recbole_xdeepfm", "recbole", "recbole.model.context_aware_recommender.xDeepFM",
     _mk("xDeepFM", "cross", cin_layer_size=[8, 8], direct=False), True),
]
