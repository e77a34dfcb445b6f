"""Exact k nearest neighbours within a set: float32 candidates, exact re-ranking."""

import math

import numpy as np

from varbench.metrics.knn import screening
from varbench.metrics.knn.screening import (
    ScreenSet,
    exact_pairs_within,
    flat_index,
    gpu_resources,
    helper_thread,
    screen_eps,
    screen_sets,
)


# -- exact k nearest neighbours ----------------------------------------------------------------
def _duplicate_groups(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with >= k byte-identical other rows (radius exactly 0), and k such neighbours each.

    Rows are first grouped by the bytes of a few columns (identical rows agree there), then
    the rows of groups larger than k by the hash of their bytes, then by the bytes themselves
    (exact): one pass over the rows that may be copies instead of a sort of row-sized keys.
    """
    n = len(x)
    x = np.ascontiguousarray(x)
    maybe = np.arange(n)
    if x.shape[1]:
        cols = np.unique(np.linspace(0, x.shape[1] - 1, min(x.shape[1], 16)).astype(np.int64))
        probe = np.ascontiguousarray(x[:, cols]).view(np.uint8).astype(np.uint64)
        mix = np.random.default_rng(0).integers(1, 2**63, probe.shape[1], dtype=np.uint64) | 1
        key = (probe * mix).sum(axis=1)  # wraps: equal bytes give equal keys
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        maybe = np.flatnonzero(counts[inverse] > k)
    hashes = np.fromiter((hash(x[r].tobytes()) for r in maybe), dtype=np.int64, count=len(maybe))
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    groups: dict[bytes, list[int]] = {}
    for r in maybe[counts[inverse] > k]:  # ascending, so members stay in index order
        groups.setdefault(x[r].tobytes(), []).append(int(r))
    rows_list, nbr_list = [], []
    for members in groups.values():
        if len(members) <= k:
            continue
        first = members[: k + 1]  # the k lowest-index other members are among these
        for r in members:
            rows_list.append(r)
            nbr_list.append([m for m in first if m != r][:k])
    if not rows_list:
        return np.empty(0, np.int64), np.empty((0, k), np.int64)
    order = np.argsort(rows_list)
    return np.asarray(rows_list, np.int64)[order], np.asarray(nbr_list, np.int64)[order]


def block_top(g, kk: int, col0: int):
    """Each row's ``kk`` smallest values of the float32 block ``g`` and their column indices."""
    import torch

    if g.shape[1] <= kk:
        cols = torch.arange(col0, col0 + g.shape[1]).expand(g.shape[0], -1)
        return g, cols
    vals, pos = torch.topk(g, kk, dim=1, largest=False, sorted=False)
    return vals, pos + col0


def merge_top(best_d, best_i, rows: slice, vals, cols, kk: int) -> None:
    """Keep, per row of ``rows``, the ``kk`` smallest of its candidates and (vals, cols)."""
    import torch

    dd = torch.cat([best_d[rows], vals], dim=1)
    ii = torch.cat([best_i[rows], cols], dim=1)
    top, pos = torch.topk(dd, kk, dim=1, largest=False, sorted=False)
    best_d[rows] = top
    best_i[rows] = ii.gather(1, pos)


def sort_candidates(best_d: np.ndarray, best_i: np.ndarray):
    """Candidates ascending by approximate distance, ties by index (as a flat index returns them)."""
    order = np.lexsort((best_i, best_d), axis=-1)
    return np.take_along_axis(best_d, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def gram_block(pa: ScreenSet, pb: ScreenSet, rows, cols, out=None):
    """Float32 squared distances |a_i|^2 + |b_j|^2 - 2 a_i.b_j of a block, as one addmm.

    Rounding: the dot product, then the sum of the two norms, then their sum (any order and
    fused forms stay inside the bound of ``screen_eps``).
    """
    import torch

    na = torch.from_numpy(pa.n32[rows])
    nb = torch.from_numpy(pb.n32[cols])
    a = torch.from_numpy(pa.xf[rows])
    b = torch.from_numpy(pb.xf[cols])
    if out is None:
        out = torch.empty((len(na), len(nb)), dtype=torch.float32)
    torch.add(na[:, None], nb[None, :], out=out)
    return out.addmm_(a, b.T, beta=1.0, alpha=-2.0)


def _upper_pairs(n: int, block: int, sub: int):
    """Row/column ranges covering the upper triangle of an n x n matrix once, with its mirror.

    Off-diagonal pairs are ``block`` x ``block``; a diagonal block is itself split into
    ``sub``-sized pairs over its upper triangle, so diagonal blocks also cost about half.
    The ``sub`` x ``sub`` blocks on the diagonal come first, so every row meets its first
    candidates there (a small top-k) and every later block only refines them.
    """
    for s in range(0, n, block):
        e = min(n, s + block)
        for s2 in range(s, e, sub):
            yield s2, min(e, s2 + sub), s2, min(e, s2 + sub)
    for s in range(0, n, block):
        e = min(n, s + block)
        for s2 in range(s, e, sub):
            for t2 in range(s2 + sub, e, sub):
                yield s2, min(e, s2 + sub), t2, min(e, t2 + sub)
        for t in range(e, n, block):
            yield s, e, t, min(n, t + block)


def _merge_below(best_d, best_i, g, row0: int, col0: int, kk: int, thr, transposed: bool):
    """Merge into rows ``row0 + r`` the entries of block ``g`` (or of ``g.T``) below each row's
    current ``kk``-th smallest value ``thr``: one comparison pass finds the few that can enter
    (about kk x block / columns seen per row), and only those are selected among."""
    gn = g.numpy()
    below = gn < (thr[None, :] if transposed else thr[:, None])
    flat = np.flatnonzero(below)  # then divmod: 20x faster than a 2-D np.nonzero
    if not len(flat):
        return
    gi, gj = np.divmod(flat, gn.shape[1])
    vals = gn.ravel()[flat]
    if transposed:  # rows of g.T are columns of g: group the entries by column
        key = gj.astype(np.int16) if gn.shape[1] < 2**15 else gj  # int16: a radix sort
        order = np.argsort(key, kind="stable")
        rows, cols, vals = gj[order], gi[order] + col0, vals[order]
    else:
        rows, cols = gi, gj + col0
    counts = np.bincount(rows, minlength=len(thr))
    hit = np.flatnonzero(counts)
    slot = np.zeros(len(thr), np.int64)
    slot[hit] = np.arange(len(hit))
    pos = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    width = kk + int(counts.max())
    dd = np.full((len(hit), width), np.inf, np.float32)
    ii = np.full((len(hit), width), -1, np.int64)
    dd[:, :kk], ii[:, :kk] = best_d[row0 + hit], best_i[row0 + hit]
    dd[slot[rows], kk + pos], ii[slot[rows], kk + pos] = vals, cols
    keep = np.argpartition(dd, kk - 1, axis=1)[:, :kk]
    best_d[row0 + hit] = np.take_along_axis(dd, keep, axis=1)
    best_i[row0 + hit] = np.take_along_axis(ii, keep, axis=1)


def _merge_block(best_d, best_i, g, row0: int, col0: int, kk: int, transposed: bool) -> None:
    """Keep, for the rows of block ``g`` (of ``g.T`` when ``transposed``), their ``kk``
    smallest values so far: a full top-k the first time rows are seen, then ``_merge_below``."""
    nr = g.shape[1] if transposed else g.shape[0]
    thr = best_d[row0 : row0 + nr].max(axis=1)
    if np.isinf(thr).any():  # some row has fewer than kk candidates yet
        import torch

        blk = g.T.contiguous() if transposed else g  # top-k reads rows: contiguous is 2x faster
        rows = slice(row0, row0 + nr)
        merge_top(
            torch.from_numpy(best_d), torch.from_numpy(best_i), rows, *block_top(blk, kk, col0), kk
        )
    else:
        _merge_below(best_d, best_i, g, row0, col0, kk, thr, transposed)


def _self_candidates(p: ScreenSet, kk: int, block: int | None = None):
    """Each row's ``kk`` smallest float32 squared distances to the set (self included).

    One product per pair of row blocks over the upper triangle (``_upper_pairs``): block (I, J)
    updates rows of I with its columns and rows of J with its transpose, so the set costs
    about half a full product. The selection runs on each block while it is fresh: a full
    top-k where rows are first seen, afterwards only the entries below a row's current
    ``kk``-th smallest value (``_merge_below``); the values kept are the ``kk`` smallest
    either way.
    """
    import torch

    block = block or screening.SYM_BLOCK
    n = p.xf.shape[0]
    best_d = np.full((n, kk), np.inf, np.float32)
    best_i = np.full((n, kk), -1, np.int64)
    buf = torch.empty(min(n, block) * min(n, block), dtype=torch.float32)  # reused: no page faults
    for s, e, t, u in _upper_pairs(n, block, max(1, block // screening.DIAG_SPLIT)):
        g = gram_block(p, p, slice(s, e), slice(t, u), buf[: (e - s) * (u - t)].view(e - s, u - t))
        pending = None
        if t != s:  # rows of J (disjoint from I's) on the helper thread, beside I's
            pending = helper_thread().submit(_merge_block, best_d, best_i, g, t, s, kk, True)
        _merge_block(best_d, best_i, g, s, t, kk, transposed=False)
        if pending is not None:
            pending.result()  # before the next product overwrites the buffer
    return sort_candidates(best_d, best_i)


def _row_candidates(p: ScreenSet, rows: np.ndarray, kk: int):
    """The ``kk`` smallest float32 squared distances of ``rows`` to the whole set (self included)."""
    import torch

    n = p.xf.shape[0]
    best_d = torch.full((len(rows), kk), math.inf, dtype=torch.float32)
    best_i = torch.full((len(rows), kk), -1, dtype=torch.int64)
    for t in range(0, n, screening.SYM_BLOCK):
        u = min(n, t + screening.SYM_BLOCK)
        g = gram_block(p, p, rows, slice(t, u))
        merge_top(best_d, best_i, slice(None), *block_top(g, kk, t), kk)
    return sort_candidates(best_d.numpy(), best_i.numpy())


def approx_sq_dists(pa: ScreenSet, pb: ScreenSet | None = None) -> np.ndarray:
    """Float32 squared distances between prepared sets (within ``pa`` when ``pb`` is None).

    Within a set only the upper-triangle block products are computed and mirrored. Every value
    obeys the certified bound of ``screen_eps``, so decisions taken from it are re-checked exactly
    where it cannot decide.
    """
    import torch

    sym = pb is None
    pb = pa if pb is None else pb
    n, m = pa.xf.shape[0], pb.xf.shape[0]
    out = np.empty((n, m), np.float32)
    ot = torch.from_numpy(out)
    for s in range(0, n, screening.SYM_BLOCK):
        e = min(n, s + screening.SYM_BLOCK)
        for t in range(s if sym else 0, m, screening.SYM_BLOCK):
            u = min(m, t + screening.SYM_BLOCK)
            g = gram_block(pa, pb, slice(s, e), slice(t, u))
            ot[s:e, t:u] = g
            if sym and t != s:
                ot[t:u, s:e] = g.T
    return out


def subset(p: ScreenSet, rows: np.ndarray) -> ScreenSet:
    """The rows ``rows`` of a prepared set (same shift, so the same bounds hold)."""
    return ScreenSet(p.x[rows], p.xf[rows], p.n32[rows], p.nf[rows], p.slack[rows])


class _Candidates:
    """Approximate k-NN candidates of a set: from a given float32 distance matrix, from
    symmetric blocked products (CPU), or from an exact flat faiss index (GPU)."""

    def __init__(self, p: ScreenSet, approx: np.ndarray | None = None):
        self.p = p
        self.approx = approx
        self.index = flat_index(p.xf) if approx is None and gpu_resources() is not None else None
        self.first: tuple[int, np.ndarray, np.ndarray] | None = None

    def search(self, rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """``kk`` candidates of ``rows``: the first call does the whole set symmetrically."""
        if self.approx is not None:
            d = self.approx[rows]
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < d.shape[1] else None
            if part is None:
                part = np.broadcast_to(np.arange(d.shape[1]), d.shape)
            return sort_candidates(np.take_along_axis(d, part, axis=1), np.array(part))
        if self.index is not None:
            return self.index.search(self.p.xf[rows], kk)
        if self.first is None:
            self.first = (kk, *_self_candidates(self.p, kk))
        if self.first[0] == kk:
            return self.first[1][rows], self.first[2][rows]
        return _row_candidates(self.p, rows, kk)


def _knn_rows(p: ScreenSet, index, rows: np.ndarray, k: int, kk: int):
    """Exact k-NN of ``rows`` from ``kk`` float32 candidates; also which rows need more candidates."""
    n, d = p.x.shape
    approx, idx = index.search(rows, kk)
    approx = approx.astype(np.float64)
    r = np.arange(len(rows))
    is_self = idx == rows[:, None]
    # Drop self by index; where faiss did not return self (many exact duplicates), drop the last.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kk - 1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[r, drop] = False
    o_approx = approx[keep].reshape(len(rows), kk - 1)
    o_idx = idx[keep].reshape(len(rows), kk - 1)
    eps = screen_eps(d)
    tol = eps * (p.nf[rows, None] + p.nf[np.clip(o_idx, 0, None)]) + p.slack[rows, None]
    tol_any = eps * (p.nf[rows] + p.nf.max()) + p.slack[rows]
    upper = (o_approx[:, :k] + tol[:, :k]).max(axis=1)  # >= the true k-th distance
    cand = (o_approx - tol <= upper[:, None]) & (o_idx >= 0)
    # Unreturned rows have approx >= the last returned one; they matter if within the bound.
    overflow = (approx[:, -1] - tol_any <= upper) & (kk < n)
    ci, cj = np.nonzero(cand & ~overflow[:, None])
    exact = np.full(o_idx.shape, np.inf)
    exact[ci, cj] = exact_pairs_within(p.x, rows[ci], o_idx[ci, cj])
    order = np.lexsort((o_idx, exact), axis=-1)[:, :k]  # exact ties: lowest index
    return (
        np.take_along_axis(exact, order, axis=1),
        np.take_along_axis(o_idx, order, axis=1),
        overflow,
    )


def knn_exact(
    x: np.ndarray, k: int, _prep: ScreenSet | None = None, approx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sorted squared distances and indices (n, k) of each row's k nearest other rows.

    ``approx``: the set's float32 distance matrix (``approx_sq_dists``) when already computed.
    """
    p = _prep or screen_sets(x)[0]
    n = p.x.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points, got {n}")
    dist = np.zeros((n, k))
    nbr = np.zeros((n, k), np.int64)
    dup_rows, dup_nbr = _duplicate_groups(p.x, k)
    nbr[dup_rows] = dup_nbr
    rows = np.setdiff1d(np.arange(n), dup_rows)
    index = _Candidates(p, approx)
    kk = min(n, k + 1 + screening.EXTRA)
    while len(rows):
        dr, nr, overflow = _knn_rows(p, index, rows, k, kk)
        dist[rows[~overflow]], nbr[rows[~overflow]] = dr[~overflow], nr[~overflow]
        rows = rows[overflow]
        kk = min(n, 4 * kk)
    return dist, nbr


def kth_nn_sq_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Exact squared distance of each row to its k-th nearest other row (by index)."""
    return knn_exact(x, k)[0][:, k - 1]
