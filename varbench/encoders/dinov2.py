"""DINOv2 ViT-B/14 (alignment) and ViT-L/14 (FD-DINOv2, as dgm-eval / EDM2) through timm.

Output ``features``: the CLS token after the final norm (timm ``num_classes=0``, token pooling),
i.e. torch hub's ``x_norm_clstoken``: 768-d for ViT-B, 1024-d for ViT-L. Preprocessing as
dgm-eval: bicubic resize of the shortest side to 224, centre crop 224, ImageNet mean/std; the
position embedding of the 518-px checkpoint is resampled to 224 by timm when loading.
Weights come from a local file (never torch.hub): ``--weights dinov2=PATH``,
``$VARBENCH_WEIGHTS_DIR/<timm name>.safetensors``, or the Hugging Face cache (``varbench fetch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from varbench.encoders.filed import WeightsFileEncoder
from varbench.encoders.transforms import normalised_batch
from varbench.encoders.weights import (
    hf_cached_file,
    weights_only_loads,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


class DinoV2Encoder(WeightsFileEncoder):
    """DINOv2 ViT-B/14 CLS features (timm ``vit_base_patch14_dinov2.lvd142m``)."""

    name = "dinov2"
    arch: ClassVar[str] = "vit_base_patch14_dinov2"
    tag: ClassVar[str] = "lvd142m"
    image_size: ClassVar[int] = 224
    resize_mode = "pil_bicubic_shortest_224_centercrop"
    batch_size = 32
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
            "version": 1,
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
            with weights_only_loads():
                net = timm.create_model(
                    self.arch,
                    pretrained=True,
                    pretrained_cfg_overlay={"file": str(path)},
                    img_size=self.image_size,
                    num_classes=0,
                )
            self._net = net.eval().to(self.device)
        return self._net

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        import torch

        if output != "features":
            raise ValueError(f"{self.name} has only the output 'features'")
        net = self.network()
        outs = []
        with torch.no_grad():
            for im in images:  # one at a time: rows independent of batch composition
                x = normalised_batch([im], self.image_size, IMAGENET_MEAN, IMAGENET_STD)
                outs.append(net(x.to(self.device)).double().cpu().numpy()[0])
        return np.stack(outs) if outs else np.zeros((0, net.num_features))


class DinoV2LargeEncoder(DinoV2Encoder):
    """DINOv2 ViT-L/14 CLS features, the FD-DINOv2 network of dgm-eval and EDM2."""

    name = "dinov2_l"
    arch = "vit_large_patch14_dinov2"
