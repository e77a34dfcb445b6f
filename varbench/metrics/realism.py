"""Realism score of each sample (Kynkäänniemi et al. 2019, eq. 3), as dgm-eval reports it.

R(g) = max over references r with k-NN radius below the median of radius(r) / |g - r|
(Euclidean, k-th nearest other reference; half of the spheres, the largest, are dropped as
the paper does). Radii and the maximum are exact (``varbench.metrics.knn``); a sample equal
to an eligible reference gets inf. The result columns are the median and mean of the finite
scores and the share of samples with R >= 1 (inside some kept sphere).
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric, higher
from varbench.metrics.knn.cross import max_weighted_inverse
from varbench.metrics.knn.neighbours import knn_exact
from varbench.metrics.pointcache import PointCache, point_cache

KEY_REALISM_MEDIAN = "realism_median"
KEY_REALISM_MEAN = "realism_mean"
KEY_REALISM_FRAC = "realism_frac_ge1"


def realism_scores(real: np.ndarray, fake: np.ndarray, k: int = 3) -> np.ndarray:
    """Realism score (m,) of each fake row against the real set."""
    best, _ = max_weighted_inverse(fake, real, realism_weights(knn_exact(real, k)[0][:, k - 1]))
    return np.sqrt(best)


def realism_weights(radii_sq: np.ndarray) -> np.ndarray:
    """Squared k-NN radii of the references kept (radius below the median), 0 for the rest."""
    radii = np.sqrt(radii_sq)
    return np.where(radii < np.median(radii), radii_sq, 0.0)


def realism_summary(scores: np.ndarray) -> dict[str, float]:
    """Median and mean of finite scores; share of scores >= 1."""
    s = np.asarray(scores, np.float64)
    fin = s[np.isfinite(s)]
    return {
        KEY_REALISM_MEDIAN: float(np.median(fin)) if len(fin) else float("nan"),
        KEY_REALISM_MEAN: float(fin.mean()) if len(fin) else float("nan"),
        KEY_REALISM_FRAC: float(np.mean(s >= 1.0)) if len(s) else float("nan"),
    }


def cached_realism_scores(cache: PointCache, k: int = 3) -> np.ndarray:
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
    """Per-sample realism (k = ``realism_k``, default 3) in the protocol's default feature space."""

    name = "realism"
    results = (
        higher(KEY_REALISM_MEDIAN, "realism (median)"),
        higher(KEY_REALISM_MEAN, "realism (mean)"),
        higher(KEY_REALISM_FRAC, "fraction with realism >= 1"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        self._k = int(ctx.options.get("realism_k", 3))
        self._scores = cached_realism_scores(point_cache(ctx), self._k)
        return realism_summary(self._scores)

    def artifacts(self, ctx) -> dict[str, object]:
        return {
            "k": self._k,
            "per_sample": [float(v) if np.isfinite(v) else None for v in self._scores],
        }
