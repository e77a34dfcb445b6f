"""95 % intervals for FID, precision and recall by half-sampling without replacement, recentred.

Resampling images with replacement is wrong for these statistics: a point drawn twice is its
own nearest neighbour at distance 0 (k-NN radii shrink, precision/recall shift) and duplicates
distort the covariance, so the intervals do not even contain the estimate. And in a K-shot
protocol the largest source of variance is which conditioning images were drawn, each
carrying all of its samples, which image-level resampling ignores.

Method (metric ``bootstrap``; the name is kept for the option and columns):

* units: classes (a class's references, its conditioning images and all their samples) when
  there are at least ``MIN_CLASSES`` classes; otherwise (e.g. `varbench metrics` on two
  folders, no classes) single images, reals and fakes halved separately;
* each of B replicates takes a random half of the units without replacement (no duplicate
  rows) and recomputes T on it. Halving without replacement has finite-population factor 1/2,
  so for a mean over units Var(T_half) = Var(T_full): the spread of the half-sample values
  estimates the spread of the full estimate, while their level differs (FID's 1/n bias, larger
  k-NN radii), which recentring removes;
* interval: T +- 1.96 x the standard deviation of the half-sample values (their level is
  ignored, only their spread is used), clipped to each statistic's range; it contains T by
  construction and has positive width whenever the half-samples differ. The sd is used rather
  than the replicates' 2.5 / 97.5 % quantiles, which are too unstable at B = 50 (the percentile
  version under-covered precision in the simulation). Precision and recall intervals are at
  least their Wilson score intervals (a proportion at 1.0 that no half-sample moves still has
  binomial uncertainty).

Treating classes as units includes between-class variation of the statistic; with fixed classes
(ImageNet's 1000) that makes the interval conservative. Coverage of E[T] was checked by
simulation (tests/test_intervals_coverage.py, docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from varbench.metrics.base import Metric, neither
from varbench.metrics.gaussian import fid_from_features
from varbench.metrics.pointcache import point_cache
from varbench.metrics.prdc import SubsetPrecisionRecall, precision_recall

KEYS = ("fid_lo", "fid_hi", "precision_lo", "precision_hi", "recall_lo", "recall_hi")
KEY_METHOD = "interval_method"
KEY_REPLICATES = "interval_replicates"
DEFAULT_REPLICATES = 50
MIN_CLASSES = 6
Z95 = 1.959963984540054
METHOD_CLASSES = "class_half_sampling"
METHOD_IMAGES = "image_half_sampling"


def half_samples(
    real_class: np.ndarray, fake_class: np.ndarray, replicates: int, seed: int
) -> tuple[str, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(method, iterator of (real rows, fake rows)) of each half-sample; draws are seeded."""
    real_class = np.asarray(real_class)
    fake_class = np.asarray(fake_class)
    units = np.unique(real_class)
    rng = np.random.default_rng(seed)
    if len(units) >= MIN_CLASSES:

        def by_class() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for _ in range(replicates):
                keep = rng.choice(units, len(units) // 2, replace=False)
                yield (
                    np.flatnonzero(np.isin(real_class, keep)),
                    np.flatnonzero(np.isin(fake_class, keep)),
                )

        return METHOD_CLASSES, by_class()

    def by_image() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n_r, n_f = len(real_class), len(fake_class)
        for _ in range(replicates):
            yield (
                np.sort(rng.choice(n_r, n_r // 2, replace=False)),
                np.sort(rng.choice(n_f, n_f // 2, replace=False)),
            )

    return METHOD_IMAGES, by_image()


def statistics(
    real: np.ndarray, fake: np.ndarray, k: int, plan: SubsetPrecisionRecall | None = None
) -> np.ndarray:
    """(FID, precision, recall) of two feature sets (precision/recall from ``plan`` if given)."""
    pr = plan(k=k) if plan is not None else precision_recall(real, fake, k)
    return np.array([fid_from_features(real, fake), pr["precision"], pr["recall"]])


def half_sample_replicates(
    real: np.ndarray,
    fake: np.ndarray,
    real_class: np.ndarray,
    fake_class: np.ndarray,
    replicates: int,
    seed: int,
    k: int = 3,
    plan: SubsetPrecisionRecall | None = None,
) -> tuple[str, np.ndarray]:
    """(method, (B, 3) array of FID, precision, recall on each half-sample).

    Precision/recall read sub-matrices of distance matrices computed once (``plan``), which
    gives the same values as recomputing them on each half-sample at a fraction of the cost.
    """
    plan = plan or SubsetPrecisionRecall(real, fake)
    method, draws = half_samples(real_class, fake_class, replicates, seed)
    out = []
    for ir, jf in draws:
        pr = plan(ir, jf, k)
        out.append([fid_from_features(real[ir], fake[jf]), pr["precision"], pr["recall"]])
    return method, np.array(out, dtype=np.float64).reshape(replicates, 3)


def wilson(p: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion p observed on n items (contains p, width > 0)."""
    if n <= 0:
        return p, p
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return min(p, centre - half), max(p, centre + half)


def recentred_intervals(
    estimate: np.ndarray, replicates: np.ndarray, n_fake: int = 0, n_real: int = 0
) -> dict[str, float]:
    """95 % intervals estimate +- 1.96 sd of the half-sample values, clipped to each range.

    The sd of the half-sample values is stable with a few dozen replicates, where their
    2.5 / 97.5 % quantiles are not; clipping (FID >= 0, precision/recall in [0, 1]) keeps the
    estimate inside since it already lies in those ranges. Precision (over ``n_fake`` samples)
    and recall (over ``n_real`` references) are widened to at least their Wilson interval, so a
    proportion at 0 or 1 that no half-sample moves still gets an honest, positive width.
    """
    sd = replicates.std(axis=0, ddof=1) if len(replicates) > 1 else np.zeros(3)
    lo, hi = estimate - Z95 * sd, estimate + Z95 * sd
    lo = np.maximum(lo, [0.0, 0.0, 0.0])
    hi = np.minimum(hi, [np.inf, 1.0, 1.0])
    for c, n in ((1, n_fake), (2, n_real)):
        w_lo, w_hi = wilson(float(estimate[c]), n)
        lo[c], hi[c] = min(lo[c], w_lo), max(hi[c], w_hi)
    out: dict[str, float] = {}
    for c in range(3):
        out[KEYS[2 * c]] = float(lo[c])
        out[KEYS[2 * c + 1]] = float(hi[c])
    return out


class BootstrapMetric(Metric):
    """95 % half-sampling intervals of FID, precision and recall (``bootstrap`` = B, 0 disables)."""

    name = "bootstrap"
    results = (
        *(
            neither(k, k.replace("_lo", " (interval low)").replace("_hi", " (interval high)"))
            for k in KEYS
        ),
        neither(KEY_REPLICATES, "interval replicates"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, object]:
        replicates = int(ctx.options.get("bootstrap", DEFAULT_REPLICATES))
        if replicates <= 0:
            return {key: math.nan for key in KEYS} | {KEY_METHOD: "", KEY_REPLICATES: 0.0}
        k = int(ctx.options.get("prc_k", 3))
        shared = point_cache(ctx)  # the fid and prc metrics' own values, not a second copy
        real, fake = shared.real, shared.fake
        plan = SubsetPrecisionRecall(real, fake, cache=shared)
        pr = shared.precision_recall(k)
        estimate = np.array([shared.fid(), pr["precision"], pr["recall"]])
        method, reps = half_sample_replicates(
            real, fake, ctx.real_class, ctx.fake_class, replicates, int(ctx.seed), k, plan
        )
        return recentred_intervals(estimate, reps, len(fake), len(real)) | {
            KEY_METHOD: method,
            KEY_REPLICATES: float(replicates),
        }
