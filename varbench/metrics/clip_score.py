"""CLIP score as RIVAL reports it: the plain cosine(image, text) in CLIP ViT-L/14, text = class label.

RIVAL's appendix E: "compute the cosine similarity between the projected features, yielding the
output", so the column is on the cosine scale [-1, 1], not torchmetrics' 100 x max(cos, 0).
"""

from __future__ import annotations

import numpy as np

from varbench.metrics.alignment import cosine_rows
from varbench.metrics.base import Metric, higher

KEY_CLIP_SCORE = "clip_score"
SCALE = "cosine"  # plain cosine in [-1, 1] (RIVAL), not 100 x cosine
ENCODER = "clip_l"


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    """Per-image cos(image ``i``, text row ``text_index[i]``): plain cosine, not x 100, not clipped."""
    return cosine_rows(image_emb, np.asarray(text_emb)[np.asarray(text_index, dtype=int)])


class ClipScoreMetric(Metric):
    """Mean CLIP score of the samples against their class label as the prompt."""

    name = "clip_score"
    results = (higher(KEY_CLIP_SCORE, "CLIP score"),)
    encoders = (ENCODER,)

    def compute(self, ctx) -> dict[str, float]:
        images = ctx.fake(ENCODER)
        classes = sorted(set(int(c) for c in ctx.fake_class))
        row = {c: i for i, c in enumerate(classes)}
        text = ctx.encoder(ENCODER).encode_text([ctx.class_labels[c] for c in classes])
        self._values = clip_scores(images, text, np.array([row[int(c)] for c in ctx.fake_class]))
        return {KEY_CLIP_SCORE: float(self._values.mean())}

    def artifacts(self, ctx) -> dict[str, object]:
        return {
            "encoder": ENCODER,
            "prompt": "class label",
            "scale": SCALE,
            "per_sample": self._values.tolist(),
        }
