"""Novelty against what a model was fitted on: authenticity (AuthPct) and the C_T test.

In a K-shot run the model was shown the conditioning images and nothing else of the
reference set, so "training set" below means the conditioning images (``shown_rows``); on
two folders (nothing conditioned), the references.

* ``authpct`` (Alaa et al. 2022 as dgm-eval computes it): a generated point is authentic when
  the training point nearest to it is closer to its own nearest other training point than to
  the generated point (strict ``<``); the percentage of authentic points. The "nearest other
  training point" is a local density radius; a handful of conditioning images is too sparse
  to give one (k = 1: one image per class, its nearest other is another class), so each
  shown image's radius is its distance to its nearest other *reference* (``authpct_shown``).
* ``ct_score`` (Meehan et al. 2020, dgm-eval's ``compute_CTscore``): features projected to
  their first 64 principal components when wider, k-means cells fitted on train, in each cell
  the Mann-Whitney U of generated vs test distances to the nearest training point, Z-scored
  with the continuity correction; cells holding more than ``min_gen`` generated points
  (tau = 20 / m in dgm-eval) averaged with weights = test mass. C_T << 0 means copying,
  >> 0 underfitting. Train = the shown images, test = held-out real images never shown; the
  PCA and the cells are fitted on all references (``ct_score_shown``: a handful of shown
  images cannot span 64 axes, and cells fitted on them are left without held-out mass).

Nearest neighbours come from the exact engine ``varbench.metrics.knn``; PCA is exact (an
eigendecomposition, where scikit-learn may use a randomised solver); the cells are
scikit-learn's ``KMeans(3, n_init=10, random_state=seed)`` as dgm-eval fits them, transcribed
(``kmeans.kmeans_sklearn``), and every set is labelled by ``predict`` as dgm-eval does.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.stats import mannwhitneyu

from varbench.metrics.base import Metric, higher, neither
from varbench.metrics.kmeans import kmeans_sklearn, predict
from varbench.metrics.knn.cross import knn_cross
from varbench.metrics.knn.neighbours import knn_exact
from varbench.metrics.pointcache import PointCache, point_cache, shown_rows

log = logging.getLogger(__name__)

KEY_AUTHPCT = "authpct"
KEY_CT = "ct_score"
CT_PCA_DIM = 64
CT_CELLS = 3
CT_MIN_GEN = 20


class CTCellError(ValueError):
    """A C_T cell holds no test (held-out) or no training point."""


def authpct(train: np.ndarray, gen: np.ndarray) -> float:
    """Percentage of generated points farther from their nearest training point than it is
    from its own nearest other training point."""
    d, idx = knn_cross(gen, train, 1)
    return authpct_from_neighbours(knn_exact(train, 1)[0][:, 0], d[:, 0], idx[:, 0])


def authpct_shown(real: np.ndarray, shown: np.ndarray, gen: np.ndarray) -> float:
    """AuthPct against the references at rows ``shown`` (the training set), each with the
    radius of its nearest other reference: the percentage of generated points farther from
    their nearest shown image than that image is from its nearest other reference."""
    d, idx = knn_cross(gen, real[shown], 1)
    return authpct_from_neighbours(knn_exact(real, 1)[0][shown, 0], d[:, 0], idx[:, 0])


def authpct_from_neighbours(train_nn_sq, gen_nn_sq, gen_nn_idx) -> float:
    """AuthPct from each training point's squared 1-NN distance and each generated point's
    squared distance to (and index of) its nearest training point."""
    train_nn = np.sqrt(np.asarray(train_nn_sq, np.float64))
    return float(100.0 * np.mean(train_nn[gen_nn_idx] < np.sqrt(gen_nn_sq)))


def pca_axes(cov: np.ndarray, dim: int) -> np.ndarray:
    """The ``dim`` leading eigenvectors (d, dim) of a covariance, largest first (exact LAPACK).

    Only the wanted eigenvectors are computed (``subset_by_index``): half the cost of a full
    decomposition.
    """
    from scipy.linalg import eigh

    d = cov.shape[0]
    dim = min(dim, d)
    _, v = eigh(cov, subset_by_index=[d - dim, d - 1])
    return v[:, ::-1]


def pca_fit(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``dim`` leading principal axes (d, dim) of the rows of x (exact)."""
    from varbench.metrics.gaussian import centred_factor

    mu, a = centred_factor(x)
    return mu, pca_axes(a.T @ a, dim)


def ct_preprocess(train, test, gen, dim: int = CT_PCA_DIM, pca=None):
    """The three sets projected on train's first ``dim`` principal components when wider.

    ``pca``: (mean, axes) of train when already computed (a shared plan's).
    """
    if np.shape(train)[1] <= dim:
        return tuple(np.asarray(a, np.float64) for a in (train, test, gen))
    mu, axes = pca if pca is not None else pca_fit(train, dim)
    return tuple(_project(a, mu, axes) for a in (train, test, gen))


def _project(x: np.ndarray, mu: np.ndarray, axes: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(x - mu) @ axes in float64, a chunk of rows at a time (no full-size float64 copy)."""
    x = np.asarray(x)
    out = np.empty((len(x), axes.shape[1]))
    for s in range(0, len(x), chunk):
        out[s : s + chunk] = (np.asarray(x[s : s + chunk], np.float64) - mu) @ axes
    return out


def zu(test: np.ndarray, gen: np.ndarray, train: np.ndarray) -> float:
    """Continuity-corrected Z of the Mann-Whitney U of gen vs test distances to train's 1-NN."""
    m, n = len(gen), len(test)
    lq = np.sqrt(knn_cross(gen, train, 1)[0][:, 0])
    lp = np.sqrt(knn_cross(test, train, 1)[0][:, 0])
    u = float(mannwhitneyu(lq, lp, alternative="less").statistic)
    return (u - (n * m / 2.0 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12.0)


def ct_from_cells(train, test, gen, train_cells, test_cells, gen_cells, tau: float) -> float:
    """C_T from cell labels: test-mass-weighted mean of per-cell Z over cells with gen share > tau.

    Cells are 0..max(train_cells); a test or generated label outside them raises CTCellError.
    """
    k = int(np.max(train_cells)) + 1
    for name, cells in (("test", test_cells), ("generated", gen_cells)):
        outside = np.unique(cells[(cells < 0) | (cells >= k)])
        if len(outside):
            raise CTCellError(
                f"C_T: {name} points in cells {outside.tolist()}, beyond the training cells "
                f"0..{k - 1}; label every set with the training partition"
            )
    m, n = len(gen), len(test)
    gen_share = np.bincount(gen_cells, minlength=k)[:k] / m
    test_share = np.bincount(test_cells, minlength=k)[:k] / n
    z = np.zeros(k)
    for c in range(k):
        t, p, q = train[train_cells == c], test[test_cells == c], gen[gen_cells == c]
        if len(t) == 0 or len(p) == 0:
            raise CTCellError(
                f"C_T cell {c} lacks test and/or training points; use more held-out images "
                "or fewer cells"
            )
        if len(q):
            z[c] = zu(p, q, t)
    use = gen_share > tau
    if not use.any():
        return math.nan
    return float(test_share[use] @ z[use] / test_share[use].sum())


def ct_score(
    train: np.ndarray,
    test: np.ndarray,
    gen: np.ndarray,
    n_cells: int = CT_CELLS,
    min_gen: int = CT_MIN_GEN,
    seed: int = 0,
    pca_dim: int = CT_PCA_DIM,
    pca: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Meehan et al.'s C_T data-copying statistic with held-out ``test`` points (seeded).

    ``pca``: (mean, axes) of train's principal components when already computed.
    """
    tr, te, ge = ct_preprocess(train, test, gen, pca_dim, pca)
    centres, _ = kmeans_sklearn(tr, n_cells, seed=seed, n_init=10)
    cells = [predict(a, centres) for a in (tr, te, ge)]  # dgm-eval: km.predict on all three
    return ct_from_cells(tr, te, ge, *cells, min_gen / len(ge))


def ct_score_shown(
    real: np.ndarray,
    shown: np.ndarray,
    test: np.ndarray,
    gen: np.ndarray,
    seed: int = 0,
    pca: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """C_T with the references at rows ``shown`` as training set, in cells fitted on all
    references, projected on their principal axes when wider than ``CT_PCA_DIM`` (``pca``:
    their mean and axes).

    The cells are k-means cells of the references (a dense sample of the data, fixed before
    any sample is scored), not of the shown images: a handful of those (k = 1: one per class)
    leaves cells without held-out mass, where C_T is undefined.
    """
    ref, train, te, ge = real, np.asarray(real)[shown], test, gen
    if np.shape(real)[1] > CT_PCA_DIM:
        mu, axes = pca if pca is not None else pca_fit(real, CT_PCA_DIM)
        ref, train, te, ge = (_project(a, mu, axes) for a in (real, train, test, gen))
    else:
        ref, train, te, ge = (np.asarray(a, np.float64) for a in (ref, train, te, ge))
    centres, _ = kmeans_sklearn(ref, CT_CELLS, seed=seed, n_init=10)
    cells = [predict(a, centres) for a in (train, te, ge)]
    return ct_from_cells(train, te, ge, *cells, CT_MIN_GEN / len(ge))


def cached_authpct(cache: PointCache, shown: np.ndarray | None = None) -> float:
    """AuthPct from the point cache's searches, equal to ``authpct(real, fake)`` (``shown``
    None) or ``authpct_shown(real, shown, fake)``."""
    if shown is None:
        d, i = cache.nearest_real()
        return authpct_from_neighbours(cache.knn("real", 1)[:, 0], d, i)
    d, i = knn_cross(cache.fake, cache.real[shown], 1)
    return authpct_from_neighbours(cache.knn("real", 1)[shown, 0], d[:, 0], i[:, 0])


def cached_pca(cache: PointCache, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``dim`` leading principal axes of the real rows (C_T's projection), kept."""
    return cache.memo(
        ("pca", dim), lambda: (cache.real_factor()[0], pca_axes(cache.real_cov(), dim))
    )


class AuthPctMetric(Metric):
    """AuthPct of the samples against the conditioning images (radii among the references; on
    two folders, against the references), in the protocol's default feature space."""

    name = "authpct"
    results = (higher(KEY_AUTHPCT, "AuthPct", "%"),)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_AUTHPCT: cached_authpct(point_cache(ctx), shown_rows(ctx))}


class CTScoreMetric(Metric):
    """C_T with the conditioning images as training set and the run's held-out real images as
    test set (``ct_heldout_per_class`` per class, default all), seeded by the protocol seed."""

    name = "ct"
    results = (neither(KEY_CT, "C_T (two-sided: < 0 copying, > 0 underfitting)"),)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        per_class = int(ctx.options.get("ct_heldout_per_class", 10**9))
        hashes, _ = ctx.heldout(per_class)
        if not hashes:
            log.warning("C_T needs held-out real images and this run has none: ct_score is NaN")
            return {KEY_CT: math.nan}
        test = ctx.features_of(hashes)
        plan = point_cache(ctx)
        shown = shown_rows(ctx)
        if shown is None:  # a context without conditioning images: the references
            shown = np.arange(len(plan.real))
        pca = cached_pca(plan, CT_PCA_DIM) if plan.real.shape[1] > CT_PCA_DIM else None
        try:
            value = ct_score_shown(plan.real, shown, test, plan.fake, int(ctx.seed), pca)
        except CTCellError as exc:
            log.warning("ct_score is NaN: %s", exc)
            value = math.nan
        return {KEY_CT: value}
