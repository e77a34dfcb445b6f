"""CLIP score is on RIVAL's scale: the plain cosine of image and text embeddings (not x 100)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cosine

from varbench.metrics.clip_score import SCALE, clip_scores


def test_clip_score_is_the_plain_cosine():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(7, 16)), rng.normal(size=(3, 16))
    index = np.array([0, 1, 2, 0, 1, 2, 0])
    got = clip_scores(images, texts, index)
    want = [1.0 - cosine(images[i], texts[index[i]]) for i in range(7)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert np.all(np.abs(got) <= 1.0) and (got < 0).any()  # not clipped at 0
    assert SCALE == "cosine"
