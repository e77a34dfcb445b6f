"""The one exact k-NN room: every neighbour-based metric imports it; it imports no metric.

A point is inside the manifold of a set if its distance to some member is <= that member's
distance to its k-th nearest neighbour (self excluded by index, so duplicates are neighbours).
Every decision equals the one made with exact float64 direct-difference distances
(``exact_sq_dists``; identical rows give exactly 0, so copies always count):

* k-NN radii: float32 candidates come from the self-distance matrix computed one block pair
  at a time over its upper triangle (each product serves the rows of both blocks, so a set
  costs half a full product; on a GPU an exact flat faiss index is used instead); every
  candidate that could be among the true k nearest under a certified float32 error bound is
  re-ranked with exact distances.
* ball membership: one float32 GEMM per pair of sets serves both directions (precision and
  recall); pairs whose margin lies within the certified bound are re-decided exactly.

The bound: for float32 inputs centred by a common shift, |approx - exact| <=
``_eps(d) * (|x|^2 + |y|^2)`` holds for any summation order (gamma_d for the dot product and the
norms, plus input and combination rounding), with a safety factor.

Conventions: inclusive ``<=`` everywhere (torch-fidelity's precision/recall uses ``<=``; the
clovaai ``prdc`` package uses strict ``<`` for all four numbers, which makes copies at distance 0
miss when the radius is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_U32 = 2.0**-24
_U64 = 2.0**-53
_EXTRA = 8  # candidates fetched beyond k + self, so the certified band rarely overflows
_BLOCK = 2048  # rows per float32 GEMM block
_SYM_BLOCK = 1024  # rows per block of the symmetric self-distance products
_DIAG_SPLIT = 2  # a diagonal block is split into 2 x 2 sub-blocks (upper triangle computed)
_CACHE_CHUNK = 256  # pairs per exact-distance chunk (temporaries stay in cache: 3x faster)
_SCREEN_CAP = 64  # mean candidates per query beyond which a given screen is not worth it


# -- exact distances ---------------------------------------------------------------------------
def exact_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances of paired rows a[i], b[i] by direct differences in float64."""
    out = np.empty(len(a))
    for s in range(0, len(a), _CACHE_CHUNK):
        diff = a[s : s + _CACHE_CHUNK].astype(np.float64)
        diff -= b[s : s + _CACHE_CHUNK]
        np.square(diff, out=diff)
        out[s : s + _CACHE_CHUNK] = diff.sum(axis=1)
    return out


def exact_pairs(x: np.ndarray, i: np.ndarray, y: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact squared distances |x[i] - y[j]|^2 for index arrays, in cache-sized chunks."""
    out = np.empty(len(i))
    for s in range(0, len(i), _CACHE_CHUNK):
        diff = x[i[s : s + _CACHE_CHUNK]].astype(np.float64)
        diff -= y[j[s : s + _CACHE_CHUNK]]
        np.square(diff, out=diff)
        out[s : s + _CACHE_CHUNK] = diff.sum(axis=1)
    return out


# -- float32 screening ---------------------------------------------------------------------------
def _eps(d: int) -> float:
    """Certified relative bound of float32 squared distances (see module docstring)."""
    return 1.25 * (2 * d + 32) * _U32


@dataclass
class Prepared:
    """A feature set in float64 (exact) and shifted float32 (screening) form."""

    x: np.ndarray  # (n, d) original values (float32 or float64); exact distances upcast them
    xf: np.ndarray  # (n, d) float32, common shift removed
    n32: np.ndarray  # (n,) float32 squared norms of xf as computed in float32
    nf: np.ndarray  # (n,) float64 upper bounds of the squared norms of xf
    slack: np.ndarray  # (n,) float64 absolute slack for the shift and exact-distance rounding


def prepare(*sets: np.ndarray) -> list[Prepared]:
    """Original rows (exact distances) plus float32 copies shifted by the common mean (tighter bounds)."""
    xs = [np.ascontiguousarray(s) for s in sets]
    if any(x.dtype not in (np.float32, np.float64) for x in xs):
        xs = [np.ascontiguousarray(x, dtype=np.float64) for x in xs]
    d = xs[0].shape[1]
    total = sum(len(x) for x in xs)
    shift = sum(x.sum(axis=0, dtype=np.float64) for x in xs) / total
    shift_sq = float(shift @ shift)
    # A float32 shift: x - shift32 is one rounding of an exact difference whatever x's dtype
    # (float32 inputs need no float64 temporary), which the bound of ``_eps`` covers.
    shift32 = shift.astype(np.float32)
    shift_sq = max(shift_sq, float(shift32.astype(np.float64) @ shift32.astype(np.float64)))
    out = []
    for x in xs:
        xf = (x - shift32).astype(np.float32, copy=False)
        # Upper bounds (float32 sums inflated by their own worst-case error) suffice here.
        grow = 1.0 + 2.0 * (d + 2) * _U32
        n32 = np.einsum("ij,ij->i", xf, xf)
        nf = n32.astype(np.float64) * grow
        orig = np.einsum("ij,ij->i", x, x).astype(np.float64) * grow
        slack = 8.0 * (d + 8) * _U64 * (orig + shift_sq + nf) + 1e-300
        out.append(Prepared(x, xf, n32, nf, slack))
    return out


@lru_cache(maxsize=1)
def _gpu_resources():
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


def _flat_index(xf: np.ndarray):
    """Exact flat L2 faiss index over float32 rows; on the GPU when faiss-gpu and CUDA exist."""
    import faiss

    index = faiss.IndexFlatL2(xf.shape[1])
    res = _gpu_resources()
    if res is not None:
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.add(xf)
    return index


# -- exact k nearest neighbours ----------------------------------------------------------------
def _duplicate_groups(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with >= k byte-identical other rows (radius exactly 0), and k such neighbours each.

    Rows are grouped by the hash of their bytes, then by the bytes themselves (exact), so the
    cost is one pass over the data instead of a sort of row-sized keys.
    """
    n = len(x)
    x = np.ascontiguousarray(x)
    hashes = np.fromiter((hash(row.tobytes()) for row in x), dtype=np.int64, count=n)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    groups: dict[bytes, list[int]] = {}
    for r in np.flatnonzero(counts[inverse] > k):  # ascending, so members stay in index order
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


def _block_top(g, kk: int, col0: int):
    """Each row's ``kk`` smallest values of the float32 block ``g`` and their column indices."""
    import torch

    if g.shape[1] <= kk:
        cols = torch.arange(col0, col0 + g.shape[1]).expand(g.shape[0], -1)
        return g, cols
    vals, pos = torch.topk(g, kk, dim=1, largest=False, sorted=False)
    return vals, pos + col0


def _merge_top(best_d, best_i, rows: slice, vals, cols, kk: int) -> None:
    """Keep, per row of ``rows``, the ``kk`` smallest of its candidates and (vals, cols)."""
    import torch

    dd = torch.cat([best_d[rows], vals], dim=1)
    ii = torch.cat([best_i[rows], cols], dim=1)
    top, pos = torch.topk(dd, kk, dim=1, largest=False, sorted=False)
    best_d[rows] = top
    best_i[rows] = ii.gather(1, pos)


def _sort_candidates(best_d: np.ndarray, best_i: np.ndarray):
    """Candidates ascending by approximate distance, ties by index (as a flat index returns them)."""
    order = np.lexsort((best_i, best_d), axis=-1)
    return np.take_along_axis(best_d, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def _gram_block(pa: Prepared, pb: Prepared, rows, cols, out=None):
    """Float32 squared distances |a_i|^2 + |b_j|^2 - 2 a_i.b_j of a block, as one addmm.

    Rounding: the dot product, then the sum of the two norms, then their sum (any order and
    fused forms stay inside the bound of ``_eps``).
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
    """
    for s in range(0, n, block):
        e = min(n, s + block)
        for s2 in range(s, e, sub):
            for t2 in range(s2, e, sub):
                yield s2, min(e, s2 + sub), t2, min(e, t2 + sub)
        for t in range(e, n, block):
            yield s, e, t, min(n, t + block)


def _self_candidates(p: Prepared, kk: int, block: int | None = None):
    """Each row's ``kk`` smallest float32 squared distances to the set (self included).

    One product per pair of row blocks over the upper triangle (``_upper_pairs``): block (I, J)
    updates rows of I with its columns and rows of J with its transpose, so the set costs
    about half a full product.
    """
    import torch

    block = block or _SYM_BLOCK
    n = p.xf.shape[0]
    best_d = torch.full((n, kk), math.inf, dtype=torch.float32)
    best_i = torch.full((n, kk), -1, dtype=torch.int64)
    buf = torch.empty(min(n, block) * min(n, block), dtype=torch.float32)  # reused: no page faults
    for s, e, t, u in _upper_pairs(n, block, max(1, block // _DIAG_SPLIT)):
        g = _gram_block(p, p, slice(s, e), slice(t, u), buf[: (e - s) * (u - t)].view(e - s, u - t))
        _merge_top(best_d, best_i, slice(s, e), *_block_top(g, kk, t), kk)
        if t != s:
            _merge_top(best_d, best_i, slice(t, u), *_block_top(g.T, kk, s), kk)
    return _sort_candidates(best_d.numpy(), best_i.numpy())


def _row_candidates(p: Prepared, rows: np.ndarray, kk: int):
    """The ``kk`` smallest float32 squared distances of ``rows`` to the whole set (self included)."""
    import torch

    n = p.xf.shape[0]
    best_d = torch.full((len(rows), kk), math.inf, dtype=torch.float32)
    best_i = torch.full((len(rows), kk), -1, dtype=torch.int64)
    for t in range(0, n, _SYM_BLOCK):
        u = min(n, t + _SYM_BLOCK)
        g = _gram_block(p, p, rows, slice(t, u))
        _merge_top(best_d, best_i, slice(None), *_block_top(g, kk, t), kk)
    return _sort_candidates(best_d.numpy(), best_i.numpy())


def approx_sq_dists(pa: Prepared, pb: Prepared | None = None) -> np.ndarray:
    """Float32 squared distances between prepared sets (within ``pa`` when ``pb`` is None).

    Within a set only the upper-triangle block products are computed and mirrored. Every value
    obeys the certified bound of ``_eps``, so decisions taken from it are re-checked exactly
    where it cannot decide.
    """
    import torch

    sym = pb is None
    pb = pa if pb is None else pb
    n, m = pa.xf.shape[0], pb.xf.shape[0]
    out = np.empty((n, m), np.float32)
    ot = torch.from_numpy(out)
    for s in range(0, n, _SYM_BLOCK):
        e = min(n, s + _SYM_BLOCK)
        for t in range(s if sym else 0, m, _SYM_BLOCK):
            u = min(m, t + _SYM_BLOCK)
            g = _gram_block(pa, pb, slice(s, e), slice(t, u))
            ot[s:e, t:u] = g
            if sym and t != s:
                ot[t:u, s:e] = g.T
    return out


def subset(p: Prepared, rows: np.ndarray) -> Prepared:
    """The rows ``rows`` of a prepared set (same shift, so the same bounds hold)."""
    return Prepared(p.x[rows], p.xf[rows], p.n32[rows], p.nf[rows], p.slack[rows])


class _Candidates:
    """Approximate k-NN candidates of a set: from a given float32 distance matrix, from
    symmetric blocked products (CPU), or from an exact flat faiss index (GPU)."""

    def __init__(self, p: Prepared, approx: np.ndarray | None = None):
        self.p = p
        self.approx = approx
        self.index = _flat_index(p.xf) if approx is None and _gpu_resources() is not None else None
        self.first: tuple[int, np.ndarray, np.ndarray] | None = None

    def search(self, rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """``kk`` candidates of ``rows``: the first call does the whole set symmetrically."""
        if self.approx is not None:
            d = self.approx[rows]
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < d.shape[1] else None
            if part is None:
                part = np.broadcast_to(np.arange(d.shape[1]), d.shape)
            return _sort_candidates(np.take_along_axis(d, part, axis=1), np.array(part))
        if self.index is not None:
            return self.index.search(self.p.xf[rows], kk)
        if self.first is None:
            self.first = (kk, *_self_candidates(self.p, kk))
        if self.first[0] == kk:
            return self.first[1][rows], self.first[2][rows]
        return _row_candidates(self.p, rows, kk)


def _knn_rows(p: Prepared, index, rows: np.ndarray, k: int, kk: int):
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
    eps = _eps(d)
    tol = eps * (p.nf[rows, None] + p.nf[np.clip(o_idx, 0, None)]) + p.slack[rows, None]
    tol_any = eps * (p.nf[rows] + p.nf.max()) + p.slack[rows]
    upper = (o_approx[:, :k] + tol[:, :k]).max(axis=1)  # >= the true k-th distance
    cand = (o_approx - tol <= upper[:, None]) & (o_idx >= 0)
    # Unreturned rows have approx >= the last returned one; they matter if within the bound.
    overflow = (approx[:, -1] - tol_any <= upper) & (kk < n)
    ci, cj = np.nonzero(cand & ~overflow[:, None])
    exact = np.full(o_idx.shape, np.inf)
    exact[ci, cj] = exact_pairs(p.x, rows[ci], p.x, o_idx[ci, cj])
    order = np.lexsort((o_idx, exact), axis=-1)[:, :k]  # exact ties: lowest index
    return (
        np.take_along_axis(exact, order, axis=1),
        np.take_along_axis(o_idx, order, axis=1),
        overflow,
    )


def knn_exact(
    x: np.ndarray, k: int, _prep: Prepared | None = None, approx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sorted squared distances and indices (n, k) of each row's k nearest other rows.

    ``approx``: the set's float32 distance matrix (``approx_sq_dists``) when already computed.
    """
    p = _prep or prepare(x)[0]
    n = p.x.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points, got {n}")
    dist = np.zeros((n, k))
    nbr = np.zeros((n, k), np.int64)
    dup_rows, dup_nbr = _duplicate_groups(p.x, k)
    nbr[dup_rows] = dup_nbr
    rows = np.setdiff1d(np.arange(n), dup_rows)
    index = _Candidates(p, approx)
    kk = min(n, k + 1 + _EXTRA)
    while len(rows):
        dr, nr, overflow = _knn_rows(p, index, rows, k, kk)
        dist[rows[~overflow]], nbr[rows[~overflow]] = dr[~overflow], nr[~overflow]
        rows = rows[overflow]
        kk = min(n, 4 * kk)
    return dist, nbr


def kth_nn_sq_radii(x: np.ndarray, k: int = 3) -> np.ndarray:
    """Exact squared distance of each row to its k-th nearest other row (by index)."""
    return knn_exact(x, k)[0][:, k - 1]


# -- exact ball membership -----------------------------------------------------------------------
@dataclass
class BallCounts:
    """Exact counts from one pass over all (a_i, b_j) pairs.

    ``b_in_a[j]`` = #{i: |a_i - b_j|^2 <= ra_i}; ``a_hit[i]`` = #{j: same condition};
    ``a_in_b[i]`` = #{j: |a_i - b_j|^2 <= rb_j}; ``b_hit[j]`` = #{i: same condition}.
    ``pairs_a`` = (i, j, exact d^2) of every pair inside a_i's ball, when requested.
    """

    b_in_a: np.ndarray | None = None
    a_hit: np.ndarray | None = None
    a_in_b: np.ndarray | None = None
    b_hit: np.ndarray | None = None
    pairs_a: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _down32(v: np.ndarray) -> np.ndarray:
    """The largest float32 values <= v (float64), so ``g < _down32(v)`` implies ``g < v``."""
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(-np.inf)), f)


def _up32(v: np.ndarray) -> np.ndarray:
    """The smallest float32 values >= v (float64), so ``g > _up32(v)`` implies ``g > v``."""
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) < v, np.nextafter(f, np.float32(np.inf)), f)


def _decide(g, lo, hi, pa, pb, rows0, radius_of, counts_row, counts_col, pairs, bufs):
    """Pairs with g < lo are inside, g > hi outside; the band between is re-decided exactly.

    ``lo``/``hi`` are float32 thresholds (a column (r, 1) or a row (1, m)) rounded outward from
    radius -/+ the certified bound, so the float32 comparisons decide what exact ones would.
    ``bufs``: two flat boolean arrays of at least ``g.size``, reused across blocks.
    """
    sure = np.less(g, lo, out=bufs[0][: g.size].reshape(g.shape))
    band = np.less_equal(g, hi, out=bufs[1][: g.size].reshape(g.shape))
    band ^= sure
    counts_row[rows0 : rows0 + g.shape[0]] += sure.sum(axis=1)
    counts_col += sure.sum(axis=0)
    bi, bj = np.divmod(np.flatnonzero(band.ravel()), g.shape[1])
    if len(bi):
        d2 = exact_pairs(pa.x, bi + rows0, pb.x, bj)
        ok = d2 <= radius_of(bi + rows0, bj)
        np.add.at(counts_row, bi[ok] + rows0, 1)
        np.add.at(counts_col, bj[ok], 1)
    if pairs is not None:
        si, sj = np.divmod(np.flatnonzero(sure.ravel()), g.shape[1])
        if len(bi):
            si = np.concatenate([si, bi[ok]])
            sj = np.concatenate([sj, bj[ok]])
        pairs.append((si + rows0, sj))


def ball_counts(
    a: np.ndarray | Prepared,
    b: np.ndarray | Prepared,
    ra: np.ndarray | None = None,
    rb: np.ndarray | None = None,
    keep_pairs_a: bool = False,
    approx: np.ndarray | None = None,
) -> BallCounts:
    """Exact ball-membership counts between sets a and b for squared radii ra (on a) and rb (on b).

    One float32 product per block of rows serves both directions. ``approx``: float32 squared
    distances a x b (``approx_sq_dists``) when already computed.
    """
    import torch

    pa, pb = (a, b) if isinstance(a, Prepared) else prepare(a, b)
    n, d = pa.x.shape
    m = pb.x.shape[0]
    eps = _eps(d)
    out = BallCounts()
    if ra is not None:
        ra = np.asarray(ra, np.float64)
        out.b_in_a, out.a_hit = np.zeros(m, np.int64), np.zeros(n, np.int64)
    if rb is not None:
        rb = np.asarray(rb, np.float64)
        out.a_in_b, out.b_hit = np.zeros(n, np.int64), np.zeros(m, np.int64)
    pairs: list | None = [] if keep_pairs_a and ra is not None else None
    nb_max = pb.nf.max()
    slack_b = pb.slack.max()
    rows = min(n, _BLOCK)
    bufs = (np.empty(rows * m, bool), np.empty(rows * m, bool))  # reused: no page faults
    gbuf = None if approx is not None else torch.empty(rows * m, dtype=torch.float32)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        if gbuf is None:
            g = np.ascontiguousarray(approx[s:e])
        else:
            g = _gram_block(pa, pb, slice(s, e), slice(None), gbuf[: (e - s) * m].view(e - s, m))
            g = g.numpy()
        # Per-row bound covering every pair of the row.
        tol = eps * (pa.nf[s:e] + nb_max) + pa.slack[s:e] + slack_b
        if ra is not None:
            lo, hi = _down32(ra[s:e] - tol)[:, None], _up32(ra[s:e] + tol)[:, None]
            _decide(g, lo, hi, pa, pb, s, lambda i, j: ra[i], out.a_hit, out.b_in_a, pairs, bufs)
        if rb is not None:
            tb = tol.max()  # one bound for the block, so thresholds are a row vector
            lo, hi = _down32(rb - tb)[None, :], _up32(rb + tb)[None, :]
            _decide(g, lo, hi, pa, pb, s, lambda i, j: rb[j], out.a_in_b, out.b_hit, None, bufs)
    if pairs is not None:
        pi = np.concatenate([p[0] for p in pairs]).astype(np.int64)
        pj = np.concatenate([p[1] for p in pairs]).astype(np.int64)
        out.pairs_a = (pi, pj, exact_pairs(pa.x, pi, pb.x, pj))
    return out


def coverage_mask(points: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray) -> np.ndarray:
    """For each point, whether some centre c has |p - c|^2 <= radius_sq(c) (exact decisions)."""
    return ball_counts(centres, points, ra=np.asarray(radii_sq, np.float64)).b_in_a > 0


# -- cross-set queries ---------------------------------------------------------------------------
def _cross_candidates(pq: Prepared, pb: Prepared, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``kk`` smallest float32 squared distances to the base set, sorted."""
    import torch

    m, n = pq.xf.shape[0], pb.xf.shape[0]
    best_d = torch.full((m, kk), math.inf, dtype=torch.float32)
    best_i = torch.full((m, kk), -1, dtype=torch.int64)
    for s in range(0, m, _BLOCK):
        e = min(m, s + _BLOCK)
        for t in range(0, n, _SYM_BLOCK):
            u = min(n, t + _SYM_BLOCK)
            g = _gram_block(pq, pb, slice(s, e), slice(t, u))
            _merge_top(best_d, best_i, slice(s, e), *_block_top(g, kk, t), kk)
    return _sort_candidates(best_d.numpy(), best_i.numpy())


def _approx_candidates(approx, rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``kk`` smallest entries of a float32 distance matrix (rows ``rows``), sorted.

    ``approx`` may be a transposed view (a plan's real x fake matrix read fake-major): the
    blocks are read strided by torch's top-k, without a gathered copy.
    """
    import torch

    t = torch.from_numpy(approx)
    out_d = np.empty((len(rows), kk), np.float32)
    out_i = np.empty((len(rows), kk), np.int64)
    for s in range(0, len(rows), _BLOCK):
        r = rows[s : s + _BLOCK]
        if r[-1] - r[0] == len(r) - 1 and (len(r) == 1 or np.all(np.diff(r) == 1)):
            blk = t[int(r[0]) : int(r[-1]) + 1]
        else:
            blk = t[torch.from_numpy(r)]
        vals, cols = _block_top(blk, kk, 0)
        out_d[s : s + _BLOCK] = vals.numpy()
        out_i[s : s + _BLOCK] = cols.numpy()
    return _sort_candidates(out_d, out_i)


def knn_cross(
    queries: np.ndarray,
    base: np.ndarray,
    k: int = 1,
    prepared: tuple[Prepared, Prepared] | None = None,
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
        pb, pq = prepare(base, queries)
    else:
        pq, pb = prepared
    n, d = pb.x.shape
    m = pq.x.shape[0]
    if n < k:
        raise ValueError(f"need at least k={k} base points, got {n}")
    dist, nbr = np.zeros((m, k)), np.zeros((m, k), np.int64)
    rows = np.arange(m)
    kk = min(n, k + _EXTRA)
    eps = _eps(d)
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
    prepared: tuple[Prepared, Prepared] | None = None,
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
        pb, pq = prepare(np.asarray(base)[keep], queries)
    else:
        pq, pb = prepared[0], subset(prepared[1], keep)
    w = w_all[keep]
    d = pb.x.shape[1]
    eps = _eps(d)
    screen = None if approx is None else _weighted_screen(approx, w_all, prepared, eps)
    best = np.empty(m)
    arg = np.empty(m, np.int64)
    for s in range(0, m, _BLOCK):
        e = min(m, s + _BLOCK)
        found = None if screen is None else screen(s, e)
        if found is not None:  # candidates indexed by full base rows
            bi, bj = found
            d2 = exact_pairs(pq.x, bi + s, prepared[1].x, bj)
            wj = w_all[bj]
        else:
            if approx is None:
                g = _gram_block(pq, pb, slice(s, e), slice(None)).numpy().astype(np.float64)
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
    they exceed ``_SCREEN_CAP`` per row (too wide a band: the caller decides those rows another
    way). The shared last step of the float32 screens of a stored matrix."""
    import torch

    lim32 = np.nextafter(limit.astype(np.float32), np.float32(-np.inf if larger else np.inf))
    lim = torch.from_numpy(lim32)[:, None]
    ci, cj = torch.nonzero(val >= lim if larger else val <= lim, as_tuple=True)
    if len(ci) > _SCREEN_CAP * len(limit):
        return None
    return ci.numpy(), cj.numpy()


def _weighted_screen(approx: np.ndarray, w_all: np.ndarray, prepared, eps: float):
    """Candidates of ``max_weighted_inverse`` from a stored float32 matrix, in float32 passes.

    c_ij = D_ij / w_j orders row i as the ratio does (inverted). D's certified error
    eps (nf_i + nf_j) + slack_i + slack_j, divided by w_j, is bounded per row by
    (eps nf_i + slack_i) max 1/w + max_j (eps nf_j + slack_j) / w_j; twice that bound (plus
    the float32 roundings of c) above the row's smallest c holds the true best. Rows with
    weight 0 get c = inf. Returns ``screen(s, e)`` -> (row offsets, base rows) or None when
    the band exceeds ``_SCREEN_CAP`` candidates per row.
    """
    import torch

    pq, pb = prepared
    kept = w_all > 0
    inv = np.where(kept, 1.0 / np.where(kept, w_all, 1.0), 0.0)
    col = float(np.max(((eps * pb.nf + pb.slack) * inv)[kept]))
    row_bound = ((eps * pq.nf + pq.slack) * float(inv.max()) + col) * (1.0 + 8.0 * _U32)
    t = torch.from_numpy(approx)
    t_inv = torch.from_numpy(inv.astype(np.float32))
    t_pen = torch.from_numpy(np.where(kept, 0.0, np.inf).astype(np.float32))

    def screen(s: int, e: int) -> tuple[np.ndarray, np.ndarray] | None:
        c = torch.addcmul(t_pen[None, :], t[s:e], t_inv[None, :])
        low = c.amin(dim=1).double().numpy()
        found = band_pairs(c, low + 8.0 * _U32 * np.abs(low) + 2.0 * row_bound[s:e], False)
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
            grow = 1.0 + 2.0 * (d + 2) * _U32
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
                slack_q=8.0 * (d + 8) * _U64 * (nq + nqf) + 1e-300,
                slack_b=8.0 * (d + 8) * _U64 * (nb + nbf) + 1e-300,
            )
        p = product
        dot = torch.from_numpy(p["qf"][s:e]) @ p["tb"].T
        g = (torch.from_numpy(p["nq32"][s:e])[:, None] + p["nbt"][None, :]) - 2.0 * dot.abs_()
        g = g.numpy().astype(np.float64)
        tol = (
            _eps(d) * (p["nqf"][s:e, None] + p["nbf"][None, :])
            + p["slack_q"][s:e, None]
            + p["slack_b"][None, :]
        )
        upper = (g + tol).min(axis=1)
        return np.nonzero(g - tol <= upper[:, None])

    out = np.empty(m)
    for s in range(0, m, _BLOCK):
        e = min(m, s + _BLOCK)
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


# -- streamed search with exclusions (bases too large for memory, e.g. LPIPS phi) ---------------
def float64_eps(dim: int) -> float:
    """Certified relative error of float64 squared distances |q|^2 + |b|^2 - 2 q.b (any order).

    Dot product and norms each err by at most gamma_d (|q|^2 + |b|^2) for d-term sums, plus a few
    roundings to combine them; same form as ``_eps`` with the float64 unit roundoff.
    """
    return 1.25 * (2 * dim + 32) * _U64


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
