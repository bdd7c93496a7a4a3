"""SVDq bases: per layer, the mean and right singular vectors of calibration keys, and the
per-channel bit widths (a hand schedule or an allocation fitted to the measured spectrum)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .svdq_config import SVDqConfig

# Squared error of a latent channel coded at each width, as a fraction of its variance (blocks
# of 64 tokens, svdq_ref.quantize_block's ranges; between the Gaussian and Laplace figures
# measured there). Width 0 drops the channel: its error is its variance.
ERR_FRACTION = {0: 1.0, 1: 0.42, 2: 0.15, 4: 0.011, 8: 4e-5}


def fit_widths(var: np.ndarray, budget_bits: float, overhead_bits: float = 0.5) -> np.ndarray:
    """Greedy marginal allocation: var (D,) channel variances sorted descending -> widths (D,)
    from {0,1,2,4,8}, non-increasing, with sum(width + overhead for used channels) <= budget*D.
    var may also be (L, D), one row per layer, each row sorted descending: the budget
    (budget*L*D) is then shared by all rows and goes where it cuts the most error, so a layer
    whose channels carry little score energy gets fewer bits (widths non-increasing per row).
    Each round takes the move (one channel to any wider width) with the largest error reduction
    per bit; ties go to the earlier channel, then the narrower width. overhead_bits: scale+min
    cost per used channel per token (2 x f16 per block of B tokens = 32/B). Vectorized over the
    (L, D, 4) candidate moves: it runs when a prompt basis is fitted, mid-prefill."""
    var = np.asarray(var, np.float64)
    one = var.ndim == 1
    var = var[None, :] if one else var                             # (L, D)
    L, D = var.shape
    cand = np.array([1, 2, 4, 8])                                  # (4,) target widths
    err = np.array([ERR_FRACTION.get(x, 0.0) for x in range(9)])  # (9,) error fraction by width
    w = np.zeros((L, D), np.int64)
    left = budget_bits * L * D
    while True:
        prev = np.concatenate([np.full((L, 1), 8), w[:, :-1]], axis=1)                  # (L, D)
        cost = cand - w[..., None] + np.where(w == 0, overhead_bits, 0.0)[..., None]    # (L, D, 4)
        ok = (cand > w[..., None]) & (cand <= prev[..., None]) & (cost <= left)
        gain = np.where(ok, var[..., None] * (err[w][..., None] - err[cand]) / np.where(ok, cost, 1.0), 0.0)
        i = int(np.argmax(gain))
        if gain.flat[i] <= 0.0:
            return w[0] if one else w
        l, rest = divmod(i, D * 4)
        j, c = divmod(rest, 4)
        w[l, j] = cand[c]
        left -= cost[l, j, c]


def schedule_widths(bits: tuple, D: int) -> np.ndarray:
    """8 group widths -> per-channel widths (D,), D split into 8 equal groups."""
    return np.repeat(np.asarray(bits, np.int64), D // 8)


@dataclass
class LayerBasis:
    """One layer's bases. G groups (KV heads, or 1 for a per-layer basis) of dimension D."""
    mean: np.ndarray      # (G, D) float32
    V: np.ndarray         # (G, D, r) float32, columns = leading right singular vectors
    sigma: np.ndarray     # (G, D) singular values / sqrt(T) (latent standard deviations)
    widths: np.ndarray    # (r,) int, non-increasing, > 0, shared by the groups

    @property
    def r(self) -> int:
        return self.V.shape[2]

    def nbytes_stored(self) -> int:
        """What the cache holds for the basis (f16 mean and V)."""
        return 2 * (self.mean.size + self.V.size)


def query_moment(q: np.ndarray, n_kv: int, per_head: bool) -> tuple[np.ndarray, int]:
    """Post-RoPE queries q (T, H, d) -> (sum of q q^T in each basis group's space (G, D, D) float64,
    rows summed). Per head, group g is read by the H/n_kv heads of KV head g; per layer, each head
    sits in its KV head's slot of D = n_kv*d (zeros elsewhere), so the moment is block-diagonal."""
    T, H, d = q.shape
    grp = H // n_kv
    qg = q.reshape(T, n_kv, grp, d).astype(np.float64)                              # (T, KV, grp, d)
    blocks = np.einsum("tkmd,tkme->kde", qg, qg)                                     # (KV, d, d)
    if per_head:
        return blocks, T * grp
    M = np.zeros((1, n_kv * d, n_kv * d))
    for kv in range(n_kv):
        M[0, kv * d:(kv + 1) * d, kv * d:(kv + 1) * d] = blocks[kv]
    return M, T * H


@dataclass
class Eig:
    """One layer's decomposition before widths are chosen: per group mean, all D directions in
    importance order, latent standard deviations, and the importance used to give bits."""
    mean: np.ndarray      # (G, D)
    V: np.ndarray         # (G, D, D)
    sigma: np.ndarray     # (G, D)
    imp: np.ndarray       # (D,) importance by rank, mean over groups

    def basis(self, widths: np.ndarray) -> LayerBasis:
        r = max(1, int(np.count_nonzero(widths)))
        return LayerBasis(self.mean.astype(np.float32), self.V[:, :, :r].astype(np.float32),
                          self.sigma.astype(np.float32), np.asarray(widths[:r], np.int64))


def eig_keys(keys: np.ndarray, q_moment: np.ndarray | None = None) -> Eig:
    """keys: float32 (T, G, D) keys (already grouped per head or per layer).
    q_moment: optional (G, D, D) mean of q q^T over the queries that read each group, in its
    D-space (query_moment). With it the latent channels are ranked and given bits by their share
    of the score error, E[k_j^2] * E[q_j^2], not by key energy alone (a channel no query looks at
    needs no bits); it is then in score units, comparable across layers."""
    T, G, D = keys.shape
    means, Vs, sig, imps = [], [], [], []
    for g in range(G):
        k = keys[:, g, :].astype(np.float64)
        mu = k.mean(axis=0)
        kc = k - mu
        ev, Vfull = np.linalg.eigh(kc.T @ kc)                  # right singular vectors of kc (D x D)
        order = np.argsort(-ev, kind="stable")
        ev, Vfull = np.clip(ev[order], 0.0, None), Vfull[:, order]
        sg = np.sqrt(ev / max(T, 1))                           # latent standard deviations
        imp = sg ** 2
        if q_moment is not None:
            imp = imp * np.sum(Vfull * (q_moment[g] @ Vfull), axis=0)                 # E[(q.v_j)^2]
            order = np.argsort(-imp, kind="stable")
            Vfull, sg, imp = Vfull[:, order], sg[order], imp[order]
        means.append(mu)
        Vs.append(Vfull)
        sig.append(sg)
        imps.append(imp)
    # one width layout per layer (all groups alike, so the packed arrays have one shape)
    return Eig(np.asarray(means), np.asarray(Vs), np.asarray(sig), np.mean(np.asarray(imps), axis=0))


def layer_widths(imp: np.ndarray, cfg: SVDqConfig) -> np.ndarray:
    """Widths (D,) or (L, D) for importances imp of the same shape: the hand schedule, or the
    allocation fitted at cfg.budget with the scale+min cost of cfg.block."""
    if cfg.bits is not None:
        w = schedule_widths(cfg.bits, imp.shape[-1])
        return np.broadcast_to(w, imp.shape).copy()
    return fit_widths(imp, cfg.budget, overhead_bits=32.0 / cfg.block)


def compute_basis(keys: np.ndarray, cfg: SVDqConfig, q_moment: np.ndarray | None = None) -> LayerBasis:
    """One layer's basis with its own widths (budget spent within the layer); see eig_keys."""
    e = eig_keys(keys, q_moment)
    return e.basis(layer_widths(e.imp, cfg))


def compute_bases(eigs: list, cfg: SVDqConfig) -> list:
    """Bases for several layers (None entries skipped). With cfg.alloc == 'global' the budget is
    shared across the layers by score error (fit_widths on (L, D)); else each layer gets it."""
    live = [i for i, e in enumerate(eigs) if e is not None]
    out = [None] * len(eigs)
    dims = {eigs[i].imp.shape[0] for i in live}
    if cfg.alloc == "global" and cfg.bits is None and len(dims) == 1 and live:
        W = layer_widths(np.stack([eigs[i].imp for i in live]), cfg)                   # (L, D)
        for row, i in zip(W, live):
            out[i] = eigs[i].basis(row)
    else:
        for i in live:
            out[i] = eigs[i].basis(layer_widths(eigs[i].imp, cfg))
    return out


def save_bases(path, bases: list) -> None:
    arrays = {}
    for i, b in enumerate(bases):
        if b is None:
            continue
        arrays[f"{i}.mean"], arrays[f"{i}.V"], arrays[f"{i}.sigma"], arrays[f"{i}.widths"] = b.mean, b.V, b.sigma, b.widths
    np.savez(path, **arrays)


def load_bases(path, n_layer: int) -> list:
    z = np.load(path)
    out = []
    for i in range(n_layer):
        if f"{i}.mean" in z:
            out.append(LayerBasis(z[f"{i}.mean"], z[f"{i}.V"], z[f"{i}.sigma"], z[f"{i}.widths"]))
        else:
            out.append(None)
    return out
