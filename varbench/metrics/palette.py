"""RIVAL's colour-palette distance (Zhang et al. 2023, appendix): low-level colour matching.

Each image's palette is Pylette's ``extract_colors(image, palette_size=10)`` with the k-means
frequency order; two extractions (``palette_mode``):

- ``rival`` (default): the extraction RIVAL (2023) could have run. Until February 2024 Pylette
  (PyPI 0.4 of 2018, and the repository's "1.0.0" of 2022) clustered the RGB image, PIL resize to
  256 x 256 (Pillow's default filter, bicubic), with scikit-learn's ``KMeans(n_clusters=10)``
  defaults of the time: k-means++, ``n_init=10`` restarts (the default until scikit-learn 1.4),
  unseeded. varbench seeds it (``random_state=2024``) so a run is repeatable.
- ``pylette6``: Pylette 6's default: RGBA, PIL bicubic to 256 x 256,
  ``KMeans(10, n_init="auto", random_state=2024)`` (one k-means++ run; PyPI's 1.0.0 of
  February 2024 already passed ``n_init="auto"``).

scikit-learn's k-means is transcribed in ``kmeans.kmeans_sklearn`` (scikit-learn is not a
dependency); centres truncated to integers, colours scaled to [0, 1]. Two palettes are matched
one to one by the Hungarian algorithm on L1 costs (scipy ``linear_sum_assignment``); the
distance is the sum of the matched L1 distances (0 to 30). Reported per sample against its
conditioning image.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from varbench.errors import UsageError
from varbench.metrics.base import Metric, lower
from varbench.metrics.kmeans import kmeans_sklearn

KEY_PALETTE_MEAN = "palette_distance_mean"
KEY_PALETTE_MEDIAN = "palette_distance_median"
N_COLOURS = 10
SIZE = 256
SEED = 2024
PALETTE_MODES = ("rival", "pylette6")  # the first is the default
N_INIT = {"rival": 10, "pylette6": 1}  # scikit-learn's n_init=10 (< 1.4) / n_init="auto"
CHANNELS = {"rival": "RGB", "pylette6": "RGBA"}
BIN_EDGES = np.linspace(
    0.0, 6.0, 61
)  # artifact histogram: width 0.1; larger values in the last bin


def _mode(mode: str) -> str:
    if mode not in PALETTE_MODES:
        raise UsageError(f"palette_mode must be one of {', '.join(PALETTE_MODES)}, got {mode!r}")
    return mode


def pixels(image: np.ndarray, size: int = SIZE, mode: str = PALETTE_MODES[0]) -> np.ndarray:
    """(n, 3) RGB or (n, 4) RGBA pixels Pylette clusters: converted, PIL bicubic to size x size
    (Pillow's default filter for both), fully transparent pixels dropped (RGBA)."""
    rgb = np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])
    im = Image.fromarray(rgb).convert(CHANNELS[_mode(mode)])
    if size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im)
    if arr.shape[2] == 4:
        return arr[~(arr[:, :, 3] <= 0)]
    return arr.reshape(-1, 3)


def palette(
    image: np.ndarray, n_colours: int = N_COLOURS, size: int = SIZE, mode: str = PALETTE_MODES[0]
) -> np.ndarray:
    """(n_colours, 3) palette in [0, 1] of an HxWx3 uint8 image, most frequent colour first.

    scikit-learn's seeded k-means (transcribed in ``kmeans_sklearn``, ``n_init`` of the mode)
    on every pixel, centres truncated to integers, ordered by cluster size (stable), alpha
    dropped. Like Pylette, clusters numbered after the last non-empty one are left out (a flat
    image has a one-colour palette).
    """
    px = pixels(image, size, mode)
    centres, labels = kmeans_sklearn(px, min(n_colours, len(px)), SEED, n_init=N_INIT[mode])
    counts = np.bincount(labels)  # as Pylette: clusters after the last used label are dropped
    order = np.argsort(-counts, kind="stable")
    return np.array(centres[: len(counts)], dtype=int)[order, :3] / 255.0


def palette_match(pa: np.ndarray, pb: np.ndarray) -> float:
    """Sum of L1 distances of the minimum-cost one-to-one matching of two palettes."""
    cost = np.abs(pa[:, None, :] - pb[None, :, :]).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def palette_distance(a: np.ndarray, b: np.ndarray, mode: str = PALETTE_MODES[0]) -> float:
    """RIVAL's palette distance between two HxWx3 uint8 images."""
    return palette_match(palette(a, mode=mode), palette(b, mode=mode))


class PaletteMetric(Metric):
    """Palette distance of each sample to its conditioning image: mean, median, distribution."""

    name = "palette"
    results = (
        lower(KEY_PALETTE_MEAN, "palette distance (mean)"),
        lower(KEY_PALETTE_MEDIAN, "palette distance (median)"),
    )
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        mode = _mode(str(ctx.options.get("palette_mode", PALETTE_MODES[0])))
        groups: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(ctx.fake_cond_index):
            groups[int(c)].append(i)
        if any(c < 0 for c in groups):
            raise UsageError(
                "the palette metric needs each sample's conditioning image; score it inside "
                "`varbench run` (two folders have none)"
            )
        dist = np.empty(len(ctx.fake_hashes))
        cache: dict[str, np.ndarray] = {}  # by content hash: a copy's palette is its source's

        def of(h: str) -> np.ndarray:
            if h not in cache:
                cache[h] = palette(ctx.image(h), mode=mode)
            return cache[h]

        for c, idx in sorted(groups.items()):
            ref = of(ctx.cond_hashes[c])
            for i in idx:
                dist[i] = palette_match(of(ctx.fake_hashes[i]), ref)
        self._dist, self._mode = dist, mode
        return {
            KEY_PALETTE_MEAN: float(dist.mean()) if len(dist) else float("nan"),
            KEY_PALETTE_MEDIAN: float(np.median(dist)) if len(dist) else float("nan"),
        }

    def artifacts(self, ctx) -> dict[str, object]:
        hist = np.histogram(np.clip(self._dist, BIN_EDGES[0], BIN_EDGES[-1]), bins=BIN_EDGES)[0]
        return {
            "mode": self._mode,
            "per_sample": self._dist.tolist(),
            "bin_edges": BIN_EDGES.tolist(),
            "histogram": hist.tolist(),
        }
