"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel over random subsets.

Same as torch-fidelity's ``kid_features_to_metric`` (generated set = its input 1): kernel
(<x, y>/d + 1)^3, ``np.random.RandomState(2020)``, per subset one ``choice`` from the fakes then
one from the reals, unbiased within-set terms and the full cross mean, population std over
subsets. Unlike torch-fidelity (which refuses), a subset size larger than a set is capped at the
smaller set and the cap is reported as ``kid_subset_size``. clean-fid's ``kernel_distance`` is
the same estimator with the same cap, but draws from the unseeded global ``np.random`` (its
``feats2`` first) and reports no std; seeded alike it gives the same mean.
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric, lower, neither

KEY_KID_MEAN = "kid"
KEY_KID_STD = "kid_std"
KEY_KID_SUBSET_SIZE = "kid_subset_size"


def polynomial_mmd2(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 with kernel (gamma <x, y> + coef0)^degree, gamma defaulting to 1/d."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid_features_to_metric(
    fake: np.ndarray,
    real: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> dict[str, float]:
    """Mean/std of MMD^2 over ``subsets`` draws; subset size capped at the smaller set's size."""
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        f = fake[rng.choice(len(fake), size, replace=False)]
        r = real[rng.choice(len(real), size, replace=False)]
        mmds[i] = polynomial_mmd2(f, r, degree, gamma, coef0)
    return {
        KEY_KID_MEAN: float(mmds.mean()),
        KEY_KID_STD: float(mmds.std()),
        KEY_KID_SUBSET_SIZE: size,
    }


class KIDMetric(Metric):
    """KID with torch-fidelity's defaults (100 subsets of 1000, capped at the set size)."""

    name = "kid"
    results = (
        lower(KEY_KID_MEAN, "KID"),
        neither(KEY_KID_STD, "KID std"),
        neither(KEY_KID_SUBSET_SIZE, "KID subset size"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return kid_features_to_metric(
            ctx.fake(),
            ctx.real(),
            subsets=int(ctx.options.get("kid_subsets", 100)),
            subset_size=int(ctx.options.get("kid_subset_size", 1000)),
        )
