"""Nearest-neighbour LPIPS memorisation curves (2SDM, Fig. 6).

For every sample: the LPIPS distance to its nearest reference image. Reference curve: the same
for held-out real images of the same classes (the first ``memorisation_heldout_per_class`` of
each class's seeded held-out order; default: as many per class as there are samples per class),
taking the nearest *non-zero* distance so exact duplicates in the dataset do not count. A sample
curve left of the reference curve means copying.

Exact LPIPS against every reference is too slow for 10,000 x 10,000 pairs, so candidates come
first from an exact (flat L2) faiss search in the protocol's default encoder space, top
``memorisation_candidates`` (default 10), and are re-ranked with exact LPIPS. On a seeded subset
of ``memorisation_check`` samples (default 32) the nearest neighbour is also found by brute force
over all references; ``memorisation_prefilter_agreement`` is the fraction of that subset where
the prefiltered distance equals the brute-force one (within 1e-6).

Histograms use fixed bin edges ``BIN_EDGES``: 50 bins of width 0.02 on [0, 1]; distances above 1
are counted in the last bin.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from varbench.metrics.base import Metric

KEY_NN_MEDIAN = "memorisation_nn_lpips_median"
KEY_HELDOUT_NN_MEDIAN = "memorisation_heldout_nn_lpips_median"
KEY_FRAC_BELOW_P1 = "memorisation_frac_below_heldout_p1"
KEY_AGREEMENT = "memorisation_prefilter_agreement"
ENCODER = "lpips"
BIN_EDGES = np.linspace(0.0, 1.0, 51)
AGREEMENT_TOL = 1e-6
_FEATURE_LRU = 128


def histogram(distances: np.ndarray) -> np.ndarray:
    """Counts over ``BIN_EDGES``; values above the last edge go into the last bin."""
    d = np.clip(np.asarray(distances, np.float64), BIN_EDGES[0], BIN_EDGES[-1])
    return np.histogram(d, bins=BIN_EDGES)[0]


def memorisation_summary(sample_nn: np.ndarray, heldout_nn: np.ndarray) -> dict[str, float]:
    """Medians of both curves and the fraction of samples below the held-out 1st percentile."""
    s = np.asarray(sample_nn, np.float64)
    h = np.asarray(heldout_nn, np.float64)
    h = h[~np.isnan(h)]
    p1 = float(np.percentile(h, 1)) if len(h) else float("nan")
    return {
        KEY_NN_MEDIAN: float(np.median(s)),
        KEY_HELDOUT_NN_MEDIAN: float(np.median(h)) if len(h) else float("nan"),
        KEY_FRAC_BELOW_P1: float((s < p1).mean()) if len(h) else float("nan"),
    }


def candidates(queries: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
    """Indices (n, min(c, len(base))) of each query's nearest base rows, exact L2 (faiss flat)."""
    import faiss

    base32 = np.ascontiguousarray(base, dtype=np.float32)
    index = faiss.IndexFlatL2(base32.shape[1])
    index.add(base32)
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(c, len(base32)))
    return idx


def nearest(distances: np.ndarray, nonzero: bool) -> tuple[float, int]:
    """Smallest distance (optionally among those > 0) and its position; (nan, -1) if none."""
    d = np.asarray(distances, np.float64)
    ok = d > 0 if nonzero else np.ones(len(d), dtype=bool)
    if not ok.any():
        return float("nan"), -1
    pos = int(np.flatnonzero(ok)[np.argmin(d[ok])])
    return float(d[pos]), pos


class _Features:
    """LPIPS layer stacks by image hash with a small LRU (stacks are megabytes each)."""

    def __init__(self, enc, image: Callable[[str], np.ndarray]):
        self.enc, self.image = enc, image
        self.lru: OrderedDict[str, list] = OrderedDict()

    def __call__(self, digest: str) -> list:
        hit = self.lru.get(digest)
        if hit is None:
            hit = self.lru[digest] = self.enc.layer_features(self.image(digest))
            while len(self.lru) > _FEATURE_LRU:
                self.lru.popitem(last=False)
        else:
            self.lru.move_to_end(digest)
        return hit


def rerank(
    enc,
    feats: _Features,
    queries: Sequence[str],
    base: Sequence[str],
    cand: np.ndarray,
    nonzero: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact LPIPS nearest neighbour of each query among its candidate base images."""
    dist, where = np.full(len(queries), np.nan), np.full(len(queries), -1)
    for i, q in enumerate(queries):
        fq = feats(q)
        d = enc.distances(fq, enc.stack([feats(base[j]) for j in cand[i]]))
        dist[i], pos = nearest(d, nonzero)
        where[i] = cand[i][pos] if pos >= 0 else -1
    return dist, where


def brute_force(enc, feats: _Features, queries: Sequence[str], base: Sequence[str]) -> np.ndarray:
    """Exact LPIPS nearest-neighbour distance of each query over every base image."""
    if not queries:
        return np.zeros(0)
    fq = enc.stack([enc.layer_features(feats.image(q)) for q in queries])
    best = np.full(len(queries), np.inf)
    for b in base:
        best = np.minimum(best, enc.distances(enc.layer_features(feats.image(b)), fq))
    return best


class MemorisationMetric(Metric):
    """Nearest-neighbour LPIPS histograms of samples and of held-out reals, with summaries."""

    name = "memorisation"
    keys = (KEY_NN_MEDIAN, KEY_HELDOUT_NN_MEDIAN, KEY_FRAC_BELOW_P1, KEY_AGREEMENT)
    encoders = (ENCODER,)

    def compute(self, ctx) -> dict[str, float]:
        enc = ctx.encoder(ENCODER)
        n_cand = int(ctx.options.get("memorisation_candidates", 10))
        n_check = int(ctx.options.get("memorisation_check", 32))
        n_classes = max(1, len(set(int(c) for c in ctx.real_class)))
        per_class = int(
            ctx.options.get(
                "memorisation_heldout_per_class", max(1, round(len(ctx.fake_hashes) / n_classes))
            )
        )
        real, fake = ctx.real(), ctx.fake()
        heldout, _ = ctx.heldout(per_class)
        feats = _Features(enc, ctx.image)
        self._sample_nn, self._sample_idx = rerank(
            enc, feats, ctx.fake_hashes, ctx.real_hashes, candidates(fake, real, n_cand), False
        )
        if heldout:
            held = ctx.features_of(heldout)
            self._heldout_nn, _ = rerank(
                enc, feats, heldout, ctx.real_hashes, candidates(held, real, n_cand + 1), True
            )
        else:
            self._heldout_nn = np.zeros(0)
        rng = np.random.default_rng(ctx.seed)
        subset = np.sort(rng.choice(len(fake), min(n_check, len(fake)), replace=False))
        exact = brute_force(enc, feats, [ctx.fake_hashes[i] for i in subset], ctx.real_hashes)
        agreement = float(np.mean(np.abs(self._sample_nn[subset] - exact) <= AGREEMENT_TOL))
        self._meta = {"candidates": n_cand, "heldout_per_class": per_class, "checked": len(subset)}
        return {**memorisation_summary(self._sample_nn, self._heldout_nn), KEY_AGREEMENT: agreement}

    def artifacts(self, ctx) -> dict[str, object]:
        held = self._heldout_nn[~np.isnan(self._heldout_nn)]
        return {
            "encoder": ENCODER,
            "prefilter_encoder": ctx.default_encoder,
            **self._meta,
            "bin_edges": BIN_EDGES.tolist(),
            "samples_hist": histogram(self._sample_nn).tolist(),
            "heldout_hist": histogram(held).tolist(),
            "samples_nn": self._sample_nn.tolist(),
            "samples_nn_reference": [ctx.real_hashes[i] for i in self._sample_idx],
            "heldout_nn": held.tolist(),
        }
