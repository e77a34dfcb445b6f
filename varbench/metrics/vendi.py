"""Vendi score (Friedman & Dieng 2023): the effective number of distinct samples in a set.

exp of the (order-q Rényi) entropy of the eigenvalues of K/n, with K the cosine kernel on
L2-normalised rows, as the ``vendi-score`` package's ``score_dual`` computes it. The nonzero
eigenvalues of X X^T / n equal those of X^T X / n, so the smaller of the two is decomposed.
Reported per conditioning image (the diversity of one image's variations) and per class.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from varbench.metrics.base import Metric, higher


def _normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, as sklearn's ``normalize``)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"need a (N, D) feature array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def vendi_score(features: np.ndarray, q: float = 1.0) -> float:
    """Vendi score of the rows of ``features`` with the cosine kernel; q = inf allowed.

    NaN when there are no rows or every row is zero (the kernel has no mass: the vendi-score
    package returns 1 for q = 1, inf for q > 1 and q = inf, 0 for q < 1 there).
    """
    x = _normalised(features)
    n, d = x.shape
    if n == 0:
        return math.nan
    gram = x @ x.T if n <= d else x.T @ x
    w = np.linalg.eigvalsh(gram / n)
    p = w[w > 0]
    if not len(p):  # every row zero: no direction, the cosine kernel is 0 (package: 1, inf or 0)
        return math.nan
    if q == 1:
        entropy = -float((p * np.log(p)).sum())
    elif math.isinf(q):
        entropy = -math.log(float(w.max()))
    else:
        entropy = math.log(float((p**q).sum())) / (1.0 - q)
    return math.exp(entropy)


def grouped_vendi(features: np.ndarray, groups: np.ndarray, q: float = 1.0) -> dict[int, float]:
    """Vendi score of each group's rows (e.g. the samples of one conditioning image)."""
    rows: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(np.asarray(groups)):
        rows[int(g)].append(i)
    x = np.asarray(features)
    return {g: vendi_score(x[idx], q) for g, idx in sorted(rows.items())}


def _mean(values) -> float:
    v = np.asarray(list(values), np.float64)
    return float(v.mean()) if len(v) else math.nan


class VendiMetric(Metric):
    """Vendi score (q = ``vendi_q``, default 1) of each conditioning image's samples and of each
    class's samples, in the protocol's default feature space; means over images and classes."""

    name = "vendi"
    space = ""  # encoder name; "" = the protocol's default
    results = (
        higher("vendi_cond_mean", "Vendi per conditioning image (mean)"),
        higher("vendi_class_mean", "Vendi per class (mean)"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        q = float(ctx.options.get("vendi_q", 1.0))
        x = ctx.fake(self.space or None)
        self._per_cond = grouped_vendi(x, ctx.fake_cond_index, q)
        self._per_class = grouped_vendi(x, ctx.fake_class, q)
        self._q = q
        return {
            self.keys[0]: _mean(self._per_cond.values()),
            self.keys[1]: _mean(self._per_class.values()),
        }

    def artifacts(self, ctx) -> dict[str, object]:
        labels = list(getattr(ctx, "class_labels", []) or [])
        cond_hashes = list(getattr(ctx, "cond_hashes", []) or [])
        return {
            "encoder": self.space or ctx.default_encoder,
            "q": self._q,
            "per_cond": {
                (cond_hashes[c] if 0 <= c < len(cond_hashes) else str(c)): v
                for c, v in self._per_cond.items()
            },
            "per_class": {
                (labels[c] if 0 <= c < len(labels) else str(c)): v
                for c, v in self._per_class.items()
            },
        }


class VendiInceptionMetric(VendiMetric):
    """Vendi score per conditioning image and per class in Inception-v3 pool3 space."""

    name = "vendi_inception"
    space = "inception"
    results = (
        higher("vendi_inception_cond_mean", "Vendi (Inception) per conditioning image"),
        higher("vendi_inception_class_mean", "Vendi (Inception) per class"),
    )
    encoders = ("inception",)


class VendiDinoV2Metric(VendiMetric):
    """Vendi score per conditioning image and per class in DINOv2 ViT-L/14 space (dgm-eval's)."""

    name = "vendi_dinov2"
    space = "dinov2_l"
    results = (
        higher("vendi_dinov2_cond_mean", "Vendi (DINOv2) per conditioning image"),
        higher("vendi_dinov2_class_mean", "Vendi (DINOv2) per class"),
    )
    encoders = ("dinov2_l",)
