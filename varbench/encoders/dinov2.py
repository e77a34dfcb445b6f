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

from varbench.encoders.base import Encoder
from varbench.encoders.transforms import normalised_batch
from varbench.encoders.weights import (
    find_weights,
    hf_cached_file,
    missing_weights_error,
    network_reachable,
    offline,
    require_network,
    weights_only_loads,
)
from varbench.hashing import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


class DinoV2Encoder(Encoder):
    """DINOv2 ViT-B/14 CLS features (timm ``vit_base_patch14_dinov2.lvd142m``)."""

    name = "dinov2"
    arch: ClassVar[str] = "vit_base_patch14_dinov2"
    tag: ClassVar[str] = "lvd142m"
    image_size: ClassVar[int] = 224
    resize_mode = "pil_bicubic_shortest_224_centercrop"
    batch_size = 32
    outputs = ("features",)

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._net = None
        self._path: Path | None = None
        self._searched = False
        self._sha: str | None = None

    @classmethod
    def timm_name(cls) -> str:
        """``arch.tag`` as timm and the Hugging Face hub name it."""
        return f"{cls.arch}.{cls.tag}"

    @classmethod
    def weights_file(cls) -> str:
        """File name looked up in ``$VARBENCH_WEIGHTS_DIR``."""
        return f"{cls.timm_name()}.safetensors"

    def weights_path(self) -> Path | None:
        """Local weights file, or None when it would have to be downloaded."""
        if not self._searched:
            cached = hf_cached_file(f"timm/{self.timm_name()}", HF_FILES)
            self._path = find_weights(
                self.name, self.weights, self.weights_file(), [cached] if cached else []
            )
            self._searched = True
        return self._path

    def check_available(self) -> None:
        if self.weights_path() is None and (offline() or not network_reachable()):
            raise missing_weights_error(
                self.name, self.weights_file(), f"Hugging Face timm/{self.timm_name()}"
            )

    def fetch(self) -> Path:
        """Download the checkpoint into the Hugging Face cache; return its path."""
        from huggingface_hub import hf_hub_download

        require_network(f"{self.name} weights", "huggingface.co")
        return Path(hf_hub_download(f"timm/{self.timm_name()}", HF_FILES[0]))

    def resolved_path(self) -> Path:
        """The weights file, downloaded first if it is not on this machine (and we are online)."""
        if self.weights_path() is None:
            self.check_available()
            self._path = self.fetch()
        return self._path

    def config(self) -> dict[str, Any]:
        if self._sha is None:
            self._sha = sha256_file(str(self.resolved_path()))
        return {
            "version": 1,
            "model": self.timm_name(),
            "weights_sha256": self._sha,
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
