"""RIVAL's colour-palette distance (Zhang et al. 2023, appendix): low-level colour matching.

Each image's palette: 10 colours by k-means in RGB after a PIL bicubic resize to 256 x 256
(the Pylette package's defaults: ``extract_colors(palette_size=10, resize=256, mode="KM")``),
centres truncated to integers as Pylette does, then scaled to [0, 1]. Two palettes are matched
one to one by the Hungarian algorithm on L1 costs (scipy ``linear_sum_assignment``); the
distance is the sum of the matched L1 distances (0 to 30). k-means is seeded (Pylette fixes
``random_state=2024`` in scikit-learn; varbench uses its own seeded k-means++), so the same
image always gives the same palette. Reported per sample against its conditioning image.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from varbench.errors import UsageError
from varbench.metrics.base import Metric
from varbench.metrics.kmeans import kmeans

KEY_PALETTE_MEAN = "palette_distance_mean"
KEY_PALETTE_MEDIAN = "palette_distance_median"
N_COLOURS = 10
SIZE = 256
SEED = 2024
BIN_EDGES = np.linspace(
    0.0, 6.0, 61
)  # artifact histogram: width 0.1; larger values in the last bin


def palette(image: np.ndarray, n_colours: int = N_COLOURS, size: int = SIZE) -> np.ndarray:
    """(n_colours, 3) palette in [0, 1] of an HxWx3 uint8 image (fewer colours than pixels: fewer rows)."""
    im = Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3]))
    if size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    rgb = np.asarray(im).reshape(-1, 3).astype(np.int64)
    codes, counts = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], return_counts=True)
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1)
    k = min(n_colours, int(counts.sum()))
    centres, _, _ = kmeans(
        colours.astype(np.float64), min(k, len(colours)), SEED, 1, weights=counts
    )
    return np.trunc(centres) / 255.0


def palette_match(pa: np.ndarray, pb: np.ndarray) -> float:
    """Sum of L1 distances of the minimum-cost one-to-one matching of two palettes."""
    cost = np.abs(pa[:, None, :] - pb[None, :, :]).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def palette_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RIVAL's palette distance between two HxWx3 uint8 images."""
    return palette_match(palette(a), palette(b))


class PaletteMetric(Metric):
    """Palette distance of each sample to its conditioning image: mean, median, distribution."""

    name = "palette"
    keys = (KEY_PALETTE_MEAN, KEY_PALETTE_MEDIAN)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(ctx.fake_cond_index):
            groups[int(c)].append(i)
        if any(c < 0 for c in groups):
            raise UsageError(
                "the palette metric needs each sample's conditioning image; score it inside "
                "`varbench run` (two folders have none)"
            )
        dist = np.empty(len(ctx.fake_hashes))
        for c, idx in sorted(groups.items()):
            ref = palette(ctx.image(ctx.cond_hashes[c]))
            for i in idx:
                dist[i] = palette_match(palette(ctx.image(ctx.fake_hashes[i])), ref)
        self._dist = dist
        return {
            KEY_PALETTE_MEAN: float(dist.mean()) if len(dist) else float("nan"),
            KEY_PALETTE_MEDIAN: float(np.median(dist)) if len(dist) else float("nan"),
        }

    def artifacts(self, ctx) -> dict[str, object]:
        hist = np.histogram(np.clip(self._dist, BIN_EDGES[0], BIN_EDGES[-1]), bins=BIN_EDGES)[0]
        return {
            "per_sample": self._dist.tolist(),
            "bin_edges": BIN_EDGES.tolist(),
            "histogram": hist.tolist(),
        }
