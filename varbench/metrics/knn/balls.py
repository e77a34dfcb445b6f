"""Exact ball membership between two sets (precision/recall, density/coverage)."""

from dataclasses import dataclass

import numpy as np

from varbench.metrics.knn import screening
from varbench.metrics.knn.neighbours import gram_block
from varbench.metrics.knn.screening import (
    ScreenSet,
    exact_pairs,
    helper_thread,
    screen_eps,
    screen_sets,
)

DENSE = 16  # pairs with g <= hi beyond 1/16 of a block: boolean masks instead of index arrays


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
    One pass over the block finds the pairs with g <= hi (the balls' pairs: few, as a ball holds
    about k points); they are split into inside and band without another pass. When they are
    many (a sizeable share of the block), two boolean masks are cheaper than index arrays.
    """
    r, m = g.shape
    near = np.less_equal(g, hi, out=bufs[1][: g.size].reshape(g.shape))
    if np.count_nonzero(near) <= g.size // DENSE:
        flat = np.flatnonzero(near.ravel())
        fi, fj = np.divmod(flat, m)
        inside = g.ravel()[flat] < (lo[fi, 0] if lo.shape[1] == 1 else lo[0, fj])
        si, sj, bi, bj = fi[inside], fj[inside], fi[~inside], fj[~inside]
        counts_row[rows0 : rows0 + r] += np.bincount(si, minlength=r)
        counts_col += np.bincount(sj, minlength=m)
    else:
        sure = np.less(g, lo, out=bufs[0][: g.size].reshape(g.shape))
        near ^= sure
        counts_row[rows0 : rows0 + r] += sure.sum(axis=1)
        counts_col += sure.sum(axis=0)
        bi, bj = np.divmod(np.flatnonzero(near.ravel()), m)
        si = sj = None
    if len(bi):
        d2 = exact_pairs(pa.x, bi + rows0, pb.x, bj)
        ok = d2 <= radius_of(bi + rows0, bj)
        np.add.at(counts_row, bi[ok] + rows0, 1)
        np.add.at(counts_col, bj[ok], 1)
    if pairs is not None:
        if si is None:
            si, sj = np.divmod(np.flatnonzero(sure.ravel()), m)
        if len(bi):
            si = np.concatenate([si, bi[ok]])
            sj = np.concatenate([sj, bj[ok]])
        pairs.append((si + rows0, sj))


def ball_counts(
    a: np.ndarray | ScreenSet,
    b: np.ndarray | ScreenSet,
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

    pa, pb = (a, b) if isinstance(a, ScreenSet) else screen_sets(a, b)
    n, d = pa.x.shape
    m = pb.x.shape[0]
    eps = screen_eps(d)
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
    rows = min(n, screening.BLOCK)
    both = ra is not None and rb is not None  # the two directions then run side by side
    bufs = (np.empty(rows * m, bool), np.empty(rows * m, bool))  # reused: no page faults
    bufs_b = (np.empty(rows * m, bool), np.empty(rows * m, bool)) if both else bufs
    gbuf = None if approx is not None else torch.empty(rows * m, dtype=torch.float32)
    for s in range(0, n, screening.BLOCK):
        e = min(n, s + screening.BLOCK)
        if gbuf is None:
            g = np.ascontiguousarray(approx[s:e])
        else:
            g = gram_block(pa, pb, slice(s, e), slice(None), gbuf[: (e - s) * m].view(e - s, m))
            g = g.numpy()
        # Per-row bound covering every pair of the row.
        tol = eps * (pa.nf[s:e] + nb_max) + pa.slack[s:e] + slack_b
        pending = None
        if rb is not None:
            tb = tol.max()  # one bound for the block, so thresholds are a row vector
            lo, hi = _down32(rb - tb)[None, :], _up32(rb + tb)[None, :]
            args = (g, lo, hi, pa, pb, s, lambda i, j: rb[j], out.a_in_b, out.b_hit, None, bufs_b)
            if both:
                pending = helper_thread().submit(_decide, *args)
            else:
                _decide(*args)
        if ra is not None:
            lo, hi = _down32(ra[s:e] - tol)[:, None], _up32(ra[s:e] + tol)[:, None]
            _decide(g, lo, hi, pa, pb, s, lambda i, j: ra[i], out.a_hit, out.b_in_a, pairs, bufs)
        if pending is not None:
            pending.result()  # before the next block overwrites g
    if pairs is not None:
        pi = np.concatenate([p[0] for p in pairs]).astype(np.int64)
        pj = np.concatenate([p[1] for p in pairs]).astype(np.int64)
        out.pairs_a = (pi, pj, exact_pairs(pa.x, pi, pb.x, pj))
    return out


def coverage_mask(points: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray) -> np.ndarray:
    """For each point, whether some centre c has |p - c|^2 <= radius_sq(c) (exact decisions)."""
    return ball_counts(centres, points, ra=np.asarray(radii_sq, np.float64)).b_in_a > 0
