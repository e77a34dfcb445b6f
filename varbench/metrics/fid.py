"""Fréchet distance between Gaussian fits of two feature sets (FID in Inception space, FD elsewhere)."""

from __future__ import annotations

import numpy as np

from varbench.metrics.base import Metric

KEY_FID = "fid"


def fid_features_to_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalised covariance in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (N>=2, D) feature array, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) via symmetric eigendecompositions: real and >= 0 even for singular S."""
    w1, v1 = np.linalg.eigh(sigma1)
    sqrt1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = sqrt1 @ sigma2 @ sqrt1
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def fid_statistics_to_metric(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), clipped at 0."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    return float(max(value, 0.0))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature arrays."""
    return fid_statistics_to_metric(
        *fid_features_to_statistics(real), *fid_features_to_statistics(fake)
    )


class FIDMetric(Metric):
    """FID in the protocol's default feature space."""

    name = "fid"
    keys = (KEY_FID,)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_FID: fid_from_features(ctx.real(), ctx.fake())}
