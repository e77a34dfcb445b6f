"""Improved precision and recall (Kynkäänniemi et al. 2019), exact under ties.

A point is inside the manifold of a set if its distance to some member is <= that member's
distance to its k-th nearest neighbour (self excluded). Distances come from a fast float64
matrix product; any decision within rounding of its threshold is re-made with exact
direct-difference distances, so a copy at distance 0 always counts.
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric

KEY_PRECISION = "precision"
KEY_RECALL = "recall"

_BLOCK = 1024
_REL_TOL = 1e-9


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _exact_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances by direct differences (0 exactly for identical rows)."""
    d = a[:, None, :] - b[None, :, :]
    return np.einsum("ijk,ijk->ij", d, d)


def _approx_sq(a, na, b, nb) -> tuple[np.ndarray, np.ndarray]:
    d2 = na[:, None] + nb[None, :] - 2.0 * (a @ b.T)
    tol = _REL_TOL * (na[:, None] + nb[None, :]) + 1e-300
    return d2, tol


def kth_nn_sq_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Exact squared distance of each row to its k-th nearest other row."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n <= k:
        raise ValueError(f"need more than k={k} points, got {n}")
    nx = _sq_norms(x)
    radii = np.empty(n)
    for s in range(0, n, _BLOCK):
        d2, tol = _approx_sq(x[s : s + _BLOCK], nx[s : s + _BLOCK], x, nx)
        for i in range(d2.shape[0]):
            row, t = d2[i], tol[i]
            row = row.copy()
            row[s + i] = np.inf  # exclude self by index, not by value (duplicates are neighbours)
            kth = np.partition(row, k - 1)[k - 1]
            cand = np.flatnonzero(row <= kth + 2 * t.max())
            cand = cand[cand != s + i]
            exact = _exact_sq(x[s + i : s + i + 1], x[cand])[0]
            radii[s + i] = np.partition(exact, k - 1)[k - 1]
    return radii


def coverage_mask(points: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray) -> np.ndarray:
    """For each point, whether some centre c has |p - c|^2 <= radius_sq(c) (exact decisions)."""
    p = np.asarray(points, np.float64)
    c = np.asarray(centres, np.float64)
    np_, nc = _sq_norms(p), _sq_norms(c)
    inside = np.zeros(len(p), dtype=bool)
    for s in range(0, len(p), _BLOCK):
        d2, tol = _approx_sq(p[s : s + _BLOCK], np_[s : s + _BLOCK], c, nc)
        margin = d2 - radii_sq[None, :]
        sure = margin < -tol
        unsure = np.abs(margin) <= tol
        block_inside = sure.any(axis=1)
        for i in np.flatnonzero(~block_inside & unsure.any(axis=1)):
            cand = np.flatnonzero(unsure[i])
            exact = _exact_sq(p[s + i : s + i + 1], c[cand])[0]
            block_inside[i] = bool((exact <= radii_sq[cand]).any())
        inside[s : s + _BLOCK] = block_inside
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision: fraction of fakes inside the real manifold; recall: reals inside the fake one."""
    real_r = kth_nn_sq_radii(real, k)
    fake_r = kth_nn_sq_radii(fake, k)
    precision = coverage_mask(fake, real, real_r).mean()
    recall = coverage_mask(real, fake, fake_r).mean()
    return {KEY_PRECISION: float(precision), KEY_RECALL: float(recall)}


class PrecisionRecallMetric(Metric):
    """Precision and recall with k = 3 in the protocol's default feature space."""

    name = "precision_recall"
    keys = (KEY_PRECISION, KEY_RECALL)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return precision_recall(ctx.real(), ctx.fake(), k=int(ctx.options.get("prc_k", 3)))
