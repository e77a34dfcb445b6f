"""Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Ball decisions and k-NN radii come from the exact engine in ``varbench.metrics.knn``.

Conventions: inclusive ``<=`` everywhere (torch-fidelity's precision/recall uses ``<=``; the
clovaai ``prdc`` package uses strict ``<`` for all four numbers, which makes copies at distance 0
miss when the radius is 0).
"""

from __future__ import annotations

import math

import numpy as np

from varbench.metrics.base import Metric, higher
from varbench.metrics.knn.balls import ball_counts
from varbench.metrics.knn.neighbours import approx_sq_dists, knn_exact, subset
from varbench.metrics.knn.screening import ScreenSet, screen_sets
from varbench.metrics.pointcache import PointCache, point_cache

KEY_PRECISION = "precision"
KEY_RECALL = "recall"
KEY_DENSITY = "density"
KEY_COVERAGE = "coverage"


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Precision: fraction of fakes inside the real manifold; recall: reals inside the fake one."""
    pr, pf = screen_sets(real, fake)
    return _pr_prepared(pr, pf, k)


def _pr_prepared(pr: ScreenSet, pf: ScreenSet, k: int, drr=None, dff=None, drf=None):
    rr = knn_exact(pr.x, k, pr, drr)[0][:, k - 1]
    rf = knn_exact(pf.x, k, pf, dff)[0][:, k - 1]
    c = ball_counts(pr, pf, ra=rr, rb=rf, approx=drf)
    return {KEY_PRECISION: float((c.b_in_a > 0).mean()), KEY_RECALL: float((c.a_in_b > 0).mean())}


class SubsetPrecisionRecall:
    """Precision/recall of many row subsets of one (real, fake) pair, e.g. half-samples.

    The float32 distance matrices are computed once (when they fit ``max_bytes``) and each
    subset reads its sub-matrices; results equal ``precision_recall`` on the subset exactly,
    since every decision is still certified or re-decided with float64 differences.
    """

    def __init__(
        self,
        real: np.ndarray,
        fake: np.ndarray,
        max_bytes: float = 3 * 2**30,
        cache: PointCache | None = None,
    ):
        """``cache``: the point's ``PointCache`` for these features, whose prepared sets and
        real x fake matrix are reused (same values: the same ``screen_sets`` of the same rows)."""
        self.pr, self.pf = screen_sets(real, fake) if cache is None else cache.prepared()
        n, m = len(self.pr.x), len(self.pf.x)
        self.cached = 4.0 * (n * n + m * m + n * m) <= max_bytes
        if self.cached:
            self.drr = approx_sq_dists(self.pr)
            self.dff = approx_sq_dists(self.pf)
            drf = None if cache is None else cache.screen()
            self.drf = approx_sq_dists(self.pr, self.pf) if drf is None else drf

    def __call__(
        self, real_rows: np.ndarray | None = None, fake_rows: np.ndarray | None = None, k: int = 3
    ) -> dict[str, float]:
        """Precision/recall of real[real_rows] against fake[fake_rows] (all rows when None)."""
        ir = np.arange(len(self.pr.x)) if real_rows is None else np.asarray(real_rows)
        jf = np.arange(len(self.pf.x)) if fake_rows is None else np.asarray(fake_rows)
        pr, pf = subset(self.pr, ir), subset(self.pf, jf)
        if not self.cached:
            return _pr_prepared(pr, pf, k)
        return _pr_prepared(
            pr, pf, k, self.drr[np.ix_(ir, ir)], self.dff[np.ix_(jf, jf)], self.drf[np.ix_(ir, jf)]
        )


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density: mean number of real k-NN balls holding a fake, over k; coverage: real balls holding a fake."""
    pr, pf = screen_sets(real, fake)
    rr = knn_exact(pr.x, k, pr)[0][:, k - 1]
    c = ball_counts(pr, pf, ra=rr)
    return {
        KEY_DENSITY: float(c.b_in_a.sum() / (k * len(pf.x))),
        KEY_COVERAGE: float((c.a_hit > 0).mean()),
    }


def per_class_precision_recall(
    real: np.ndarray, fake: np.ndarray, real_class: np.ndarray, fake_class: np.ndarray, k: int = 3
) -> dict[str, list]:
    """Precision/recall within each class (class-c references vs class-c samples); NaN if a side has <= k rows."""
    classes = sorted(set(np.unique(real_class).tolist()) | set(np.unique(fake_class).tolist()))
    out: dict[str, list] = {
        "class_index": [],
        "n_real": [],
        "n_fake": [],
        "precision": [],
        "recall": [],
    }
    for c in classes:
        r, f = real[real_class == c], fake[fake_class == c]
        if len(r) > k and len(f) > k:
            pr = precision_recall(r, f, k)
            prec, rec = pr[KEY_PRECISION], pr[KEY_RECALL]
        else:
            prec = rec = math.nan
        out["class_index"].append(int(c))
        out["n_real"].append(int(len(r)))
        out["n_fake"].append(int(len(f)))
        out["precision"].append(prec)
        out["recall"].append(rec)
    return out


def _json_floats(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


class PrecisionRecallMetric(Metric):
    """Precision and recall (k = ``prc_k``, default 3) in the protocol's default feature space.

    Artifact ``precision_recall.json``: per-class precision and recall (references of class c vs
    samples of class c), ``null`` where a class has <= k rows on a side.
    """

    name = "precision_recall"
    results = (higher(KEY_PRECISION, "precision"), higher(KEY_RECALL, "recall"))
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return point_cache(ctx).precision_recall(k=int(ctx.options.get("prc_k", 3)))

    def artifacts(self, ctx) -> dict[str, object]:
        k = int(ctx.options.get("prc_k", 3))
        per = per_class_precision_recall(ctx.real(), ctx.fake(), ctx.real_class, ctx.fake_class, k)
        labels = list(getattr(ctx, "class_labels", []) or [])
        per["class_label"] = [labels[i] if i < len(labels) else str(i) for i in per["class_index"]]
        per["precision"] = _json_floats(per["precision"])
        per["recall"] = _json_floats(per["recall"])
        return {"k": k, "per_class": per}


class DensityCoverageMetric(Metric):
    """Density and coverage (k = ``dc_k``, default 5) in the protocol's default feature space."""

    name = "density_coverage"
    results = (higher(KEY_DENSITY, "density"), higher(KEY_COVERAGE, "coverage"))
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return point_cache(ctx).density_coverage(k=int(ctx.options.get("dc_k", 5)))
