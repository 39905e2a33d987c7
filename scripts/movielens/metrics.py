"""Logloss and AUC exactly as tests/src/movielens.rs computes them (f64 accumulation)."""
import numpy as np

LOGLOSS_EPS = 1e-7


def logloss(prob, label):
    """mean(-(y ln p + (1-y) ln(1-p))) with p clamped to [1e-7, 1 - 1e-7], in f64."""
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    y = np.asarray(label, dtype=np.float64).ravel()
    return float(np.mean(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))))


def auc(prob, label):
    """ROC AUC via the Mann-Whitney U statistic with tied scores given their average rank."""
    s = np.asarray(prob, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel() > 0.5
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def both(prob, label):
    return {"logloss": logloss(prob, label), "auc": auc(prob, label)}
