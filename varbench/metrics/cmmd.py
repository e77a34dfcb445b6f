"""CMMD (Jayasumana et al., CVPR 2024): MMD between CLIP embeddings with a Gaussian RBF kernel.

The biased (minimum-variance) estimator of google-research ``cmmd/distance.py``:
scale * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y)), k(a, b) = exp(-|a - b|^2 / (2 sigma^2)),
sigma = 10, scale = 1000, on L2-normalised CLIP ViT-L/14 336 px embeddings (encoder
``clip_l336``). Sets of different sizes are allowed. Products are float32 on rows shifted by
the common mean (the reference is float32 JAX); kernel sums are float64, or for small
exponents (unit embeddings) float32 sums of expm1 terms around a float64 constant part.
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric, lower

KEY_CMMD = "cmmd"
ENCODER = "clip_l336"
_BLOCK = 2048


_SMALL_EXPONENT = 1.0  # largest 2 gamma |a| |b| for the factored route


def _kernel_mean(a: np.ndarray, b: np.ndarray, gamma: float, same: bool) -> float:
    """Mean of exp(-gamma |a_i - b_j|^2) over all pairs (upper triangle mirrored when same).

    Factored as u_i v_j (1 + f_ij) with u = exp(-gamma |a|^2), v = exp(-gamma |b|^2) and
    f = expm1(2 gamma a.b): for small exponents (CLIP's unit embeddings, shifted by their mean:
    |2 gamma a.b| <= 0.04) f is small, so float32 f and its float32 weighted row sums lose
    only ~1e-9 of the mean, and each block costs its product and two passes. Wider rows take
    the direct route (float32 distances, float64 sums of the kernel values).
    """
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    na, nb = (ta.double() ** 2).sum(1), (tb.double() ** 2).sum(1)
    if 2.0 * gamma * float(torch.sqrt(na.max() * nb.max())) > _SMALL_EXPONENT:
        return _kernel_mean_direct(ta, tb, gamma, same)
    u, v = torch.exp(-gamma * na), torch.exp(-gamma * nb)
    v32 = v.float()
    total = 0.0
    for s in range(0, len(a), _BLOCK):
        e = min(len(a), s + _BLOCK)
        for t in range(s if same else 0, len(b), _BLOCK):
            w = min(len(b), t + _BLOCK)
            f = torch.mm(ta[s:e], tb[t:w].T).mul_(2.0 * gamma).expm1_()
            part = float(u[s:e] @ torch.mv(f, v32[t:w]).double())
            total += part * (2.0 if same and t != s else 1.0)
    return (float(u.sum() * v.sum()) + total) / (len(a) * len(b))


def _kernel_mean_direct(ta, tb, gamma: float, same: bool) -> float:
    """``_kernel_mean`` from float32 squared distances (any row norms)."""
    import torch

    na, nb = (ta * ta).sum(1), (tb * tb).sum(1)
    total = 0.0
    for s in range(0, len(ta), _BLOCK):
        e = min(len(ta), s + _BLOCK)
        for t in range(s if same else 0, len(tb), _BLOCK):
            u = min(len(tb), t + _BLOCK)
            g = torch.addmm(na[s:e, None] + nb[None, t:u], ta[s:e], tb[t:u].T, alpha=-2.0)
            k = torch.exp(-gamma * g.clamp_(min=0).double())
            if same and t == s:
                total += float(k.sum())
            else:
                total += float(k.sum()) * (2.0 if same else 1.0)
    return total / (len(ta) * len(tb))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """Biased MMD^2 with an RBF kernel of bandwidth ``sigma``, times ``scale``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"need two non-empty (N, D) arrays of one width, got {x.shape}, {y.shape}")
    shift = np.concatenate([x, y]).mean(axis=0)
    xs = (x - shift).astype(np.float32)
    ys = (y - shift).astype(np.float32)
    gamma = 1.0 / (2.0 * sigma**2)
    kxx = _kernel_mean(xs, xs, gamma, True)
    kyy = _kernel_mean(ys, ys, gamma, True)
    kxy = _kernel_mean(xs, ys, gamma, False)
    return float(scale * (kxx + kyy - 2.0 * kxy))


class CMMDMetric(Metric):
    """CMMD between references and samples in CLIP ViT-L/14 336 px space."""

    name = "cmmd"
    results = (lower(KEY_CMMD, "CMMD"),)
    encoders = (ENCODER,)

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_CMMD: cmmd(ctx.real(ENCODER), ctx.fake(ENCODER))}
