"""Memorisation-informed FID (MiFID): the Kaggle competition's definition and torchmetrics'.

Both divide the FID (references vs samples) by a memorisation distance d when d is below
``cosine_distance_eps`` (default 0.1), else by 1; 1 - |cos| between rows with a nonzero sum.
They differ in which way d averages:

* ``mifid`` (Bai et al. 2021, the Kaggle "Generative Dog Images" evaluation code,
  ``cosine_distance(features1=generated, features2=training)``: ``np.min(d, axis=1)`` then
  ``np.mean``): d = mean over *generated* rows of the smallest 1 - |cos| to a *training* row.
  Every copied sample pulls d towards 0, however large the training set. In a K-shot run the
  training set is what the model was shown, the conditioning images (``shown_rows``); on two
  folders, the references.
* ``mifid_tm`` (torchmetrics' ``MemorizationInformedFrechetInceptionDistance``, kept for
  parity): ``_compute_cosine_distance(real, fake)`` averages over *real* rows (all references)
  the smallest 1 - |cos| to a generated row, so references nobody copied dilute it.

1 - |cos(a, b)| = min(|a' - b'|^2, |a' + b'|^2) / 2 for unit rows, so d comes from the exact
nearest-neighbour engine (``knn.nearest_up_to_sign``: one float32 product screens both signs,
exact float64 recheck). FID < 1e-8 gives 0, and the divisor is d + 1e-14, as in both
originals. In a scoring run the FID is the fid metric's (``varbench.metrics.pointcache``).
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric, higher, lower
from varbench.metrics.gaussian import fid_from_features
from varbench.metrics.knn.cross import band_pairs, nearest_up_to_sign
from varbench.metrics.knn.screening import U32, screen_eps
from varbench.metrics.pointcache import PointCache, point_cache, shown_rows

KEY_MIFID = "mifid"
KEY_MEM_DISTANCE = "mifid_memorisation_distance"
KEY_MIFID_TM = "mifid_tm"
KEY_MEM_DISTANCE_TM = "mifid_tm_memorisation_distance"


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices of the rows with a nonzero sum, those rows scaled to unit length in float64,
    their squared norms); torchmetrics drops zero-sum rows."""
    x = np.asarray(x)
    keep = np.flatnonzero(x.sum(axis=1, dtype=np.float64) != 0)
    xk = np.asarray(x if len(keep) == len(x) else x[keep], np.float64)
    sq = np.einsum("ij,ij->i", xk, xk)
    return keep, xk / np.sqrt(sq)[:, None], sq


def memorisation_distance(
    real: np.ndarray, fake: np.ndarray, prepared=None, sq_dists=None
) -> float:
    """Mean over real rows of min over fake rows of 1 - |cosine similarity| (torchmetrics' way).

    ``prepared``/``sq_dists``: a shared plan's prepared (real, fake) pair and its float32
    real x fake squared distances, which then screen the candidates (``cosine_screen``).
    """
    kr, a, r2 = _unit_rows(real)
    kf, b, f2 = _unit_rows(fake)
    screen = None
    if sq_dists is not None:
        screen = cosine_screen(kr, kf, r2, f2, prepared, sq_dists)
    return float(np.mean(nearest_up_to_sign(a, b, screen) / 2.0))


def cosine_screen(kr, kf, r2, f2, prepared, sq_dists: np.ndarray):
    """``screen`` for ``memorisation_distance`` from a plan's float32 real x fake distances.

    ``kr``/``kf``: indices of the kept (nonzero-sum) real and fake rows, ``r2``/``f2`` their
    squared norms. For kept rows i (real) and j (fake),
    |q_i.b_j| / |b_j| = |r2_i + f2_j - D_ij| / (2 |f_j|) orders row i's candidates as |cos| does. It is computed in float32 passes over the stored
    matrix (no product, no float64 copy); its error is bounded per row by the k-NN room's
    certified float32 bound on D (``knn.screening.screen_eps`` and the slacks), the float32 roundings of the
    norms, the sum and the scaling, each maximised over j as a sum of per-set maxima. Every j
    whose value reaches the row's maximum minus twice that bound is a candidate, so the
    largest |cos| of the row is among them. ``screen(s, e)`` returns (row offsets from s,
    kept-fake positions) of the candidates of kept real rows s:e, or None when they exceed
    ``knn.cross.SCREEN_CAP`` per row (the caller's float32 product decides those rows instead).
    """
    import torch

    pr, pf = prepared
    every_r, every_f = len(kr) == len(pr.x), len(kf) == len(pf.x)
    eps = screen_eps(pr.x.shape[1])
    inv_f = 1.0 / (2.0 * np.sqrt(f2))
    # per-row bound: (row part) * max_j inv_f + max_j (column part * inv_f), then roundings
    row_part = eps * pr.nf[kr] + pr.slack[kr] + 8.0 * U32 * r2
    col_max = float(np.max((eps * pf.nf[kf] + pf.slack[kf] + 8.0 * U32 * f2) * inv_f))
    bound = (row_part * float(inv_f.max()) + col_max) * (1.0 + 8.0 * U32)
    t_f2 = torch.from_numpy(f2.astype(np.float32))
    t_inv = torch.from_numpy(inv_f.astype(np.float32))
    t_r2 = torch.from_numpy(r2.astype(np.float32))
    screen_t = torch.from_numpy(sq_dists)

    def screen(s: int, e: int) -> tuple[np.ndarray, np.ndarray] | None:
        if every_r and every_f:
            dist = screen_t[s:e]
        else:
            dist = torch.from_numpy(sq_dists[kr[s:e]][:, kf])
        val = torch.sub(t_f2[None, :], dist).add_(t_r2[s:e, None]).abs_().mul_(t_inv[None, :])
        top = val.amax(dim=1).double().numpy()
        # 8 ulps of the largest value absorb the float32 rounding of val itself
        return band_pairs(val, top * (1.0 - 8.0 * U32) - 2.0 * bound[s:e], True)

    return screen


def generated_memorisation_distance(train: np.ndarray, gen: np.ndarray) -> float:
    """Mean over generated rows of min over training rows of 1 - |cosine similarity| (Kaggle's way)."""
    _, a, _ = _unit_rows(gen)
    _, b, _ = _unit_rows(train)
    return float(np.mean(nearest_up_to_sign(a, b) / 2.0))


def mifid(
    real: np.ndarray, fake: np.ndarray, cosine_distance_eps: float = 0.1, train=None
) -> float:
    """Kaggle's MiFID: FID(real, fake) / d, d averaged over the generated rows against ``train``
    (default: ``real``) when below ``cosine_distance_eps``."""
    return mifid_parts(real, fake, cosine_distance_eps, train)[KEY_MIFID]


def mifid_tm(real: np.ndarray, fake: np.ndarray, cosine_distance_eps: float = 0.1) -> float:
    """torchmetrics' MiFID: FID / d, d averaged over the real rows, when below the threshold."""
    return mifid_parts(real, fake, cosine_distance_eps)[KEY_MIFID_TM]


def mifid_parts(real, fake, cosine_distance_eps: float = 0.1, train=None) -> dict[str, float]:
    """Both MiFIDs and their memorisation distances (``train``: Kaggle's training set, default
    ``real``)."""
    fid = fid_from_features(real, fake)
    d_gen = generated_memorisation_distance(real if train is None else train, fake)
    return {
        **mifid_from(fid, d_gen, cosine_distance_eps),
        **mifid_from(fid, memorisation_distance(real, fake), cosine_distance_eps, tm=True),
    }


def mifid_from(
    fid: float, dist: float, cosine_distance_eps: float = 0.1, tm: bool = False
) -> dict[str, float]:
    """MiFID from the FID and a memorisation distance (``tm``: under torchmetrics' keys)."""
    penalty = dist if dist < cosine_distance_eps else 1.0
    value = fid / (penalty + 10e-15) if fid > 1e-8 else 0.0
    if tm:
        return {KEY_MIFID_TM: float(value), KEY_MEM_DISTANCE_TM: dist}
    return {KEY_MIFID: float(value), KEY_MEM_DISTANCE: dist}


def cached_mifid(
    cache: PointCache, cosine_distance_eps: float = 0.1, shown: np.ndarray | None = None
) -> dict[str, float]:
    """Both MiFIDs from the point cache (the FID the fid metric reports); ``shown``: rows of
    the references that are Kaggle's training set (default: all)."""

    def make_tm() -> float:
        rf = cache.screen()
        prepared = None if rf is None else cache.prepared()
        return memorisation_distance(cache.real, cache.fake, prepared, rf)

    train = cache.real if shown is None else cache.real[shown]
    key = ("mifid_gen_dist", None if shown is None else tuple(shown.tolist()))
    d_gen = cache.memo(key, lambda: generated_memorisation_distance(train, cache.fake))
    fid = cache.fid()
    return {
        **mifid_from(fid, d_gen, cosine_distance_eps),
        **mifid_from(fid, cache.memo("mifid_dist", make_tm), cosine_distance_eps, tm=True),
    }


class MiFIDMetric(Metric):
    """MiFID in the protocol's default feature space (``mifid_eps``, default 0.1): Kaggle's
    against the conditioning images, torchmetrics' against all references."""

    name = "mifid"
    results = (
        lower(KEY_MIFID, "MiFID (Kaggle: memorisation of the shown images)"),
        higher(KEY_MEM_DISTANCE, "MiFID memorisation distance (samples to nearest shown image)"),
        lower(KEY_MIFID_TM, "MiFID (torchmetrics: memorisation averaged over references)"),
        higher(KEY_MEM_DISTANCE_TM, "MiFID memorisation distance (torchmetrics)"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        eps = float(ctx.options.get("mifid_eps", 0.1))
        return cached_mifid(point_cache(ctx), eps, shown_rows(ctx))
