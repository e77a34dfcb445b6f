"""Gaussian statistics engine: Fréchet distances between Gaussian fits of two feature sets
(FID in Inception space, FD elsewhere) and FD-infinity's extrapolation; imports no metric.

tr sqrt(S1 S2) is the sum of square roots of the eigenvalues of F^T S2 F for any factor
S1 = F F^T. A pivoted Cholesky factor (LAPACK ``pstrf``) is cheap, exists for singular
(N < d) covariances, and makes F^T S2 F symmetric positive semi-definite, so the result is
real and non-negative; everything is float64. About 15x faster than ``scipy.linalg.sqrtm`` at
d = 2048 and equal to it within 1e-10 relative on full-rank covariances.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def fid_features_to_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalised covariance in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (N>=2, D) feature array, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def psd_factor(sigma: np.ndarray) -> np.ndarray:
    """F (d, r) with F F^T = sigma up to rounding: pivoted Cholesky, rank-revealing for singular sigma."""
    s = np.asarray(sigma, np.float64)
    if not np.any(np.diag(s) > 0):
        return np.zeros((s.shape[0], 0))
    c, piv, rank, info = lapack.dpstrf(s, lower=1, tol=-1.0)
    if info < 0:
        raise ValueError(f"pstrf failed (info={info})")
    factor = np.empty((s.shape[0], rank))
    factor[piv - 1] = np.tril(c)[:, :rank]
    return factor


def _sqrt_eig_sum(m: np.ndarray, symmetric: bool = False) -> float:
    """Sum of sqrt of the eigenvalues of a symmetric PSD matrix, numerical zeros set to 0.

    Eigenvalues below n * eps * max are rounding noise of zero eigenvalues (singular
    covariances); their square roots (about sqrt(eps) each) would otherwise add an error far
    above the float64 rounding of the rest, so they count as exactly 0. ``symmetric``: m is
    exactly symmetric already (then (m + m^T) / 2 equals m bit for bit and is skipped).
    """
    if m.size == 0:
        return 0.0
    w = np.linalg.eigvalsh(m if symmetric else (m + m.T) / 2.0)
    top = float(w.max()) if len(w) else 0.0
    w = np.where(w > len(w) * np.finfo(np.float64).eps * max(top, 0.0), w, 0.0)
    return float(np.sqrt(w).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(S1 S2)) = sum sqrt eig(F^T S2 F) with S1 = F F^T: real and >= 0 even for singular S."""
    f = psd_factor(sigma1)
    return _sqrt_eig_sum(f.T @ np.asarray(sigma2, np.float64) @ f)


def covariance_route(n1: int, n2: int, d: int) -> bool:
    """Whether tr sqrt(S1 S2) is cheaper through d x d covariances than through A1 A2^T.

    Costs in multiply-adds of a product. LAPACK's values-only SVD of an n x n matrix costs
    about 20 n^3 of them here (measured: 0.34 s at n = 1000, 2.7 s at 2000, 6.1 s at 2500,
    against 0.76, 1.8 and 2.1 s by covariances at d = 2048), so from n of about 1,800 at
    d = 2048 (about 700 at d = 768) the covariance route is the faster one, as measured on
    both sides of each crossover; both routes are exact to about 1e-15 relative.
    """
    small = min(n1, n2)
    sample_cost = n1 * n2 * d + small * small * max(n1, n2) * 20
    cov_cost = (n1 + n2) * d * d + 12 * d**3
    return sample_cost >= cov_cost


def trace_sqrt_from_factors(
    a1: np.ndarray, a2: np.ndarray, factor1: np.ndarray | None = None
) -> float:
    """tr(sqrt(S1 S2)) for S_i = A_i^T A_i, A_i (n_i, d), by the cheaper of two exact routes.

    With few rows, the nonzero eigenvalues of S1 S2 are the squared singular values of A1 A2^T
    (n1 x n2); with many rows, form the d x d covariances and use ``trace_sqrt_product``.
    ``factor1``: ``psd_factor(A1^T A1)`` when already computed (shared with FD-infinity);
    the result is bit-identical.
    """
    (n1, d), n2 = a1.shape, a2.shape[0]
    if not covariance_route(n1, n2, d):
        s = np.linalg.svd(a1 @ a2.T, compute_uv=False)
        return float(s.sum())
    f = psd_factor(a1.T @ a1) if factor1 is None else factor1
    return _sqrt_eig_sum(f.T @ (a2.T @ a2) @ f)


def fid_statistics_to_metric(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), clipped at 0."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    return float(max(value, 0.0))


def centred_factor(
    x: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, A) with A^T A the (N-1)-normalised covariance; ``weights`` are row multiplicities.

    Zero-weight rows are dropped, so a bootstrap resample costs only its distinct rows.
    """
    x = np.asarray(x, np.float64)
    if weights is None:
        n = x.shape[0]
        mu = x.mean(axis=0)
        return mu, (x - mu) / np.sqrt(n - 1)
    w = np.asarray(weights, np.float64)
    keep = w > 0
    n = w.sum()
    xk, wk = x[keep], w[keep]
    mu = wk @ xk / n
    return mu, (xk - mu) * np.sqrt(wk / (n - 1))[:, None]


def fid_from_factors(
    mu1: np.ndarray,
    a1: np.ndarray,
    mu2: np.ndarray,
    a2: np.ndarray,
    factor1: np.ndarray | None = None,
) -> float:
    """FID from means and covariance factors (see ``centred_factor``), clipped at 0.

    ``factor1``: ``psd_factor(a1.T @ a1)`` when already computed (bit-identical result).
    """
    diff = mu1 - mu2
    value = (
        diff @ diff
        + np.einsum("ij,ij->", a1, a1)
        + np.einsum("ij,ij->", a2, a2)
        - 2.0 * trace_sqrt_from_factors(a1, a2, factor1)
    )
    return float(max(value, 0.0))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature arrays (N >= 2 rows each)."""
    for x in (real, fake):
        if np.ndim(x) != 2 or len(x) < 2:
            raise ValueError(f"need a (N>=2, D) feature array, got shape {np.shape(x)}")
    return fid_from_factors(*centred_factor(real), *centred_factor(fake))


FD_INF_POINTS = 15


def fd_infinity_sizes(n_fake: int, num_points: int = FD_INF_POINTS) -> np.ndarray:
    """dgm-eval's sample sizes: ``num_points`` evenly from min(5000, max(n // 10, 2)) to n."""
    return np.linspace(min(5000, max(n_fake // 10, 2)), n_fake, num_points).astype(np.int32)


def fd_infinity(
    real: np.ndarray,
    fake: np.ndarray,
    num_points: int = FD_INF_POINTS,
    seed: int = 0,
    real_stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    fid: float | None = None,
) -> float:
    """FD extrapolated to infinitely many samples (Chong & Forsyth 2020, as dgm-eval).

    FD_N of N generated rows against all real rows at dgm-eval's 15 sizes, least-squares line
    in 1/N, value at 1/N = 0. The N rows are the first N of one seeded permutation (each a
    uniform draw without replacement, as dgm-eval's), so the covariances are running sums.

    No matrix square root per size: with S1 = F F^T (``psd_factor``, computed once and shared
    with FID), tr sqrt(S1 S2) = sum sqrt eig(F^T S2 F), and F^T S2 F of every size comes from
    running sums of the projected rows Y = (X - c) F (one n x d x r product for all sizes); so
    each size is one symmetric eigenvalue problem of size min(r, N). The largest size is all
    generated rows: its FD is the FID (``fid_from_factors``, same bits as the fid metric).
    ``real_stats``: (mean, centred factor, psd factor) of ``real`` when already computed;
    ``fid``: the FID of (real, fake) when already computed.
    """
    x = np.asarray(fake, np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"need a (N>=4, D) feature array, got shape {x.shape}")
    if real_stats is None:
        mu1, a1 = centred_factor(real)
        real_stats = (mu1, a1, psd_factor(a1.T @ a1))
    mu1, a1, factor = real_stats
    tr1 = float(np.einsum("ij,ij->", a1, a1))
    if fid is None:
        fid = fid_from_factors(mu1, a1, *centred_factor(x), factor1=factor)
    sizes = fd_infinity_sizes(len(x), num_points)
    centre = x.mean(axis=0)  # a common shift keeps the running sums free of cancellation
    xc = x[np.random.default_rng(seed).permutation(len(x))] - centre
    y = xc @ factor  # (n, r): every row projected on the real factor once
    r = factor.shape[1]
    s1 = np.zeros(x.shape[1])
    sq = 0.0
    yy = np.zeros((r, r))
    ys = np.zeros(r)
    done = 0
    fds = []
    for n in sizes:
        if n == len(x):
            fds.append(fid)
            continue
        chunk, ychunk = xc[done:n], y[done:n]
        s1 += chunk.sum(axis=0)
        sq += float(np.einsum("ij,ij->", chunk, chunk))
        yy += ychunk.T @ ychunk
        ys += ychunk.sum(axis=0)
        done = n
        mean_c = s1 / n  # mean of the N rows minus the shift
        diff = mu1 - (mean_c + centre)
        tr2 = (sq - n * float(mean_c @ mean_c)) / (n - 1)
        if n - 1 < r:  # N x N Gram of the centred projected rows: same nonzero eigenvalues
            yc = y[:n] - ys / n
            m = yc @ yc.T / (n - 1)
        else:
            m = (yy - n * np.outer(ys / n, ys / n)) / (n - 1)
        # exactly symmetric: syrk products (mirrored triangles) and an outer product
        fds.append(diff @ diff + tr1 + tr2 - 2.0 * _sqrt_eig_sum(m, symmetric=True))
    slope, intercept = np.polyfit(1.0 / sizes.astype(np.float64), np.asarray(fds), 1)
    return float(intercept)
