"""Cross-set queries: nearest of another set, weighted maxima and signed cosines, screened."""

import math
from collections.abc import Callable

import numpy as np

from varbench.metrics.knn import screening
from varbench.metrics.knn.neighbours import (
    block_top,
    gram_block,
    merge_top,
    sort_candidates,
    subset,
)
from varbench.metrics.knn.screening import ScreenSet, exact_pairs, screen_eps, screen_sets

SCREEN_CAP = 64  # mean candidates per query beyond which a given screen is not worth it


# -- cross-set queries ---------------------------------------------------------------------------
def _cross_candidates(pq: ScreenSet, pb: ScreenSet, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``kk`` smallest float32 squared distances to the base set, sorted."""
    import torch

    m, n = pq.xf.shape[0], pb.xf.shape[0]
    best_d = torch.full((m, kk), math.inf, dtype=torch.float32)
    best_i = torch.full((m, kk), -1, dtype=torch.int64)
    for s in range(0, m, screening.BLOCK):
        e = min(m, s + screening.BLOCK)
        for t in range(0, n, screening.SYM_BLOCK):
            u = min(n, t + screening.SYM_BLOCK)
            g = gram_block(pq, pb, slice(s, e), slice(t, u))
            merge_top(best_d, best_i, slice(s, e), *block_top(g, kk, t), kk)
    return sort_candidates(best_d.numpy(), best_i.numpy())


def _approx_candidates(approx, rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``kk`` smallest entries of a float32 distance matrix (rows ``rows``), sorted.

    ``approx`` may be a transposed view (a plan's real x fake matrix read fake-major): the
    blocks are read strided by torch's top-k, without a gathered copy.
    """
    import torch

    t = torch.from_numpy(approx)
    out_d = np.empty((len(rows), kk), np.float32)
    out_i = np.empty((len(rows), kk), np.int64)
    for s in range(0, len(rows), screening.BLOCK):
        r = rows[s : s + screening.BLOCK]
        if r[-1] - r[0] == len(r) - 1 and (len(r) == 1 or np.all(np.diff(r) == 1)):
            blk = t[int(r[0]) : int(r[-1]) + 1]
        else:
            blk = t[torch.from_numpy(r)]
        vals, cols = block_top(blk, kk, 0)
        out_d[s : s + screening.BLOCK] = vals.numpy()
        out_i[s : s + screening.BLOCK] = cols.numpy()
    return sort_candidates(out_d, out_i)


def knn_cross(
    queries: np.ndarray,
    base: np.ndarray,
    k: int = 1,
    prepared: tuple[ScreenSet, ScreenSet] | None = None,
    approx: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sorted squared distances and indices (m, k) of each query's k nearest base rows.

    Same certificate as ``knn_exact``: float32 candidates, every one that could be among the
    true k nearest re-ranked with float64 direct differences (exact ties: lowest index).
    ``prepared``: (queries, base) prepared together with another set (e.g. a shared plan's);
    ``approx``: their float32 distance matrix (m, n) when already computed. Results do not
    depend on either: every decision is certified or re-decided exactly.
    """
    if prepared is None:
        pb, pq = screen_sets(base, queries)
    else:
        pq, pb = prepared
    n, d = pb.x.shape
    m = pq.x.shape[0]
    if n < k:
        raise ValueError(f"need at least k={k} base points, got {n}")
    dist, nbr = np.zeros((m, k)), np.zeros((m, k), np.int64)
    rows = np.arange(m)
    kk = min(n, k + screening.EXTRA)
    eps = screen_eps(d)
    while len(rows):
        if approx is None:
            approx_c, idx = _cross_candidates(subset(pq, rows), pb, kk)
        else:
            approx_c, idx = _approx_candidates(approx, rows, kk)
        approx_c = approx_c.astype(np.float64)
        nf, slack = pq.nf[rows], pq.slack[rows]
        tol = eps * (nf[:, None] + pb.nf[idx]) + slack[:, None] + pb.slack[idx]
        tol_any = eps * (nf + pb.nf.max()) + slack + pb.slack.max()
        upper = (approx_c[:, :k] + tol[:, :k]).max(axis=1)
        cand = approx_c - tol <= upper[:, None]
        overflow = (approx_c[:, -1] - tol_any <= upper) & (kk < n)
        ci, cj = np.nonzero(cand & ~overflow[:, None])
        exact = np.full(idx.shape, np.inf)
        exact[ci, cj] = exact_pairs(pq.x, rows[ci], pb.x, idx[ci, cj])
        order = np.lexsort((idx, exact), axis=-1)[:, :k]
        done = rows[~overflow]
        dist[done] = np.take_along_axis(exact, order, axis=1)[~overflow]
        nbr[done] = np.take_along_axis(idx, order, axis=1)[~overflow]
        rows = rows[overflow]
        kk = min(n, 4 * kk)
    return dist, nbr


def max_weighted_inverse(
    queries: np.ndarray,
    base: np.ndarray,
    weights: np.ndarray,
    prepared: tuple[ScreenSet, ScreenSet] | None = None,
    approx: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query q: max_j weights[j] / |q - base_j|^2 over base rows with weights > 0.

    Returns (value, argmax); a query at distance 0 from an eligible row gets inf. Float32
    products bound each ratio from both sides; every row whose upper bound reaches the best
    lower bound is re-evaluated with exact distances, so the maximum is the exact one.
    ``prepared``/``approx``: as for ``knn_cross`` (queries x base), from a shared plan; a
    stored matrix is screened in float32 passes (``_weighted_screen``), falling back to the
    float64 bounds for a block whose band holds too many candidates.
    """
    w_all = np.asarray(weights, np.float64)
    keep = np.flatnonzero(w_all > 0)
    m = len(queries)
    if not len(keep):
        return np.full(m, np.nan), np.full(m, -1, np.int64)
    if prepared is None:
        pb, pq = screen_sets(np.asarray(base)[keep], queries)
    else:
        pq, pb = prepared[0], subset(prepared[1], keep)
    w = w_all[keep]
    d = pb.x.shape[1]
    eps = screen_eps(d)
    screen = None if approx is None else _weighted_screen(approx, w_all, prepared, eps)
    best = np.empty(m)
    arg = np.empty(m, np.int64)
    for s in range(0, m, screening.BLOCK):
        e = min(m, s + screening.BLOCK)
        found = None if screen is None else screen(s, e)
        if found is not None:  # candidates indexed by full base rows
            bi, bj = found
            d2 = exact_pairs(pq.x, bi + s, prepared[1].x, bj)
            wj = w_all[bj]
        else:
            if approx is None:
                g = gram_block(pq, pb, slice(s, e), slice(None)).numpy().astype(np.float64)
            else:
                g = np.asarray(approx[s:e])[:, keep].astype(np.float64)
            tol = (
                eps * (pq.nf[s:e, None] + pb.nf[None, :]) + pq.slack[s:e, None] + pb.slack[None, :]
            )
            with np.errstate(divide="ignore"):
                lo = w[None, :] / np.maximum(g + tol, 0.0)  # lower bound of each ratio
                hi = w[None, :] / np.maximum(g - tol, 0.0)  # upper bound (inf when 0 is possible)
            floor = lo.max(axis=1)
            bi, bj = np.nonzero(hi >= floor[:, None])
            d2 = exact_pairs(pq.x, bi + s, pb.x, bj)
            wj, bj = w[bj], keep[bj]
        with np.errstate(divide="ignore"):
            r = wj / d2
        order = np.lexsort((bj, -r, bi))  # per row: largest ratio first, ties lowest index
        first = order[np.r_[True, bi[order][1:] != bi[order][:-1]]]
        best[s + bi[first]] = r[first]
        arg[s + bi[first]] = bj[first]
    return best, arg


def band_pairs(val, limit: np.ndarray, larger: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(row, column) of the float32 block ``val``'s entries at or beyond each row's float64
    ``limit`` (>= when ``larger``, else <=; the limit rounded outward to float32), or None when
    they exceed ``SCREEN_CAP`` per row (too wide a band: the caller decides those rows another
    way). The shared last step of the float32 screens of a stored matrix."""
    import torch

    lim32 = np.nextafter(limit.astype(np.float32), np.float32(-np.inf if larger else np.inf))
    lim = torch.from_numpy(lim32)[:, None]
    ci, cj = torch.nonzero(val >= lim if larger else val <= lim, as_tuple=True)
    if len(ci) > SCREEN_CAP * len(limit):
        return None
    return ci.numpy(), cj.numpy()


def _weighted_screen(approx: np.ndarray, w_all: np.ndarray, prepared, eps: float):
    """Candidates of ``max_weighted_inverse`` from a stored float32 matrix, in float32 passes.

    c_ij = D_ij / w_j orders row i as the ratio does (inverted). D's certified error
    eps (nf_i + nf_j) + slack_i + slack_j, divided by w_j, is bounded per row by
    (eps nf_i + slack_i) max 1/w + max_j (eps nf_j + slack_j) / w_j; twice that bound (plus
    the float32 roundings of c) above the row's smallest c holds the true best. Rows with
    weight 0 get c = inf. Returns ``screen(s, e)`` -> (row offsets, base rows) or None when
    the band exceeds ``SCREEN_CAP`` candidates per row.
    """
    import torch

    pq, pb = prepared
    kept = w_all > 0
    inv = np.where(kept, 1.0 / np.where(kept, w_all, 1.0), 0.0)
    col = float(np.max(((eps * pb.nf + pb.slack) * inv)[kept]))
    row_bound = ((eps * pq.nf + pq.slack) * float(inv.max()) + col) * (1.0 + 8.0 * screening.U32)
    t = torch.from_numpy(approx)
    t_inv = torch.from_numpy(inv.astype(np.float32))
    t_pen = torch.from_numpy(np.where(kept, 0.0, np.inf).astype(np.float32))

    def screen(s: int, e: int) -> tuple[np.ndarray, np.ndarray] | None:
        c = torch.addcmul(t_pen[None, :], t[s:e], t_inv[None, :])
        low = c.amin(dim=1).double().numpy()
        found = band_pairs(c, low + 8.0 * screening.U32 * np.abs(low) + 2.0 * row_bound[s:e], False)
        if found is None:
            return None
        bi, bj = found
        ok = kept[bj]
        return bi[ok], bj[ok]

    return screen


def nearest_up_to_sign(
    queries: np.ndarray,
    base: np.ndarray,
    screen: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Exact min over base rows b and signs s of |q - s b|^2, for each query (squared, float64).

    Equal to ``knn_cross(queries, vstack([base, -base]), 1)[0][:, 0]`` at half the product:
    |q - s b|^2 = |q|^2 + |b|^2 - 2 s q.b, so one float32 product screens both signs (rows
    unshifted: a shift would break the symmetry) and every candidate whose certified band
    reaches the best upper bound is recomputed by float64 direct differences for both signs.
    ``screen(s, e)``: (row offsets from s, base indices) of candidate pairs of queries s:e
    that certainly hold each query's nearest base row up to sign (from distances a shared
    plan already holds: no product), or None to let the float32 product decide that block.
    """
    import torch

    q = np.ascontiguousarray(queries)
    b = np.ascontiguousarray(base)
    if q.dtype not in (np.float32, np.float64) or b.dtype != q.dtype:
        q, b = (np.ascontiguousarray(a, dtype=np.float64) for a in (q, b))
    m, d = q.shape
    product: dict[str, object] = {}

    def candidates(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        """The float32 product's candidates of queries s:e (pieces built on first use)."""
        if not product:
            grow = 1.0 + 2.0 * (d + 2) * screening.U32
            qf, bf = q.astype(np.float32), b.astype(np.float32)
            nq32, nb32 = np.einsum("ij,ij->i", qf, qf), np.einsum("ij,ij->i", bf, bf)
            nq = np.einsum("ij,ij->i", q, q).astype(np.float64) * grow
            nb = np.einsum("ij,ij->i", b, b).astype(np.float64) * grow
            nqf, nbf = nq32.astype(np.float64) * grow, nb32.astype(np.float64) * grow
            product.update(
                qf=qf,
                tb=torch.from_numpy(bf),
                nq32=nq32,
                nbt=torch.from_numpy(nb32),
                nqf=nqf,
                nbf=nbf,
                slack_q=8.0 * (d + 8) * screening.U64 * (nq + nqf) + 1e-300,
                slack_b=8.0 * (d + 8) * screening.U64 * (nb + nbf) + 1e-300,
            )
        p = product
        dot = torch.from_numpy(p["qf"][s:e]) @ p["tb"].T
        g = (torch.from_numpy(p["nq32"][s:e])[:, None] + p["nbt"][None, :]) - 2.0 * dot.abs_()
        g = g.numpy().astype(np.float64)
        tol = (
            screen_eps(d) * (p["nqf"][s:e, None] + p["nbf"][None, :])
            + p["slack_q"][s:e, None]
            + p["slack_b"][None, :]
        )
        upper = (g + tol).min(axis=1)
        return np.nonzero(g - tol <= upper[:, None])

    out = np.empty(m)
    for s in range(0, m, screening.BLOCK):
        e = min(m, s + screening.BLOCK)
        found = None if screen is None else screen(s, e)
        ci, cj = found if found is not None else candidates(s, e)
        rows = ci + s
        exact = np.minimum(
            exact_pairs(q, rows, b, cj), exact_pairs(q, rows, -b[cj], np.arange(len(cj)))
        )
        best = np.full(e - s, np.inf)
        np.minimum.at(best, ci, exact)
        out[s:e] = best
    return out
