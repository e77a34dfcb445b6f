"""Nearest-neighbour LPIPS memorisation curves (2SDM, Fig. 6) against what the model was shown.

In a K-shot run the model saw the conditioning images and nothing else of the reference set,
so copying means copying one of them. For every sample: the LPIPS distance to its nearest
conditioning image, its own included (a copy of its input is at exactly 0). Reference curve:
the same for held-out real images of the same classes (the first
``memorisation_heldout_per_class`` of each class's seeded held-out order; default: as many per
class as there are samples per class), excluding conditioning images with the same pixels, so
exact duplicates in the dataset do not count: how close real images that were never shown
come to the shown ones. A sample curve left of the reference curve means copying;
``memorisation_frac_below_heldout_p1`` is the share of samples closer to a shown image than
99 % of unseen real images come. A variation is meant to resemble its input, so a faithful
model can sit left of the curve too: read it with ``lpips_to_cond``.

Exact search: LPIPS v0.1 is a squared Euclidean distance between per-image embeddings phi
(``LpipsEncoder.embed``: weighted, normalised, concatenated features), so the nearest neighbour
is a search over phi by the one k-NN room (``varbench.metrics.knn.nearest_streamed``). phi of the references
is spilled once to a float32 file under the cache (deleted afterwards; D = 640,128 floats per
image at 256 px, i.e. 2.56 MB per reference) and streamed ``REF_CHUNK`` rows at a time against
blocks of ``QUERY_BLOCK`` queries: a float64 matrix product with a certified error bound, and a
direct-difference float64 recheck of every pair that could be the minimum under that bound, so
memory stays bounded (about 2.5 GB whatever the set sizes) and neither ties nor rounding pick a
wrong neighbour. On a seeded subset of ``memorisation_check`` samples, ``lpips.LPIPS.forward`` is
called on every (sample, reference) pair; ``memorisation_bruteforce_agreement`` is the fraction
where our neighbour is a brute-force minimiser and both distances agree (relative 1e-6): it is
1.0 unless something is wrong.

Identity is exact by design: a query whose pixels equal a reference's (same pixel hash of the
image handed to the encoder) is at distance exactly 0 from it, decided by the hash and never by
the float path (the same image embedded in another batch composition can differ in its last
bits, e.g. 4e-15 instead of 0). This is what a copied sample gets; the held-out curve's
identical-pixel exclusion removes those same rows by hash. "References" below and in the
search helpers are the base rows searched: the conditioning images.

Histograms use fixed bin edges ``BIN_EDGES``: 50 bins of width 0.02 on [0, 1]; distances above 1
are counted in the last bin.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from varbench.core.files import disk_full, is_disk_full
from varbench.core.hashing import pixel_sha256
from varbench.metrics.base import Metric, higher, lower, neither
from varbench.metrics.knn.streamed import float64_eps, nearest_streamed

KEY_NN_MEDIAN = "memorisation_nn_lpips_median"
KEY_HELDOUT_NN_MEDIAN = "memorisation_heldout_nn_lpips_median"
KEY_FRAC_BELOW_P1 = "memorisation_frac_below_heldout_p1"
KEY_AGREEMENT = "memorisation_bruteforce_agreement"
ENCODER = "lpips"
BIN_EDGES = np.linspace(0.0, 1.0, 51)
AGREEMENT_RTOL = 1e-6
EMBED_CHUNK = 32  # images per trunk pass
QUERY_BLOCK = 384  # query rows per pass over the references (1.97 GB of float64 at 256 px)
REF_CHUNK = 64  # reference rows per matrix product (0.33 GB of float64 at 256 px)
PAIR_CHUNK = 16  # pairs per direct-difference recheck


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


class RowFile:
    """Float32 rows of a fixed width in a plain file, appended in order and read back by slices.

    Plain reads (not a memory map), so the pages a search streams through stay in the page cache
    and out of the process's resident set.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.rows = Path(path), int(dim), 0
        self.hashes: list[str] | None = []  # pixel hash of each row's image; None if unknown
        self._fh = open(self.path, "w+b")  # noqa: SIM115 (closed by close())

    def append(self, rows: np.ndarray, hashes: Sequence[str] | None = None) -> None:
        """Write rows (n, dim) at the end, with the pixel hashes of their images when known."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got {rows.shape}")
        self._fh.seek(self.rows * self.dim * 4)
        try:
            self._fh.write(rows.tobytes())
            self._fh.flush()
        except OSError as exc:
            if is_disk_full(exc):  # named by the folder holding the spill's temporary folder
                raise disk_full(self.path.parent, exc) from exc
            raise
        self.rows += len(rows)
        if hashes is None or self.hashes is None or len(hashes) != len(rows):
            self.hashes = None
        else:
            self.hashes.extend(hashes)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.rows)
        out = np.empty((max(0, stop - start), self.dim), np.float32)
        self._fh.seek(start * self.dim * 4)
        got = self._fh.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise OSError(f"{self.path}: short read ({got} of {out.nbytes} bytes) of spilled rows")
        return out

    def close(self) -> None:
        self._fh.close()


def bound_eps(dim: int) -> float:
    """Certified relative error of float64 squared distances (``knn.float64_eps``)."""
    return float64_eps(dim)


def nearest_excluding(
    queries: np.ndarray,
    base,
    exclude: Sequence[np.ndarray],
    device: str = "cpu",
    identical: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest base row (squared L2 over phi) of each query, skipping ``exclude[i]``.

    The k-NN room's streamed search (``knn.nearest_streamed``), ``REF_CHUNK`` base rows per
    product; ``identical[i]``: base rows with query i's pixels, at distance exactly 0.
    Returns (distances, indices); (nan, -1) where every base row is excluded.
    """
    return nearest_streamed(
        queries, base, exclude, device, identical, ref_chunk=REF_CHUNK, pair_chunk=PAIR_CHUNK
    )


def embed_all(enc, images: Callable[[int], np.ndarray], n: int, out) -> None:
    """Append phi of images 0..n-1 to ``out`` (a ``RowFile``) or write them into an (n, D) array."""
    for s in range(0, n, EMBED_CHUNK):
        chunk = [images(i) for i in range(s, min(n, s + EMBED_CHUNK))]
        rows = enc.embed(chunk)
        if isinstance(out, RowFile):
            out.append(rows, [pixel_sha256(np.asarray(im)) for im in chunk])
        else:
            out[s : min(n, s + EMBED_CHUNK)] = rows


def search_images(
    enc, image: Callable[[int], np.ndarray], n: int, base, exclude: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest base row of images 0..n-1, embedded ``QUERY_BLOCK`` at a time (bounded memory).

    When ``base`` knows its images' pixel hashes (a ``RowFile`` filled by ``embed_all``), a query
    with the same pixels as a base row is at distance exactly 0 from it (``nearest_excluding``).
    """
    dist = np.full(n, np.nan)
    idx = np.full(n, -1, dtype=np.int64)
    base_hashes = getattr(base, "hashes", None)
    rows_of: dict[str, list[int]] = {}
    for j, h in enumerate(base_hashes if base_hashes and len(base_hashes) == len(base) else ()):
        rows_of.setdefault(h, []).append(j)
    for s in range(0, n, QUERY_BLOCK):
        e = min(n, s + QUERY_BLOCK)
        block = None
        identical: list[np.ndarray] = []
        for t in range(s, e, EMBED_CHUNK):
            chunk = [image(i) for i in range(t, min(e, t + EMBED_CHUNK))]
            if rows_of:
                identical += [
                    np.asarray(rows_of.get(pixel_sha256(np.asarray(im)), ()), np.int64)
                    for im in chunk
                ]
            rows = enc.embed(chunk)
            if block is None:
                block = np.empty((e - s, rows.shape[1]), np.float64)
            block[t - s : t - s + len(rows)] = rows
        dist[s:e], idx[s:e] = nearest_excluding(
            block, base, exclude[s:e], str(enc.device), identical if rows_of else None
        )
        del block
    return dist, idx


def brute_force(enc, image: Callable[[str], np.ndarray], queries, base, exclude) -> np.ndarray:
    """LPIPS of every (query, base) pair by calling ``lpips.LPIPS.forward``; excluded pairs inf."""
    import torch

    net = enc.network()
    d = np.full((len(queries), len(base)), np.inf)
    if not len(queries):
        return d
    qt = torch.cat([enc.prepare([image(h)]) for h in queries])
    with torch.no_grad():
        for j, h in enumerate(base):
            bt = enc.prepare([image(h)]).expand(len(queries), -1, -1, -1)
            d[:, j] = net(qt, bt).view(-1).double().cpu().numpy()
    for i, ex in enumerate(exclude):
        d[i, ex] = np.inf
    return d


def agreement(dist: np.ndarray, idx: np.ndarray, brute: np.ndarray) -> np.ndarray:
    """Per query: our neighbour is a brute-force minimiser and our distance equals its minimum.

    Both within ``AGREEMENT_RTOL`` (the float32 forward's rounding); everything excluded on both
    sides (nan / all inf) also agrees.
    """
    out = np.zeros(len(dist), dtype=bool)
    for i, (dv, j) in enumerate(zip(dist, idx, strict=True)):
        lo = brute[i].min() if brute.shape[1] else np.inf
        if not np.isfinite(lo):
            out[i] = j < 0
        elif j >= 0:
            close = np.isclose([dv, brute[i, j]], lo, rtol=AGREEMENT_RTOL, atol=1e-9)
            out[i] = bool(close.all())
    return out


class MemorisationMetric(Metric):
    """Nearest-conditioning-image LPIPS histograms of samples and of held-out reals, summarised."""

    name = "memorisation"
    results = (
        higher(KEY_NN_MEDIAN, "nearest shown image LPIPS (median)"),
        neither(KEY_HELDOUT_NN_MEDIAN, "held-out nearest shown image LPIPS (median)"),
        lower(KEY_FRAC_BELOW_P1, "fraction closer than held-out 1st percentile"),
        neither(KEY_AGREEMENT, "brute-force agreement of the memorisation search"),
    )
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
        refs = list(dict.fromkeys(ctx.cond_hashes))  # what the model was shown
        ref_rows: dict[str, list[int]] = {}
        for j, h in enumerate(refs):
            ref_rows.setdefault(h, []).append(j)
        none = np.zeros(0, dtype=np.int64)

        def same_pixels(h: str) -> np.ndarray:
            return np.asarray(ref_rows.get(h, none), dtype=np.int64)

        sample_exclude = [none] * len(ctx.fake_hashes)  # its own input counts: a copy is at 0
        heldout, _ = ctx.heldout(per_class)
        held_exclude = [same_pixels(h) for h in heldout]
        cache_dir = getattr(getattr(ctx, "run", None), "cache_dir", None)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="lpips-phi-", dir=cache_dir) as tmp:
            dim = enc.embed([ctx.image(refs[0])]).shape[1]
            base = RowFile(Path(tmp) / "refs.f32", dim)
            try:
                embed_all(enc, lambda j: ctx.image(refs[j]), len(refs), base)
                fakes = list(ctx.fake_hashes)
                self._sample_nn, self._sample_idx = search_images(
                    enc, lambda i: ctx.image(fakes[i]), len(fakes), base, sample_exclude
                )
                self._heldout_nn, _ = search_images(
                    enc, lambda i: ctx.image(heldout[i]), len(heldout), base, held_exclude
                )
            finally:
                base.close()
        rng = np.random.default_rng(ctx.seed)
        subset = np.sort(
            rng.choice(len(ctx.fake_hashes), min(n_check, len(ctx.fake_hashes)), replace=False)
        )
        brute = brute_force(
            enc,
            ctx.image,
            [ctx.fake_hashes[i] for i in subset],
            refs,
            [sample_exclude[i] for i in subset],
        )
        agree = agreement(self._sample_nn[subset], self._sample_idx[subset], brute)
        self._meta = {
            "heldout_per_class": per_class,
            "checked": len(subset),
            "search": "exact: float64 products over LPIPS phi with a certified bound, "
            "direct-difference recheck",
            "base": "conditioning images",
            "n_base": len(refs),
        }
        self._base = refs
        summary = memorisation_summary(self._sample_nn, self._heldout_nn)
        return {**summary, KEY_AGREEMENT: float(agree.mean()) if len(agree) else float("nan")}

    def artifacts(self, ctx) -> dict[str, object]:
        held = self._heldout_nn[~np.isnan(self._heldout_nn)]
        return {
            "encoder": ENCODER,
            **self._meta,
            "bin_edges": BIN_EDGES.tolist(),
            "samples_hist": histogram(self._sample_nn[~np.isnan(self._sample_nn)]).tolist(),
            "heldout_hist": histogram(held).tolist(),
            "samples_nn": [None if np.isnan(v) else float(v) for v in self._sample_nn],
            "samples_nn_reference": [self._base[i] if i >= 0 else None for i in self._sample_idx],
            "heldout_nn": held.tolist(),
        }
