"""OpenAI CLIP through open_clip: ViT-B/16 (alignment) and ViT-L/14 (CLIP score, as RIVAL).

Output ``features``: the projected image embedding (``encode_image``, not normalised; metrics
take cosines), 512-d for ViT-B/16, 768-d for ViT-L/14. ``encode_text`` gives the matching text
embeddings. Preprocessing as open_clip's eval transform for these weights: bicubic resize of
the shortest side to 224, centre crop 224, OpenAI mean/std. OpenAI's networks use QuickGELU,
so the architecture is built as ``<model>-quickgelu`` and the weights loaded from a file
(``--weights clip=PATH``, ``$VARBENCH_WEIGHTS_DIR/<model>-openai.safetensors``, or the Hugging
Face cache filled by ``varbench fetch``); open_clip loads files with ``weights_only=True``.
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

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipEncoder(Encoder):
    """CLIP ViT-B/16 (OpenAI weights) image and text embeddings."""

    name = "clip"
    model_name: ClassVar[str] = "ViT-B-16"
    hf_repo: ClassVar[str] = "timm/vit_base_patch16_clip_224.openai"
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
    def weights_file(cls) -> str:
        """File name looked up in ``$VARBENCH_WEIGHTS_DIR``."""
        return f"{cls.model_name}-openai.safetensors"

    def weights_path(self) -> Path | None:
        """Local weights file, or None when it would have to be downloaded."""
        if not self._searched:
            cached = hf_cached_file(self.hf_repo, HF_FILES)
            self._path = find_weights(
                self.name, self.weights, self.weights_file(), [cached] if cached else []
            )
            self._searched = True
        return self._path

    def check_available(self) -> None:
        if self.weights_path() is None and (offline() or not network_reachable()):
            raise missing_weights_error(
                self.name, self.weights_file(), f"Hugging Face {self.hf_repo}"
            )

    def fetch(self) -> Path:
        """Download the open_clip checkpoint into the Hugging Face cache; return its path."""
        from huggingface_hub import hf_hub_download

        require_network(f"{self.name} weights", "huggingface.co")
        return Path(hf_hub_download(self.hf_repo, HF_FILES[0]))

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
            "model": f"{self.model_name}-quickgelu",
            "weights_sha256": self._sha,
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "dtype": "float32",
        }

    def network(self):
        """The open_clip model with the local checkpoint, loaded once."""
        if self._net is None:
            import open_clip

            path = self.resolved_path()
            with weights_only_loads():
                net = open_clip.create_model(
                    f"{self.model_name}-quickgelu", pretrained=str(path), load_weights=True
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
                x = normalised_batch([im], self.image_size, OPENAI_MEAN, OPENAI_STD)
                outs.append(net.encode_image(x.to(self.device)).double().cpu().numpy()[0])
        return np.stack(outs) if outs else np.zeros((0, net.visual.output_dim))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Projected text embeddings (N, D) of the prompts, one at a time."""
        import open_clip
        import torch

        net = self.network()
        tokenizer = open_clip.get_tokenizer(self.model_name)
        outs = []
        with torch.no_grad():
            for text in texts:
                tokens = tokenizer([text]).to(self.device)
                outs.append(net.encode_text(tokens).double().cpu().numpy()[0])
        return np.stack(outs) if outs else np.zeros((0, net.visual.output_dim))


class ClipLargeEncoder(ClipEncoder):
    """CLIP ViT-L/14 (OpenAI weights), the network of RIVAL's CLIP score."""

    name = "clip_l"
    model_name = "ViT-L-14"
    hf_repo = "timm/vit_large_patch14_clip_224.openai"
