"""DINOv2 ViT-B/14 (alignment) and ViT-L/14 (FD-DINOv2 as dgm-eval; EDM2 resize_mode="pil") through timm.

Output ``features``: the CLS token after the final norm, i.e. torch hub's ``x_norm_clstoken``:
768-d for ViT-B, 1024-d for ViT-L. Preprocessing as dgm-eval: torchvision
``Resize((224, 224), BICUBIC)`` on a PIL image (a PIL bicubic resize of the whole image to
224 x 224; for the square images a protocol's preparation produces this equals a shortest-side
resize + centre crop), ToTensor, ImageNet mean/std.

Position embedding as the official DINOv2 code (facebookresearch/dinov2
``DinoVisionTransformer.interpolate_pos_encoding``, which dgm-eval and EDM2 load through
torch.hub): the checkpoint's 37 x 37 grid (518 px) is kept as stored and interpolated at run
time to the input's grid, bicubic, antialias off, with ``scale_factor = (g + 0.1) / 37``. timm's
default instead resamples the grid once at load time with antialiasing, which gives other
features; the model is therefore built at its native 518-px grid and run through
``official_forward``.
Weights come from a local file (never torch.hub): ``--weights dinov2=PATH``,
``$VARBENCH_WEIGHTS_DIR/<timm name>.safetensors``, or the Hugging Face cache (``varbench fetch``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from varbench.encoders.filed import WeightsFileEncoder
from varbench.encoders.weights import (
    hf_cached_file,
    weights_only_loads,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def dgm_eval_batch(images: Sequence[np.ndarray], size: int):
    """(N, 3, size, size): PIL bicubic resize to size x size, [0, 1], ImageNet mean/std."""
    import torch
    from PIL import Image

    arr = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(im)).resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for im in images
        ]
    ).astype(np.float32)
    x = torch.from_numpy(arr / np.float32(255.0)).permute(0, 3, 1, 2)
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def interpolate_pos_embed(pos_embed, height: int, width: int, patch: int, offset: float = 0.1):
    """The official DINOv2 run-time interpolation of a (1, 1 + M*M, D) position embedding."""
    import torch
    import torch.nn.functional as F

    n = pos_embed.shape[1] - 1
    gh, gw = height // patch, width // patch
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    if gh == gw == m:
        return pos_embed
    dtype = pos_embed.dtype
    pe = pos_embed.float()
    grid = pe[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid,
        scale_factor=((gh + offset) / m, (gw + offset) / m),
        mode="bicubic",
        antialias=False,
    )
    if tuple(grid.shape[-2:]) != (gh, gw):
        raise ValueError(f"interpolated grid {tuple(grid.shape[-2:])} != {(gh, gw)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    return torch.cat([pe[:, :1], grid], dim=1).to(dtype)


def official_forward(net, x):
    """CLS token after the final norm, with the official run-time position embedding."""
    import torch

    b, _, h, w = x.shape
    tokens = net.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = net.patch_embed.norm(tokens)
    tokens = torch.cat([net.cls_token.expand(b, -1, -1), tokens], dim=1)
    patch = net.patch_embed.patch_size[0]
    tokens = tokens + interpolate_pos_embed(net.pos_embed, h, w, patch)
    tokens = net.norm_pre(tokens)
    for block in net.blocks:
        tokens = block(tokens)
    return net.norm(tokens)[:, 0]


class DinoV2Encoder(WeightsFileEncoder):
    """DINOv2 ViT-B/14 CLS features (timm ``vit_base_patch14_dinov2.lvd142m``)."""

    name = "dinov2"
    arch: ClassVar[str] = "vit_base_patch14_dinov2"
    tag: ClassVar[str] = "lvd142m"
    image_size: ClassVar[int] = 224
    resize_mode = "pil_bicubic_224x224"
    outputs = ("features",)

    @classmethod
    def timm_name(cls) -> str:
        """``arch.tag`` as timm and the Hugging Face hub name it."""
        return f"{cls.arch}.{cls.tag}"

    @classmethod
    def weights_file(cls) -> str:
        return f"{cls.timm_name()}.safetensors"

    def cached_candidates(self) -> list[Path]:
        cached = hf_cached_file(f"timm/{self.timm_name()}", HF_FILES)
        return [cached] if cached else []

    def source(self) -> str:
        return f"Hugging Face timm/{self.timm_name()}"

    def download(self) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(f"timm/{self.timm_name()}", HF_FILES[0]))

    def config(self) -> dict[str, Any]:
        return {
            "version": 2,
            "pos_embed": "official dinov2 run-time bicubic interpolation, offset 0.1, no antialias",
            "model": self.timm_name(),
            "weights_sha256": self.weights_sha256(),
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "dtype": "float32",
        }

    def network(self):
        """The timm model with the local checkpoint, loaded once."""
        if self._net is None:
            import timm

            path = self.resolved_path()
            with weights_only_loads(path):
                net = timm.create_model(
                    self.arch,
                    pretrained=True,
                    pretrained_cfg_overlay={"file": str(path)},
                    num_classes=0,  # native 518-px grid: the stored position embedding, unresampled
                )
            self._net = net.eval().to(self.device)
        return self._net

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        import torch

        if output != "features":
            raise ValueError(f"{self.name} has only the output 'features'")
        net = self.network()
        if not len(images):
            return np.zeros((0, net.num_features))
        x = dgm_eval_batch(images, self.image_size)
        with torch.no_grad():
            return official_forward(net, x.to(self.device)).double().cpu().numpy()


class DinoV2LargeEncoder(DinoV2Encoder):
    """DINOv2 ViT-L/14 CLS features, the FD-DINOv2 network of dgm-eval and EDM2."""

    name = "dinov2_l"
    arch = "vit_large_patch14_dinov2"
