"""Memorisation-informed FID (MiFID, Kaggle GAN competition; torchmetrics' definition).

MiFID = FID / d when the memorisation distance d < ``cosine_distance_eps`` (default 0.1), else
FID; d = mean over real rows (rows with nonzero sum) of the smallest 1 - |cos| to a generated
row (also nonzero-sum). 1 - |cos(a, b)| = min(|a' - b'|^2, |a' + b'|^2) / 2 for unit rows, so
d comes from the exact nearest-neighbour engine (``knn.nearest_up_to_sign``: one float32
product screens both signs, exact float64 recheck). FID < 1e-8 gives 0, as torchmetrics. In a
scoring run the FID is the fid metric's (``varbench.metrics.shared``).
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric
from varbench.metrics.fid import fid_from_features
from varbench.metrics.knn import nearest_up_to_sign

KEY_MIFID = "mifid"
KEY_MEM_DISTANCE = "mifid_memorisation_distance"


def _kept(x: np.ndarray) -> np.ndarray:
    """Indices of the rows with a nonzero sum (torchmetrics drops the others)."""
    return np.flatnonzero(np.asarray(x, np.float64).sum(axis=1) != 0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x[x.sum(axis=1) != 0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def memorisation_distance(real: np.ndarray, fake: np.ndarray, screen=None) -> float:
    """Mean over real rows of min over fake rows of 1 - |cosine similarity|.

    ``screen``: as for ``knn.nearest_up_to_sign``, indexed by kept (nonzero-sum) rows.
    """
    a, b = _unit_rows(real), _unit_rows(fake)
    return float(np.mean(nearest_up_to_sign(a, b, screen) / 2.0))


def cosine_screen(real, fake, prepared, sq_dists: np.ndarray):
    """``screen`` for ``memorisation_distance`` from a plan's float32 real x fake distances.

    q.b = (|q|^2 + |b|^2 - |q - b|^2) / 2 on the raw rows, divided by their norms; the error
    bound is the k-NN room's certified float32 bound on |q - b|^2, plus float64 rounding.
    """
    from varbench.metrics.knn import _eps

    pr, pf = prepared
    kr, kf = _kept(real), _kept(fake)
    r2 = np.einsum("ij,ij->i", np.asarray(real, np.float64), np.asarray(real, np.float64))[kr]
    f2 = np.einsum("ij,ij->i", np.asarray(fake, np.float64), np.asarray(fake, np.float64))[kf]
    eps, d = _eps(pr.x.shape[1]), pr.x.shape[1]

    def screen(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        rows = kr[s:e]
        dist = sq_dists[rows][:, kf].astype(np.float64)
        tol = eps * (pr.nf[rows, None] + pf.nf[None, kf]) + pr.slack[rows, None] + pf.slack[kf]
        tol += 4.0 * (d + 8) * 2.0**-53 * (r2[s:e, None] + f2[None, :])
        denom = np.sqrt(r2[s:e, None] * f2[None, :])
        return (r2[s:e, None] + f2[None, :] - dist) / (2.0 * denom), tol / (2.0 * denom)

    return screen


def mifid(real: np.ndarray, fake: np.ndarray, cosine_distance_eps: float = 0.1) -> float:
    """FID divided by the memorisation distance when that is below ``cosine_distance_eps``."""
    return mifid_parts(real, fake, cosine_distance_eps)[KEY_MIFID]


def mifid_parts(real, fake, cosine_distance_eps: float = 0.1) -> dict[str, float]:
    """MiFID and its memorisation distance."""
    return mifid_from(
        fid_from_features(real, fake), memorisation_distance(real, fake), cosine_distance_eps
    )


def mifid_from(fid: float, dist: float, cosine_distance_eps: float = 0.1) -> dict[str, float]:
    """MiFID from the FID and the memorisation distance."""
    penalty = dist if dist < cosine_distance_eps else 1.0
    value = fid / (penalty + 10e-15) if fid > 1e-8 else 0.0
    return {KEY_MIFID: float(value), KEY_MEM_DISTANCE: dist}


class MiFIDMetric(Metric):
    """MiFID in the protocol's default feature space (``mifid_eps``, default 0.1)."""

    name = "mifid"
    keys = (KEY_MIFID, KEY_MEM_DISTANCE)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        eps = float(ctx.options.get("mifid_eps", 0.1))
        from varbench.metrics.shared import point_plan

        return point_plan(ctx).mifid(eps)
