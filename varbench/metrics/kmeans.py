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


def _sk_sq_dist(a: np.ndarray, x: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_euclidean_distances(a, x, squared=True)`` for float64, same expression."""
    d = -2 * (a @ x.T)
    d += np.einsum("ij,ij->i", a, a)[:, None]
    d += x_sq[None, :]
    return np.maximum(d, 0, out=d)


def _sk_plus_plus(x: np.ndarray, k: int, x_sq: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
    """scikit-learn's greedy k-means++ seeding (2 + log k local trials), unit sample weights."""
    n = len(x)
    w = np.ones(n)
    trials = 2 + int(np.log(k))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rs.choice(n, p=w / w.sum())]
    closest = _sk_sq_dist(centres[0, None], x, x_sq)
    pot = closest @ w
    for c in range(1, k):
        rand = rs.uniform(size=trials) * pot
        cand = np.searchsorted(np.cumsum(w * closest), rand)
        np.clip(cand, None, closest.size - 1, out=cand)
        dist = _sk_sq_dist(x[cand], x, x_sq)
        np.minimum(closest, dist, out=dist)
        cand_pot = dist @ w.reshape(-1, 1)
        best = np.argmin(cand_pot)
        pot = cand_pot[best]
        closest = dist[best]
        centres[c] = x[cand[best]]
    return centres


def _sk_lloyd_step(
    x: np.ndarray, centres: np.ndarray, update: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One Lloyd E(+M) step as scikit-learn's ``lloyd_iter_chunked_dense`` (unit weights).

    Labels from ``||c||^2 - 2 x.c`` (the ``||x||^2`` term dropped; first minimum wins); new
    centres are the label means, an empty cluster takes the point farthest from its centre
    (scikit-learn's relocation) or, when every point sits on its centre, the largest cluster's
    centre; returns labels, new centres and each centre's shift.
    """
    k, d = centres.shape
    dist = np.einsum("ij,ij->i", centres, centres)[None, :] + (-2.0) * (x @ centres.T)
    labels = np.argmin(dist, axis=1)
    if not update:
        return labels, None, None
    weight = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(d)], 1)
    empty = np.where(weight == 0)[0]
    if len(empty):
        far_d = ((x - centres[labels]) ** 2).sum(axis=1)
        far = np.argpartition(far_d, -len(empty))[: -len(empty) - 1 : -1]
        if np.max(far_d) != 0:
            for new, i in zip(empty, far, strict=True):
                old = labels[i]
                sums[old] -= x[i]
                sums[new] = x[i]
                weight[new] = 1.0
                weight[old] -= 1.0
    top = int(np.argmax(weight))
    for j in range(k):  # in place and in order, as scikit-learn's ``_average_centers``
        if weight[j] > 0:
            sums[j] *= 1.0 / weight[j]
        else:
            sums[j] = sums[top]
    shift = np.sqrt(((sums - centres) ** 2).sum(axis=1))
    return labels, sums, shift


def kmeans_sklearn(
    x: np.ndarray, k: int, seed: int, max_iter: int = 300, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Centres and labels of scikit-learn's ``KMeans(k, init="k-means++", n_init="auto" (=1),
    random_state=seed).fit`` (Lloyd, float64), transcribed step by step.

    Same expressions and order as scikit-learn 1.x: data centred on its mean, tolerance
    ``tol * mean(var(x, axis=0))``, greedy k-means++ from ``RandomState(seed)``, Lloyd until the
    labels stop changing or the squared centre shift falls to the tolerance (then one more
    labelling). For rows whose mean is exact (e.g. 2^16 integer pixels) every centre sum is exact,
    so the centres do not depend on summation order or thread count.
    """
    x = np.array(x, np.float64, order="C")
    n = len(x)
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least {k} rows, got {n}")
    tol_abs = np.mean(np.var(x, axis=0)) * tol if tol else 0
    x_mean = x.mean(axis=0)
    x -= x_mean
    x_sq = np.einsum("ij,ij->i", x, x)
    centres = _sk_plus_plus(x, k, x_sq, np.random.RandomState(seed))
    labels_old = np.full(n, -1)
    strict = False
    for _ in range(max_iter):
        labels, centres, shift = _sk_lloyd_step(x, centres)
        if np.array_equal(labels, labels_old):
            strict = True
            break
        if (shift**2).sum() <= tol_abs:
            break
        labels_old = labels
    if not strict:
        labels, _, _ = _sk_lloyd_step(x, centres, update=False)
    return centres + x_mean, labels
