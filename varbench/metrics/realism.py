"""Realism score of each sample (Kynkäänniemi et al. 2019, eq. 3), as dgm-eval reports it.

R(g) = max over references r with k-NN radius below the median of radius(r) / |g - r|
(Euclidean, k-th nearest other reference, default k = 5 as dgm-eval's ``--nearest_k``; the
spheres with radius at or above the median are dropped, as dgm-eval's ``prdc.py`` does).
Radii and the maximum are exact (``varbench.metrics.knn``).

The authors' code (kynkaat/improved-precision-and-recall-metric, ``ManifoldEstimator``) differs:
it divides *squared* distances (its score is this one squared, up to its eps = 1e-5 in the
denominator), keeps radii *at or below* the 50th percentile (``clamp_to_percentile=50``) and uses
k = 3. The share of scores >= 1 is the same under squaring; the median is the square of this one
(odd counts), the mean is not comparable.

A copy (a sample at distance 0 from a kept reference) scores inf, as in dgm-eval. The summary
keeps them visible: ``realism_frac_copies`` is their share, ``realism_median`` is the median of
all scores with copies ranked above every finite score (inf when more than half are copies;
dgm-eval's ``np.median`` of its per-sample array), ``realism_mean`` is the mean over the samples
that are not copies (nan when all are), ``realism_frac_ge1`` counts copies as >= 1.
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric, higher, lower
from varbench.metrics.knn.cross import max_weighted_inverse
from varbench.metrics.knn.neighbours import knn_exact
from varbench.metrics.pointcache import PointCache, point_cache

KEY_REALISM_MEDIAN = "realism_median"
KEY_REALISM_MEAN = "realism_mean"
KEY_REALISM_FRAC = "realism_frac_ge1"
KEY_REALISM_COPIES = "realism_frac_copies"
DEFAULT_K = 5  # dgm-eval's --nearest_k


def realism_scores(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Realism score (m,) of each fake row against the real set."""
    best, _ = max_weighted_inverse(fake, real, realism_weights(knn_exact(real, k)[0][:, k - 1]))
    return np.sqrt(best)


def realism_weights(radii_sq: np.ndarray) -> np.ndarray:
    """Squared k-NN radii of the references kept (radius below the median), 0 for the rest."""
    radii = np.sqrt(radii_sq)
    return np.where(radii < np.median(radii), radii_sq, 0.0)


def realism_summary(scores: np.ndarray) -> dict[str, float]:
    """Median of all scores (copies, inf, rank highest), mean of the non-copies, share of
    copies (inf) and share of scores >= 1 (copies included); nan for no samples."""
    s = np.asarray(scores, np.float64)
    copies = np.isposinf(s)
    rest = s[~copies]
    nan = float("nan")
    return {
        KEY_REALISM_MEDIAN: float(np.median(s)) if len(s) else nan,
        KEY_REALISM_MEAN: float(rest.mean()) if len(rest) else nan,
        KEY_REALISM_FRAC: float(np.mean(s >= 1.0)) if len(s) else nan,
        KEY_REALISM_COPIES: float(np.mean(copies)) if len(s) else nan,
    }


def cached_realism_scores(cache: PointCache, k: int = DEFAULT_K) -> np.ndarray:
    """Realism score of each fake from the point cache, equal to ``realism_scores(real, fake, k)``."""

    def make() -> np.ndarray:
        pr, pf = cache.prepared()
        w = realism_weights(cache.knn("real", k)[:, k - 1])
        best, _ = max_weighted_inverse(
            cache.fake, cache.real, w, (pf, pr), cache.fake_rows_screen()
        )
        return np.sqrt(best)

    return cache.memo(("realism", k), make)


class RealismMetric(Metric):
    """Per-sample realism (k = ``realism_k``, default 5, dgm-eval's) in the protocol's default feature space."""

    name = "realism"
    results = (
        higher(KEY_REALISM_MEDIAN, "realism (median)"),
        higher(KEY_REALISM_MEAN, "realism (mean)"),
        higher(KEY_REALISM_FRAC, "fraction with realism >= 1"),
        lower(KEY_REALISM_COPIES, "fraction of copies (realism inf)"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        self._k = int(ctx.options.get("realism_k", DEFAULT_K))
        self._scores = cached_realism_scores(point_cache(ctx), self._k)
        return realism_summary(self._scores)

    def artifacts(self, ctx) -> dict[str, object]:
        return {
            "k": self._k,
            "per_sample": [float(v) if np.isfinite(v) else None for v in self._scores],
        }
