"""scikit-learn's seeded k-means (greedy k-means++, Lloyd), transcribed: C_T cells and palettes.

Both references varbench matches use scikit-learn's ``KMeans``: dgm-eval's C_T (``n_init=10``)
and Pylette's palettes (``palette_mode="rival"``: ``n_init=10``, scikit-learn's default before
1.4; ``"pylette6"``: ``n_init="auto"``, one run). Deterministic: the same rows and seed give
the same centres; each Lloyd step is one small product and label sums added in row order, so
iterations are cheap and capped at ``max_iter`` as scikit-learn's.
"""

from __future__ import annotations

import numpy as np


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


def _label_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, d) sums of the rows of each label, each added in row order (as a sequential loop)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a serial loop; no OpenMP team spinning beside numpy's BLAS
    try:
        out = torch.zeros((k, x.shape[1]), dtype=torch.float64)
        return out.index_add_(0, torch.from_numpy(labels), torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)


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
    sums = _label_sums(x, labels, k)
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
    x: np.ndarray, k: int, seed: int, max_iter: int = 300, tol: float = 1e-4, n_init: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Centres and labels of scikit-learn's ``KMeans(k, init="k-means++", n_init=n_init,
    random_state=seed).fit`` (Lloyd, float64), transcribed step by step.

    Same expressions and order as scikit-learn 1.x: data centred on its mean, tolerance
    ``tol * mean(var(x, axis=0))``, greedy k-means++ from ``RandomState(seed)``, Lloyd until the
    labels stop changing or the squared centre shift falls to the tolerance (then one more
    labelling). With ``n_init`` > 1 the runs draw their seeds one after another from the same
    RandomState and a later run replaces the best only when its inertia is lower and its
    clustering differs (scikit-learn's rule). For rows whose mean is exact (e.g. 2^16 integer
    pixels) every centre sum is exact, so the centres do not depend on summation order or
    thread count.
    """
    x = np.array(x, np.float64, order="C")
    n = len(x)
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least {k} rows, got {n}")
    tol_abs = np.mean(np.var(x, axis=0)) * tol if tol else 0
    x_mean = x.mean(axis=0)
    x -= x_mean
    x_sq = np.einsum("ij,ij->i", x, x)
    rs = np.random.RandomState(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, int(n_init))):
        centres, labels = _sk_lloyd(x, _sk_plus_plus(x, k, x_sq, rs), max_iter, tol_abs)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or (inertia < best[2] and not _same_clustering(labels, best[1])):
            best = (centres, labels, inertia)
    return best[0] + x_mean, best[1]


def _sk_lloyd(
    x: np.ndarray, centres: np.ndarray, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``_kmeans_single_lloyd``: iterate to strict or tolerance convergence."""
    labels_old = np.full(len(x), -1)
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
    return centres, labels


def _same_clustering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings are equal up to a permutation of labels (scikit-learn's test)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]


def predict(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``KMeans.predict``: each row's centre by ``||c||^2 - 2 x.c`` (first minimum wins)."""
    return _sk_lloyd_step(np.asarray(x, np.float64), np.asarray(centres, np.float64), False)[0]
