"""Nearest-neighbour LPIPS memorisation curves (2SDM, Fig. 6), exact over every reference.

For every sample: the LPIPS distance to its nearest reference image, searched over all
references except the sample's own conditioning image (any reference with the same pixels):
conditioning images are references, so otherwise a faithful variation's nearest neighbour is
its own input and it looks like a copy (``lpips_to_cond`` already measures closeness to the
input). Reference curve: the same for held-out real images of the same classes (the first
``memorisation_heldout_per_class`` of each class's seeded held-out order; default: as many per
class as there are samples per class), excluding references with the same pixels, so exact
duplicates in the dataset do not count. A sample curve left of the reference curve means copying.

Exact search: LPIPS v0.1 is a squared Euclidean distance between per-image embeddings phi
(``LpipsEncoder.embed``), so the nearest neighbour is a chunked float64 matrix product over phi.
phi of the references is spilled once to a float32 memory-mapped file (deleted afterwards;
D = 640,128 floats per image at 256 px, i.e. 2.56 MB per reference) and read in chunks, so memory
stays bounded whatever the set sizes. On a seeded subset of ``memorisation_check`` samples the
nearest neighbour is recomputed by brute force with the LPIPS network's own per-pair arithmetic;
``memorisation_bruteforce_agreement`` is the fraction where both give the same neighbour and
distance (relative 1e-5): it is 1.0 unless something is wrong.

Histograms use fixed bin edges ``BIN_EDGES``: 50 bins of width 0.02 on [0, 1]; distances above 1
are counted in the last bin.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from varbench.metrics.base import Metric

KEY_NN_MEDIAN = "memorisation_nn_lpips_median"
KEY_HELDOUT_NN_MEDIAN = "memorisation_heldout_nn_lpips_median"
KEY_FRAC_BELOW_P1 = "memorisation_frac_below_heldout_p1"
KEY_AGREEMENT = "memorisation_bruteforce_agreement"
ENCODER = "lpips"
BIN_EDGES = np.linspace(0.0, 1.0, 51)
AGREEMENT_RTOL = 1e-5
EMBED_CHUNK = 32  # images per trunk pass
REF_CHUNK = 128  # reference rows per matrix product (0.65 GB of float64 at 256 px)


def histogram(distances: np.ndarray) -> np.ndarray:
    """Counts over ``BIN_EDGES``; values above the last edge go into the last bin."""
    d = np.clip(np.asarray(distances, np.float64), BIN_EDGES[0], BIN_EDGES[-1])
    return np.histogram(d, bins=BIN_EDGES)[0]


def memorisation_summary(sample_nn: np.ndarray, heldout_nn: np.ndarray) -> dict[str, float]:
    """Medians of both curves and the fraction of samples below the held-out 1st percentile."""
    s = np.asarray(sample_nn, np.float64)
    s = s[~np.isnan(s)]
    h = np.asarray(heldout_nn, np.float64)
    h = h[~np.isnan(h)]
    p1 = float(np.percentile(h, 1)) if len(h) else float("nan")
    return {
        KEY_NN_MEDIAN: float(np.median(s)) if len(s) else float("nan"),
        KEY_HELDOUT_NN_MEDIAN: float(np.median(h)) if len(h) else float("nan"),
        KEY_FRAC_BELOW_P1: float((s < p1).mean()) if len(h) and len(s) else float("nan"),
    }


def nearest_excluding(
    queries: np.ndarray, base: np.ndarray, exclude: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest base row (squared L2, float64) of each query, skipping ``exclude[i]``.

    ``base`` may be a memory-mapped array; it is read in chunks of ``REF_CHUNK`` rows.
    Returns (distances, indices); (nan, -1) where every base row is excluded.
    """
    q = np.asarray(queries, np.float64)
    qn = np.einsum("ij,ij->i", q, q)
    best = np.full(len(q), np.inf)
    where = np.full(len(q), -1, dtype=np.int64)
    for s in range(0, len(base), REF_CHUNK):
        b = np.asarray(base[s : s + REF_CHUNK], np.float64)
        d = qn[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (q @ b.T)
        for i, ex in enumerate(exclude):
            local = ex[(ex >= s) & (ex < s + len(b))] - s
            d[i, local] = np.inf
        j = d.argmin(axis=1)
        dj = d[np.arange(len(q)), j]
        better = dj < best
        best[better], where[better] = dj[better], j[better] + s
    # recompute each winner by direct differences (no cancellation), clipped at 0
    for i in np.flatnonzero(where >= 0):
        diff = q[i] - np.asarray(base[where[i]], np.float64)
        best[i] = float(diff @ diff)
    best[where < 0] = np.nan
    return best, where


def embed_all(enc, images: Callable[[int], np.ndarray], n: int, out: np.ndarray) -> None:
    """Write phi of images 0..n-1 into ``out`` (an (n, D) array or memmap), in chunks."""
    for s in range(0, n, EMBED_CHUNK):
        out[s : min(n, s + EMBED_CHUNK)] = enc.embed(
            [images(i) for i in range(s, min(n, s + EMBED_CHUNK))]
        )


def brute_force(enc, image: Callable[[str], np.ndarray], queries, base, exclude) -> np.ndarray:
    """Nearest distance of each query over every base image with the network's per-pair LPIPS."""
    if not len(queries):
        return np.zeros(0)
    fq = enc.stack([enc.layer_features(image(q)) for q in queries])
    d = np.empty((len(queries), len(base)))
    for j, b in enumerate(base):
        d[:, j] = enc.distances(enc.layer_features(image(b)), fq)
    for i, ex in enumerate(exclude):
        d[i, ex] = np.inf
    return d.min(axis=1)


class MemorisationMetric(Metric):
    """Nearest-neighbour LPIPS histograms of samples and of held-out reals, with summaries."""

    name = "memorisation"
    keys = (KEY_NN_MEDIAN, KEY_HELDOUT_NN_MEDIAN, KEY_FRAC_BELOW_P1, KEY_AGREEMENT)
    encoders = (ENCODER,)

    def compute(self, ctx) -> dict[str, float]:
        enc = ctx.encoder(ENCODER)
        n_check = int(ctx.options.get("memorisation_check", 32))
        n_classes = max(1, len(set(int(c) for c in ctx.real_class)))
        per_class = int(
            ctx.options.get(
                "memorisation_heldout_per_class", max(1, round(len(ctx.fake_hashes) / n_classes))
            )
        )
        refs = list(ctx.real_hashes)
        ref_rows: dict[str, list[int]] = {}
        for j, h in enumerate(refs):
            ref_rows.setdefault(h, []).append(j)
        none = np.zeros(0, dtype=np.int64)

        def same_pixels(h: str) -> np.ndarray:
            return np.asarray(ref_rows.get(h, none), dtype=np.int64)

        fake_cond = [ctx.cond_hashes[int(c)] if int(c) >= 0 else None for c in ctx.fake_cond_index]
        sample_exclude = [same_pixels(c) if c is not None else none for c in fake_cond]
        heldout, _ = ctx.heldout(per_class)
        held_exclude = [same_pixels(h) for h in heldout]
        cache_dir = getattr(getattr(ctx, "run", None), "cache_dir", None)
        with tempfile.TemporaryDirectory(prefix="lpips-phi-", dir=cache_dir) as tmp:
            dim = enc.embed([ctx.image(refs[0])]).shape[1]
            base = np.lib.format.open_memmap(
                Path(tmp) / "refs.npy", mode="w+", dtype=np.float32, shape=(len(refs), dim)
            )
            embed_all(enc, lambda j: ctx.image(refs[j]), len(refs), base)
            self._sample_nn, self._sample_idx = self._search(
                enc, ctx, ctx.fake_hashes, base, sample_exclude
            )
            self._heldout_nn, _ = self._search(enc, ctx, heldout, base, held_exclude)
            del base
        rng = np.random.default_rng(ctx.seed)
        subset = np.sort(
            rng.choice(len(ctx.fake_hashes), min(n_check, len(ctx.fake_hashes)), replace=False)
        )
        exact = brute_force(
            enc,
            ctx.image,
            [ctx.fake_hashes[i] for i in subset],
            refs,
            [sample_exclude[i] for i in subset],
        )
        ours = self._sample_nn[subset]
        agree = np.isclose(ours, exact, rtol=AGREEMENT_RTOL, atol=1e-9) | (
            np.isnan(ours) & np.isinf(exact)
        )
        self._meta = {
            "heldout_per_class": per_class,
            "checked": len(subset),
            "search": "exact: float64 matrix product over LPIPS phi embeddings",
            "excluded_own_conditioning": int(sum(len(e) for e in sample_exclude)),
        }
        summary = memorisation_summary(self._sample_nn, self._heldout_nn)
        return {**summary, KEY_AGREEMENT: float(agree.mean()) if len(agree) else float("nan")}

    @staticmethod
    def _search(enc, ctx, hashes, base, exclude) -> tuple[np.ndarray, np.ndarray]:
        """Nearest reference of each image (by hash), embedding queries chunk by chunk."""
        dist = np.full(len(hashes), np.nan)
        idx = np.full(len(hashes), -1, dtype=np.int64)
        for s in range(0, len(hashes), EMBED_CHUNK):
            chunk = hashes[s : s + EMBED_CHUNK]
            q = enc.embed([ctx.image(h) for h in chunk])
            dist[s : s + len(chunk)], idx[s : s + len(chunk)] = nearest_excluding(
                q, base, exclude[s : s + len(chunk)]
            )
        return dist, idx

    def artifacts(self, ctx) -> dict[str, object]:
        held = self._heldout_nn[~np.isnan(self._heldout_nn)]
        return {
            "encoder": ENCODER,
            **self._meta,
            "bin_edges": BIN_EDGES.tolist(),
            "samples_hist": histogram(self._sample_nn[~np.isnan(self._sample_nn)]).tolist(),
            "heldout_hist": histogram(held).tolist(),
            "samples_nn": [None if np.isnan(v) else float(v) for v in self._sample_nn],
            "samples_nn_reference": [
                ctx.real_hashes[i] if i >= 0 else None for i in self._sample_idx
            ],
            "heldout_nn": held.tolist(),
        }
