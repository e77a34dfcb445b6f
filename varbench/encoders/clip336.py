"""CLIP ViT-L/14 at 336 px (OpenAI weights through open_clip): CMMD's embedding network.

Images are prepared as google-research ``cmmd/io_util.py`` does: the centred largest square,
PIL bicubic resize (with antialiasing) to 336 x 336, scaled to [0, 1], CLIP mean/std; the
output ``features`` is the projected image embedding divided by its L2 norm (CMMD compares
unit vectors). Weights: ``--weights clip_l336=PATH``,
``$VARBENCH_WEIGHTS_DIR/ViT-L-14-336-openai.safetensors``, or the Hugging Face cache filled by
``varbench fetch --encoders clip_l336``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from varbench.encoders.clip import OPENAI_MEAN, OPENAI_STD, ClipEncoder


def centre_square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The centred min(h, w) square (offsets floored), PIL bicubic to size x size (cmmd io_util)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    im = Image.fromarray(np.ascontiguousarray(image)).crop((left, top, left + side, top + side))
    return np.asarray(im.resize((size, size), resample=Image.Resampling.BICUBIC))


class ClipL336Encoder(ClipEncoder):
    """CLIP ViT-L/14 336 px (OpenAI), L2-normalised image embeddings, for CMMD."""

    name = "clip_l336"
    model_name = "ViT-L-14-336"
    hf_repo = "timm/vit_large_patch14_clip_336.openai"
    image_size = 336
    resize_mode = "pil_centre_square_bicubic_336"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "version": 1, "normalised": "l2"}

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        emb = super().encode(images, output)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def pixels(self, images: Sequence[np.ndarray]):
        """cmmd io_util's input: centred square, PIL bicubic to 336, [0, 1], CLIP mean/std."""
        import torch

        arr = np.stack([centre_square_resize(im, self.image_size) for im in images])
        x = torch.from_numpy(arr.astype(np.float32) / np.float32(255.0)).permute(0, 3, 1, 2)
        mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_STD, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()
