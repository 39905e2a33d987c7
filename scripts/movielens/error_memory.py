"""numpy simulation of the ReLoop2 error memory on the replay (algorithms.md §3.3–3.5).

Pooled LSH estimate, probability space:
  bucket_l(h) = sum_t [R_l[t] · h >= 0] 2^t               (L tables, p hyperplanes, R ~ N(0,1))
  ê(h)        = sum_l S[l, b_l(h)] / sum_l C[l, b_l(h)]    (0 when the denominator is 0)
  ŷ'          = clip(ŷ + λ ê(h), 0, 1)
After each row's prediction its label arrives and (h, e = y − ŷ) is inserted with the BASE ŷ:
S[l,b] += e, C[l,b] += 1 for every table. Before every insertion the whole sketch decays by ρ
(S ← ρS, C ← ρC), which is what a lazily applied per-bucket decay gives when reads apply the
pending decay too. Threshold 0: every error is stored.

Row t sees exactly the inserts of rows < t, so each table's S and C at row t are prefix sums
over the earlier rows that share its bucket, weighted by ρ^(t-1-i); `estimates` vectorises
that in f64 (see its docstring) and `simulate_loop` is the row-by-row reference.
"""
import numpy as np


def projections(L, p, d, seed):
    return np.random.default_rng(seed).standard_normal((L, p, d))


def buckets(keys, R):
    """keys [n,d] -> bucket ids [n,L]."""
    proj = np.einsum("nd,lpd->nlp", keys.astype(np.float64), R)
    bits = (proj >= 0).astype(np.int64)
    return (bits << np.arange(R.shape[1], dtype=np.int64)).sum(axis=2)


def estimates(b, errors, rho, max_chunk=512):
    """Pooled ê for every row given the bucket ids [n,L] and the errors [n] of the earlier rows.

    Rows are processed in chunks starting at s. With the carry K[l,b] = sum_{j<s} rho^(s-1-j) e_j,
    table l holds at row t of the chunk S_t = rho^(t-s) K + sum_{s<=j<t} rho^(t-1-j) e_j. Scaling
    every table by the same rho^-(t-s) leaves the pooled ratio unchanged and gives
    K + sum_{s<=j<t} rho^(s-1-j) e_j: an exclusive prefix sum over the chunk's rows in the same
    bucket, with weights rho^-(j-s). The prefix sums run over the whole chunk and are
    differenced per bucket, so the chunk is kept short enough that the weights span at most
    three decades (no cancellation worth mentioning).
    """
    n, L = b.shape
    chunk = max_chunk if rho == 1.0 else max(1, min(max_chunk, int(np.log(1e3) / -np.log(rho))))
    size = int(b.max()) + 1
    carry_e, carry_w = np.zeros((L, size)), np.zeros((L, size))
    num, den = np.zeros(n), np.zeros(n)
    for s in range(0, n, chunk):
        e = errors[s:s + chunk]
        m = len(e)
        w = rho ** -np.arange(m, dtype=np.float64)
        we = w * e
        for l in range(L):
            bl = b[s:s + m, l]
            order = np.argsort(bl, kind="stable")  # rows grouped by bucket, time order inside
            start = np.r_[0, np.flatnonzero(np.diff(bl[order])) + 1]
            seg = np.repeat(start, np.diff(np.r_[start, m]))
            cs_e, cs_w = np.cumsum(we[order]) - we[order], np.cumsum(w[order]) - w[order]
            rows = s + order
            num[rows] += carry_e[l, bl[order]] + (cs_e - cs_e[seg]) / rho
            den[rows] += carry_w[l, bl[order]] + (cs_w - cs_w[seg]) / rho
            carry_e[l] *= rho ** m
            carry_w[l] *= rho ** m
            np.add.at(carry_e[l], bl, rho ** (m - 1) * we)
            np.add.at(carry_w[l], bl, rho ** (m - 1) * w)
    out = np.zeros(n)
    nz = den > 0
    out[nz] = num[nz] / den[nz]
    return out


def simulate(keys, base_prob, labels, L, p, lam, rho, seed):
    base_prob = base_prob.astype(np.float64)
    R = projections(L, p, keys.shape[1], seed)
    e_hat = estimates(buckets(keys, R), labels.astype(np.float64) - base_prob, rho)
    return np.clip(base_prob + lam * e_hat, 0.0, 1.0)


def search(keys, base_prob, labels, grid, seeds, score):
    """score(q) for every (L, p, lam, rho) in grid and projection seed: {(L, p, lam, rho): [score per seed]}."""
    base_prob = base_prob.astype(np.float64)
    errors = labels.astype(np.float64) - base_prob
    out = {}
    for L in grid["L"]:
        for p in grid["p"]:
            for seed in seeds:
                b = buckets(keys, projections(L, p, keys.shape[1], seed))
                for rho in grid["rho"]:
                    e_hat = estimates(b, errors, rho)
                    for lam in grid["lam"]:
                        out.setdefault((L, p, lam, rho), []).append(score(np.clip(base_prob + lam * e_hat, 0.0, 1.0)))
    return out


def simulate_loop(keys, base_prob, labels, L, p, lam, rho, seed):
    """Row-by-row reference of `simulate` (slow; used once as a cross-check)."""
    R = projections(L, p, keys.shape[1], seed)
    b = buckets(keys, R)
    base_prob, labels = base_prob.astype(np.float64), labels.astype(np.float64)
    S = np.zeros((L, 1 << p))
    C = np.zeros((L, 1 << p))
    out = np.zeros(len(keys))
    t = np.arange(L)
    for i in range(len(keys)):
        num, den = S[t, b[i]].sum(), C[t, b[i]].sum()
        e_hat = num / den if den > 0 else 0.0
        out[i] = min(1.0, max(0.0, base_prob[i] + lam * e_hat))
        S *= rho
        C *= rho
        S[t, b[i]] += labels[i] - base_prob[i]
        C[t, b[i]] += 1.0
    return out


# The selection protocol (shared by train.py and select_error_memory.py). The held-out
# stream is split in time: the first VALIDATION_ROWS rows choose the settings, the rest is
# the report window, on which every variant is reported. The memory starts empty at the
# first held-out row and runs over the whole held-out stream (it learns online from the
# labels of rows already predicted, the validation slice's included); only the choice of
# settings is restricted to the validation slice, so nothing in the report window takes
# part in it.
VALIDATION_ROWS = 5000


def select(keys, base_prob, labels, grid, seeds, logloss, validation_rows=VALIDATION_ROWS):
    """Settings with the lowest mean validation logloss over `seeds`.

    Returns (best (L, p, lam, rho), ranked [((L, p, lam, rho), [validation logloss per seed])]).
    Row t's simulated prediction depends on rows < t only, so simulating just the validation
    slice gives exactly the predictions the full run makes there.
    """
    v = slice(0, validation_rows)
    scores = search(keys[v], base_prob[v], labels[v], grid, seeds, lambda q: logloss(q, labels[v]))
    ranked = sorted(scores.items(), key=lambda kv: (float(np.mean(kv[1])), kv[0]))
    return ranked[0][0], ranked
