"""A weight-free, deterministic encoder for the embedded demo.

Hand-made features (colour histogram, histogram of oriented gradients, Fourier energy) computed
per image in float64 numpy: nothing to download, identical bits on every machine and for every
batch composition, and enough structure to tell the demo's shape/texture classes apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from varbench.encoders.base import Encoder

SIZE = 64
CELLS = 4
ORIENTATIONS = 8
COLOUR_BINS = 8
FFT_BANDS = 4
FFT_ANGLES = 4


def _resize(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (SIZE, SIZE):
        return image
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def demo_features(image: np.ndarray) -> np.ndarray:
    """Feature vector of one HxWx3 uint8 image (float64, 24 + 128 + 16 dims)."""
    x = _resize(image).astype(np.float64) / 255.0
    colour = np.concatenate(
        [np.histogram(x[..., c], bins=COLOUR_BINS, range=(0.0, 1.0))[0] for c in range(3)]
    ) / float(SIZE * SIZE)
    gray = x @ np.array([0.299, 0.587, 0.114])
    gy, gx = np.gradient(gray)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((ang / np.pi * ORIENTATIONS).astype(int), ORIENTATIONS - 1)
    cell = SIZE // CELLS
    hog = np.zeros((CELLS, CELLS, ORIENTATIONS))
    for i in range(CELLS):
        for j in range(CELLS):
            sl = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
            hog[i, j] = np.bincount(
                bins[sl].ravel(), weights=mag[sl].ravel(), minlength=ORIENTATIONS
            )
    hog = hog / (np.linalg.norm(hog, axis=-1, keepdims=True) + 1e-6)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean())))
    yy, xx = np.mgrid[-SIZE // 2 : SIZE // 2, -SIZE // 2 : SIZE // 2]
    radius = np.hypot(xx, yy) / (SIZE / 2)
    theta = np.mod(np.arctan2(yy, xx), np.pi)
    rb = np.minimum((radius * FFT_BANDS).astype(int), FFT_BANDS)
    tb = np.minimum((theta / np.pi * FFT_ANGLES).astype(int), FFT_ANGLES - 1)
    keep = rb < FFT_BANDS
    energy = np.bincount(
        (rb * FFT_ANGLES + tb)[keep], weights=spec[keep], minlength=FFT_BANDS * FFT_ANGLES
    )
    energy = energy / (energy.sum() + 1e-12)
    return np.concatenate([colour, hog.ravel() * 0.5, energy])


class DemoEncoder(Encoder):
    """Weight-free features for ``demo_1shot``."""

    name = "demo"
    resize_mode = "pil_bicubic_64"
    batch_size = 64

    def config(self) -> dict[str, Any]:
        return {"version": 1, "resize_mode": self.resize_mode, "dtype": "float64"}

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        return np.stack([demo_features(im) for im in images]) if images else np.zeros((0, 168))
