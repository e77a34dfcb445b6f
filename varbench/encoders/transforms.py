"""Named image preprocessing shared by the ViT encoders (part of each encoder's cache key)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_shortest_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic resize of the shortest side to ``size``, then a centred ``size`` crop.

    The arithmetic follows torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL images
    (long side truncated, crop offset rounded), which is what open_clip and dgm-eval use.
    """
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    im = Image.fromarray(np.ascontiguousarray(image))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)))


def normalised_batch(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
):
    """(N, 3, size, size) float32 tensor: resize/crop, scale to [0, 1], subtract mean, divide std."""
    import torch

    arr = np.stack([resize_shortest_center_crop(im, size) for im in images]).astype(np.float32)
    x = torch.from_numpy(arr / np.float32(255.0)).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()
