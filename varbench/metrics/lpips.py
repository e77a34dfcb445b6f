"""LPIPS to the conditioning image (closeness) and among one image's samples (diversity)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from varbench.metrics.base import Metric, higher, neither

KEY_LPIPS_TO_COND = "lpips_to_cond"
KEY_LPIPS_DIVERSITY = "lpips_diversity"
ENCODER = "lpips"


def mean_pairwise(distances: np.ndarray) -> float:
    """Mean of the strict upper triangle of a symmetric (n, n) distance matrix; NaN if n < 2."""
    d = np.asarray(distances, np.float64)
    iu = np.triu_indices(len(d), k=1)
    return float(d[iu].mean()) if len(iu[0]) else float("nan")


def lpips_summary(to_cond: np.ndarray, diversity: np.ndarray) -> dict[str, float]:
    """Mean sample-to-conditioning LPIPS; mean over conditioning images of their diversity."""
    div = np.asarray(diversity, np.float64)
    div = div[~np.isnan(div)]
    return {
        KEY_LPIPS_TO_COND: float(np.mean(to_cond)),
        KEY_LPIPS_DIVERSITY: float(div.mean()) if len(div) else float("nan"),
    }


class LpipsMetric(Metric):
    """LPIPS (AlexNet, v0.1) to the conditioning image and pairwise among its samples."""

    name = "lpips"
    results = (
        neither(KEY_LPIPS_TO_COND, "LPIPS to the conditioning image"),
        higher(KEY_LPIPS_DIVERSITY, "LPIPS diversity"),
    )
    encoders = (ENCODER,)

    def compute(self, ctx) -> dict[str, float]:
        enc = ctx.encoder(ENCODER)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(ctx.fake_cond_index):
            groups[int(c)].append(i)
        to_cond = np.empty(len(ctx.fake_hashes))
        self._diversity = {}
        for c, idx in sorted(groups.items()):
            cond = enc.layer_features(ctx.image(ctx.cond_hashes[c]))
            feats = [enc.layer_features(ctx.image(ctx.fake_hashes[i])) for i in idx]
            to_cond[idx] = enc.distances(cond, enc.stack(feats))
            d = np.zeros((len(idx), len(idx)))
            for a in range(len(idx) - 1):
                d[a, a + 1 :] = enc.distances(feats[a], enc.stack(feats[a + 1 :]))
            self._diversity[c] = mean_pairwise(d + d.T)
        self._to_cond = to_cond
        return lpips_summary(to_cond, np.array(list(self._diversity.values())))

    def artifacts(self, ctx) -> dict[str, object]:
        return {
            "encoder": ENCODER,
            "to_cond_per_sample": self._to_cond.tolist(),
            "diversity_per_cond": {
                ctx.cond_hashes[c]: (None if np.isnan(v) else v) for c, v in self._diversity.items()
            },
        }
