"""Inception Score from classifier logits, with torch-fidelity's split and shuffle semantics.

Rows are permuted by ``np.random.RandomState(seed).permutation(N)`` (torch-fidelity's
``samples_shuffle`` with its default ``rng_seed`` 2020), split into ``splits`` contiguous chunks
at ``i * N // splits``, and each chunk scores exp(mean_i KL(p_i || mean p)); the result is the
mean and population standard deviation over chunks. Everything is float64.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from varbench.metrics.base import Metric, higher, neither

KEY_ISC = "isc"
KEY_ISC_STD = "isc_std"


def inception_score(
    logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> dict[str, float]:
    """Mean and std over ``splits`` of exp(E_x KL(p(y|x) || p(y))) with p = softmax(logits)."""
    x = np.asarray(logits, np.float64)
    if x.ndim != 2 or x.shape[0] < splits:
        raise ValueError(f"need (N >= splits={splits}, classes) logits, got shape {x.shape}")
    n = x.shape[0]
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    log_p = log_softmax(x, axis=1)
    p = np.exp(log_p)
    scores = np.empty(splits)
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        log_q = np.log(p[lo:hi].mean(axis=0))
        kl = (p[lo:hi] * (log_p[lo:hi] - log_q)).sum(axis=1)
        scores[i] = np.exp(kl.mean())
    return {KEY_ISC: float(scores.mean()), KEY_ISC_STD: float(scores.std())}


class ISCMetric(Metric):
    """Inception Score of the samples (10 splits) from the inception encoder's logits."""

    name = "isc"
    results = (higher(KEY_ISC, "Inception Score"), neither(KEY_ISC_STD, "Inception Score std"))
    encoders = ("inception",)

    def compute(self, ctx) -> dict[str, float]:
        return inception_score(ctx.fake(encoder="inception", output="logits"))
