"""Exact distances and the float32 screening form of a feature set, with its certified bound."""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

U32 = 2.0**-24
U64 = 2.0**-53
EXTRA = 8  # candidates fetched beyond k + self, so the certified band rarely overflows
BLOCK = 2048  # rows per float32 GEMM block
SYM_BLOCK = 1024  # rows per block of the symmetric self-distance products
DIAG_SPLIT = 2  # a diagonal block is split into 2 x 2 sub-blocks (upper triangle computed)
CACHE_FLOATS = 2**17  # float64 values per exact-distance chunk: 1 MiB, an L2 cache (2x faster)


# -- exact distances ---------------------------------------------------------------------------
def _chunk(d: int) -> int:
    """Rows per exact-distance chunk, so the float64 temporaries stay in cache."""
    return max(1, CACHE_FLOATS // max(1, d))


def exact_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances of paired rows a[i], b[i] by direct differences in float64."""
    out = np.empty(len(a))
    step = _chunk(a.shape[1])
    for s in range(0, len(a), step):
        diff = a[s : s + step].astype(np.float64)
        diff -= b[s : s + step]
        np.square(diff, out=diff)
        out[s : s + step] = diff.sum(axis=1)
    return out


def exact_pairs(x: np.ndarray, i: np.ndarray, y: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact squared distances |x[i] - y[j]|^2 for index arrays, in cache-sized chunks.

    Each row is the float64 difference, squared, summed by numpy along the row (its pairwise
    order): the same bits whatever the chunk, and for (i, j) and (j, i) alike.
    """
    out = np.empty(len(i))
    step = _chunk(x.shape[1])
    for s in range(0, len(i), step):
        diff = x[i[s : s + step]].astype(np.float64)
        diff -= y[j[s : s + step]]
        np.square(diff, out=diff)
        out[s : s + step] = diff.sum(axis=1)
    return out


@lru_cache(maxsize=1)
def helper_thread():
    """One background thread for numpy work beside the caller's (numpy releases the GIL in
    its loops), so the steps between the products use both cores of a 2-core CPU."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(1, thread_name_prefix="varbench-knn")


def exact_pairs_split(x: np.ndarray, i: np.ndarray, y: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``exact_pairs`` with the pairs in two halves on two threads (numpy releases the GIL in
    its gathers, casts and sums: 1.5x on 2 cores); each pair's bits are unchanged."""
    half = len(i) // 2
    if half < _chunk(x.shape[1]):
        return exact_pairs(x, i, y, j)
    first = helper_thread().submit(exact_pairs, x, i[:half], y, j[:half])
    second = exact_pairs(x, i[half:], y, j[half:])
    return np.concatenate([first.result(), second])


def exact_pairs_within(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``exact_pairs(x, i, x, j)`` computing each unordered pair once (mutual neighbours).

    x_a - x_b is exactly -(x_b - x_a) in floating point, so both orders give the same bits.
    """
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key, inverse = np.unique(lo * np.int64(len(x)) + hi, return_inverse=True)
    return exact_pairs_split(x, key // len(x), x, key % len(x))[inverse.ravel()]


# -- float32 screening ---------------------------------------------------------------------------
def screen_eps(d: int) -> float:
    """Certified relative bound of float32 squared distances (see module docstring)."""
    return 1.25 * (2 * d + 32) * U32


@dataclass
class ScreenSet:
    """A feature set in float64 (exact) and shifted float32 (screening) form."""

    x: np.ndarray  # (n, d) original values (float32 or float64); exact distances upcast them
    xf: np.ndarray  # (n, d) float32, common shift removed
    n32: np.ndarray  # (n,) float32 squared norms of xf as computed in float32
    nf: np.ndarray  # (n,) float64 upper bounds of the squared norms of xf
    slack: np.ndarray  # (n,) float64 absolute slack for the shift and exact-distance rounding


def screen_sets(*sets: np.ndarray) -> list[ScreenSet]:
    """Original rows (exact distances) plus float32 copies shifted by the common mean (tighter bounds)."""
    xs = [np.ascontiguousarray(s) for s in sets]
    if any(x.dtype not in (np.float32, np.float64) for x in xs):
        xs = [np.ascontiguousarray(x, dtype=np.float64) for x in xs]
    d = xs[0].shape[1]
    total = sum(len(x) for x in xs)
    shift = sum(x.sum(axis=0, dtype=np.float64) for x in xs) / total
    shift_sq = float(shift @ shift)
    # A float32 shift: x - shift32 is one rounding of an exact difference whatever x's dtype
    # (float32 inputs need no float64 temporary), which the bound of ``screen_eps`` covers.
    shift32 = shift.astype(np.float32)
    shift_sq = max(shift_sq, float(shift32.astype(np.float64) @ shift32.astype(np.float64)))
    out = []
    for x in xs:
        xf = (x - shift32).astype(np.float32, copy=False)
        # Upper bounds (float32 sums inflated by their own worst-case error) suffice here.
        grow = 1.0 + 2.0 * (d + 2) * U32
        n32 = np.einsum("ij,ij->i", xf, xf)
        nf = n32.astype(np.float64) * grow
        orig = np.einsum("ij,ij->i", x, x).astype(np.float64) * grow
        slack = 8.0 * (d + 8) * U64 * (orig + shift_sq + nf) + 1e-300
        out.append(ScreenSet(x, xf, n32, nf, slack))
    return out


@lru_cache(maxsize=1)
def gpu_resources():
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


def flat_index(xf: np.ndarray):
    """Exact flat L2 faiss index over float32 rows; on the GPU when faiss-gpu and CUDA exist."""
    import faiss

    index = faiss.IndexFlatL2(xf.shape[1])
    res = gpu_resources()
    if res is not None:
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.add(xf)
    return index
