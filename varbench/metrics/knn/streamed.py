"""Streamed search with exclusions, for bases too large for memory (e.g. LPIPS phi)."""

from collections.abc import Sequence

import numpy as np

from varbench.metrics.knn import screening


# -- streamed search with exclusions (bases too large for memory, e.g. LPIPS phi) ---------------
def float64_eps(dim: int) -> float:
    """Certified relative error of float64 squared distances |q|^2 + |b|^2 - 2 q.b (any order).

    Dot product and norms each err by at most gamma_d (|q|^2 + |b|^2) for d-term sums, plus a few
    roundings to combine them; same form as ``screen_eps`` with the float64 unit roundoff.
    """
    return 1.25 * (2 * dim + 32) * screening.U64


def nearest_streamed(
    queries: np.ndarray,
    base,
    exclude: Sequence[np.ndarray],
    device: str = "cpu",
    identical: Sequence[np.ndarray] | None = None,
    ref_chunk: int = 64,
    pair_chunk: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest base row (squared L2) of each query, skipping the rows ``exclude[i]``.

    ``base`` is anything sliceable by rows (an array or a ``RowFile``), read ``ref_chunk`` rows at
    a time. Each chunk: one float64 matrix product with a certified error bound; every pair whose
    lower bound is within the running best upper bound is recomputed by direct float64
    differences (no cancellation), and the smallest recomputed distance wins (lowest index on
    ties). So ties or rounding of the product cannot pick a wrong neighbour.
    The product runs on ``device`` (torch float64; a GPU makes it seconds instead of hours).
    ``identical[i]``: base rows whose image has query i's pixels (by hash); the lowest of them
    not excluded is the neighbour at distance exactly 0, whatever the float path computes.
    Returns (distances, indices); (nan, -1) where every base row is excluded.
    """
    import torch  # its float64 GEMM; OpenBLAS via numpy is 30x slower for some thin shapes

    q = np.ascontiguousarray(queries, np.float64)
    qt = torch.from_numpy(q).to(device)
    nq = len(q)
    qn = np.einsum("ij,ij->i", q, q)
    eps = float64_eps(q.shape[1]) if nq else 0.0
    upper = np.full(nq, np.inf)  # certified upper bound of the true minimum
    best = np.full(nq, np.inf)
    where = np.full(nq, -1, dtype=np.int64)
    for s in range(0, len(base), ref_chunk):
        b = np.asarray(base[s : s + ref_chunk], np.float64)
        bn = np.einsum("ij,ij->i", b, b)
        prod = (qt @ torch.from_numpy(b).to(device).T).cpu().numpy()
        d = qn[:, None] + bn[None, :] - 2.0 * prod
        tol = eps * (qn[:, None] + bn[None, :]) + 1e-300
        for i, ex in enumerate(exclude):
            local = ex[(ex >= s) & (ex < s + len(b))] - s
            d[i, local] = np.inf
        upper = np.minimum(upper, (d + tol).min(axis=1))
        ci, cj = np.nonzero((d - tol <= upper[:, None]) & np.isfinite(d))
        exact = np.empty(len(ci))
        for t in range(0, len(ci), pair_chunk):
            diff = q[ci[t : t + pair_chunk]] - b[cj[t : t + pair_chunk]]
            exact[t : t + pair_chunk] = np.einsum("ij,ij->i", diff, diff)
        # per query, the smallest recomputed distance (lowest index on ties) of this chunk
        order = np.lexsort((cj, exact, ci))
        first = np.ones(len(order), dtype=bool)
        first[1:] = ci[order][1:] != ci[order][:-1]
        rows, cols, vals = ci[order][first], cj[order][first], exact[order][first]
        better = vals < best[rows]  # earlier chunks hold lower indices: they win ties
        best[rows[better]], where[rows[better]] = vals[better], cols[better] + s
    for i, rows in enumerate(identical if identical is not None else ()):
        rows = np.setdiff1d(np.asarray(rows, np.int64), np.asarray(exclude[i], np.int64))
        if len(rows):  # same pixels: distance 0 by design (a float tie at 0 keeps its lower row)
            j0 = int(rows.min())
            if not (best[i] == 0.0 and 0 <= where[i] < j0):
                best[i], where[i] = 0.0, j0
    best[where < 0] = np.nan
    return best, where
