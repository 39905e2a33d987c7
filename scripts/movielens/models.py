"""Torch modules: the base CTR model, its ONNX export form, the FedIns SSF pool and AdaptDHM routing.

The base is trained with `nn.EmbeddingBag` (indices + offsets, the CTR convention) and exported
in the padded form the graft importer reads (Gather over a table with an extra all-zero pad
row, then ReduceSum), exactly like shared/fixtures/gen/gen_dlrm.py. The adapters run on top of
the frozen base and reuse its modules, so every reference output below is computed from the
very tensors that are committed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from stream import CONCAT_WIDTH, DENSE_INPUT, EMB_DIM, FIELDS

HIDDEN = (64, 32)
ONNX_INPUTS = [DENSE_INPUT] + [f[1] for f in FIELDS]
ONNX_OUTPUTS = ["prob", "logit"]


def bag(emb: nn.EmbeddingBag, ids: torch.Tensor, pad: int) -> torch.Tensor:
    """EmbeddingBag(sum) of padded ids [N,S]: the non-pad ids of each row form its bag."""
    mask = ids != pad
    counts = mask.sum(dim=1)
    offsets = torch.cumsum(counts, 0) - counts
    return emb(ids[mask], offsets)


class CtrModel(nn.Module):
    """forward(dense [N,1], ids_<field> [N,slots] ...) -> logit [N,1];  concat(...) -> z [N,57]."""

    def __init__(self):
        super().__init__()
        for name, _inp, mod, vocab, _slots in FIELDS:
            setattr(self, mod, nn.EmbeddingBag(vocab, EMB_DIM, mode="sum"))
        self.fc1 = nn.Linear(CONCAT_WIDTH, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
        self.fc3 = nn.Linear(HIDDEN[1], 1)

    def concat(self, dense, *ids):
        embs = [bag(getattr(self, mod), x, vocab) for (_n, _i, mod, vocab, _s), x in zip(FIELDS, ids)]
        return torch.cat([dense] + embs, dim=1)

    def head(self, z):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(z)))))

    def hidden2(self, z):
        """The ReLU output of fc2 (the error memory's key)."""
        return torch.relu(self.fc2(torch.relu(self.fc1(z))))

    def forward(self, dense, *ids):
        return self.head(self.concat(dense, *ids))


class CtrPadded(nn.Module):
    """Export form: forward(dense, ids...) -> (prob, logit) with Gather + ReduceSum bags.

    Tables get one extra all-zero row at index vocab (the pad id); the linears are the source
    model's own modules, so initializer names match the state dict.
    """

    def __init__(self, src: CtrModel):
        super().__init__()
        for _name, _inp, mod, vocab, _slots in FIELDS:
            table = getattr(src, mod).weight.detach()
            e = nn.Embedding(vocab + 1, EMB_DIM, padding_idx=vocab)
            with torch.no_grad():
                e.weight.copy_(torch.cat([table, torch.zeros(1, EMB_DIM)], dim=0))
            setattr(self, mod, e)
        self.fc1, self.fc2, self.fc3 = src.fc1, src.fc2, src.fc3

    def forward(self, dense, *ids):
        embs = [getattr(self, mod)(x).sum(dim=1) for (_n, _i, mod, _v, _s), x in zip(FIELDS, ids)]
        z = torch.cat([dense] + embs, dim=1)
        h = torch.relu(self.fc1(z))
        h = torch.relu(self.fc2(h))
        logit = self.fc3(h)
        return torch.sigmoid(logit), logit


def topk_rows(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row top-k indices, descending; equal values -> lower index first (stable sort)."""
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


class SsfPool(nn.Module):
    """FedIns SSF pool on the frozen base: P entries of (gamma, beta) for the fc1 and fc2 outputs.

    Per row: q = base concat z; sim = cos(q, keys); I = top-k; gamma/beta = uniform mean over I;
    h1 = relu(g1 * fc1(z) + b1); h2 = relu(g2 * fc2(h1) + b2); logit = fc3(h2).
    """

    def __init__(self, base: CtrModel, pool: int, top_k: int, gen: torch.Generator):
        super().__init__()
        self.base, self.top_k = base, top_k
        c1, c2 = HIDDEN
        self.keys = nn.Parameter(torch.nn.init.trunc_normal_(torch.empty(pool, CONCAT_WIDTH), std=0.02, a=-0.04,
                                                             b=0.04, generator=gen))
        self.gamma_1 = nn.Parameter(1 + 0.02 * torch.randn(pool, c1, generator=gen))
        self.beta_1 = nn.Parameter(0.02 * torch.randn(pool, c1, generator=gen))
        self.gamma_2 = nn.Parameter(1 + 0.02 * torch.randn(pool, c2, generator=gen))
        self.beta_2 = nn.Parameter(0.02 * torch.randn(pool, c2, generator=gen))

    def similarities(self, z):
        return F.normalize(z, p=2, dim=1, eps=1e-12) @ F.normalize(self.keys, p=2, dim=1, eps=1e-12).T

    def forward(self, z):
        """z: base concat [N,D] (no grad needed). Returns (logit [N,1], top-k [N,k], sims [N,P])."""
        sim = self.similarities(z)
        idx = topk_rows(sim.detach(), self.top_k)
        g1, b1 = self.gamma_1[idx].mean(1), self.beta_1[idx].mean(1)
        g2, b2 = self.gamma_2[idx].mean(1), self.beta_2[idx].mean(1)
        b = self.base
        h1 = torch.relu(g1 * b.fc1(z) + b1)
        h2 = torch.relu(g2 * b.fc2(h1) + b2)
        return b.fc3(h2), idx, sim

    def aux_loss(self, sim, idx):
        """FedIns key loss: 1 - sum_{i, j in I_i} cos(q_i, K_j) / n."""
        return 1.0 - sim.gather(1, idx).sum() / sim.shape[0]


class Routing(nn.Module):
    """AdaptDHM: K unit-norm centers (EMA-updated, not trained) and shared ⊙ cluster towers.

    Weights are stored (in, out) as in the reference code; no biases; hard routing by
    argmax_j <x, c_j>; ReLU hidden layers; the tower's last layer gives the logit.
    """

    def __init__(self, dims, clusters: int, beta: float, gen: torch.Generator):
        super().__init__()
        self.dims, self.clusters, self.beta = list(dims), clusters, beta
        gain = nn.init.calculate_gain("relu")

        def layer():
            return nn.ParameterList([nn.Parameter(nn.init.xavier_uniform_(torch.empty(i, o), gain=gain, generator=gen))
                                     for i, o in zip(dims[:-1], dims[1:])])

        self.shared = layer()
        self.cluster = nn.ModuleList([layer() for _ in range(clusters)])
        self.register_buffer("centers", F.normalize(torch.randn(clusters, dims[0], generator=gen), p=2, dim=1))

    @torch.no_grad()
    def update_centers(self, x, times=3, temperature=1.0):
        """§4.2: T iterations of R = softmax(X Cᵀ / t), c_j <- normalize(beta c_j + (1-beta) sum_i R_ij x_i).

        The reference has t = 1. On this model's concat (norm about 1) that softmax is nearly
        uniform and two of the three centers converge to the same vector (to 1 ulp), leaving the
        choice between them to rounding noise; t = 0.05 keeps three distinct centers. Inference
        is unaffected: argmax_j <x, c_j> does not depend on t.
        """
        for _ in range(times):
            r = torch.softmax(x @ self.centers.T / temperature, dim=1)
            self.centers.copy_(F.normalize(self.beta * self.centers + (1 - self.beta) * (r.T @ x), p=2, dim=1))

    def route(self, x):
        return torch.argmax(x @ self.centers.T, dim=1)

    def tower(self, x, j):
        a = x
        n = len(self.shared)
        for l in range(n):
            a = a @ (self.shared[l] * self.cluster[j][l])
            if l < n - 1:
                a = torch.relu(a)
        return a

    def forward(self, x):
        """x: base concat [N,D]. Returns (logit [N,1], cluster [N])."""
        kappa = self.route(x)
        towers = torch.cat([self.tower(x, j) for j in range(self.clusters)], dim=1)  # [N,K], as the reference
        return towers.gather(1, kappa.unsqueeze(1)), kappa
