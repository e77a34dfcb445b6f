"""Alignment (Semantica sec. 8.2): cosine similarity between each sample and its conditioning image."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from varbench.metrics.base import Metric, higher

KEY_ALIGN_DINO_MEAN = "align_dino_mean"
KEY_ALIGN_DINO_MEDIAN = "align_dino_median"
KEY_ALIGN_CLIP_MEAN = "align_clip_mean"
KEY_ALIGN_CLIP_MEDIAN = "align_clip_median"
KEY_ALIGN_MEAN = "align_mean"
KEY_ALIGN_MEDIAN = "align_median"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of ``a`` and ``b`` (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = np.einsum("ij,ij->i", a, b)
    return num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def alignment(samples: np.ndarray, cond: np.ndarray, cond_index: np.ndarray) -> np.ndarray:
    """Per-sample cosine between sample ``i`` and conditioning row ``cond_index[i]``."""
    return cosine_rows(samples, np.asarray(cond)[np.asarray(cond_index, dtype=int)])


class _AlignmentMetric(Metric):
    """Mean and median alignment in one encoder's space; per-sample values as artifacts."""

    encoder: ClassVar[str | None] = None  # None: the protocol's default encoder

    def compute(self, ctx) -> dict[str, float]:
        self._values = alignment(
            ctx.fake(self.encoder), ctx.cond(self.encoder), ctx.fake_cond_index
        )
        mean_key, median_key = self.keys
        return {mean_key: float(self._values.mean()), median_key: float(np.median(self._values))}

    def artifacts(self, ctx) -> dict[str, object]:
        return {"encoder": self.encoder, "per_sample": self._values.tolist()}


class AlignmentMetric(_AlignmentMetric):
    """Alignment in the protocol's default feature space (e.g. the demo's weight-free encoder)."""

    name = "alignment"
    results = (
        higher(KEY_ALIGN_MEAN, "alignment (mean cosine)"),
        higher(KEY_ALIGN_MEDIAN, "alignment (median cosine)"),
    )

    def artifacts(self, ctx) -> dict[str, object]:
        return {"encoder": ctx.default_encoder, "per_sample": self._values.tolist()}


class AlignmentDinoMetric(_AlignmentMetric):
    """Alignment in DINOv2 ViT-B/14 space."""

    name = "alignment_dinov2"
    encoder = "dinov2"
    results = (
        higher(KEY_ALIGN_DINO_MEAN, "DINOv2 alignment (mean)"),
        higher(KEY_ALIGN_DINO_MEDIAN, "DINOv2 alignment (median)"),
    )
    encoders = ("dinov2",)


class AlignmentClipMetric(_AlignmentMetric):
    """Alignment in CLIP ViT-B/16 space."""

    name = "alignment_clip"
    encoder = "clip"
    results = (
        higher(KEY_ALIGN_CLIP_MEAN, "CLIP alignment (mean)"),
        higher(KEY_ALIGN_CLIP_MEDIAN, "CLIP alignment (median)"),
    )
    encoders = ("clip",)
