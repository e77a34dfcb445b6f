"""Seeded k-means (k-means++ seeding, Lloyd iterations): cells for C_T and colour palettes.

Deterministic: the same rows and seed give the same centres. Distances to the (few) centres
are float64 direct differences; Lloyd iterations stop when no label changes or the centres
settle.
"""

from __future__ import annotations

import numpy as np


def _sq_to_centres(
    x: np.ndarray, centres: np.ndarray, x_sq: np.ndarray | None = None
) -> np.ndarray:
    """(n, k) squared distances of rows to the (few) centres by direct differences."""
    out = np.zeros((len(x), len(centres)))
    for j in range(x.shape[1]):
        diff = x[:, j, None] - centres[None, :, j]
        out += diff * diff
    return out


def _plus_plus(x, w, k: int, x_sq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to w D^2."""
    n = len(x)
    cum_w = np.cumsum(w)
    first = min(int(np.searchsorted(cum_w, rng.random() * cum_w[-1], side="right")), n - 1)
    centres = [x[first]]
    closest = _sq_to_centres(x, x[first][None], x_sq)[:, 0]
    for _ in range(1, k):
        mass = np.cumsum(w * closest)
        if mass[-1] <= 0:  # fewer distinct rows than k: repeat a row
            centres.append(x[rng.integers(n)])
            continue
        j = min(int(np.searchsorted(mass, rng.random() * mass[-1], side="right")), n - 1)
        centres.append(x[j])
        closest = np.minimum(closest, _sq_to_centres(x, x[j][None], x_sq)[:, 0])
    return np.asarray(centres)


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Centres (k, d), labels (n,) and inertia of the best of ``n_init`` seeded runs.

    ``weights``: row multiplicities (e.g. counts of distinct pixel colours), equivalent to
    repeating rows. Iterations stop when no label changes or the centres move by less than
    ``tol`` times the mean per-dimension variance (scikit-learn's criterion).
    """
    x = np.asarray(x, np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    if len(x) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} rows, got {len(x)}")
    x_sq = np.einsum("ij,ij->i", x, x)
    mean = w @ x / w.sum()
    tol_abs = tol * float(np.mean(w @ (x - mean) ** 2 / w.sum()))
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        centres = _plus_plus(x, w, k, x_sq, rng)
        labels = np.full(len(x), -1)
        for _ in range(max_iter):
            new = np.argmin(_sq_to_centres(x, centres, x_sq), axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, weights=w, minlength=k)
            sums = np.stack(
                [np.bincount(labels, weights=w * x[:, j], minlength=k) for j in range(x.shape[1])],
                1,
            )
            filled = counts > 0
            old = centres.copy()
            centres[filled] = sums[filled] / counts[filled, None]
            if float(((centres - old) ** 2).sum()) <= tol_abs:
                labels = np.argmin(_sq_to_centres(x, centres, x_sq), axis=1)
                break
        d = _sq_to_centres(x, centres, x_sq)[np.arange(len(x)), labels]
        inertia = float(w @ d)
        if best is None or inertia < best[2]:
            best = (centres.copy(), labels.copy(), inertia)
    return best


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row (ties: lowest index)."""
    x = np.asarray(x, np.float64)
    return np.argmin(_sq_to_centres(x, centres, np.einsum("ij,ij->i", x, x)), axis=1)
