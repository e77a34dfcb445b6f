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

from varbench.encoders.filed import WeightsFileEncoder
from varbench.encoders.transforms import normalised_batch
from varbench.encoders.weights import (
    hf_cached_file,
    weights_only_loads,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipEncoder(WeightsFileEncoder):
    """CLIP ViT-B/16 (OpenAI weights) image and text embeddings."""

    name = "clip"
    model_name: ClassVar[str] = "ViT-B-16"
    hf_repo: ClassVar[str] = "timm/vit_base_patch16_clip_224.openai"
    image_size: ClassVar[int] = 224
    resize_mode = "pil_bicubic_shortest_224_centercrop"
    outputs = ("features",)

    @classmethod
    def weights_file(cls) -> str:
        return f"{cls.model_name}-openai.safetensors"

    def cached_candidates(self) -> list[Path]:
        cached = hf_cached_file(self.hf_repo, HF_FILES)
        return [cached] if cached else []

    def source(self) -> str:
        return f"Hugging Face {self.hf_repo}"

    def download(self) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.hf_repo, HF_FILES[0]))

    def config(self) -> dict[str, Any]:
        return {
            "version": 2,
            "model": f"{self.model_name}-quickgelu",
            "weights_sha256": self.weights_sha256(),
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "dtype": "float32",
        }

    def network(self):
        """The open_clip model with the local checkpoint, loaded once."""
        if self._net is None:
            import open_clip

            path = self.resolved_path()
            with weights_only_loads(path):
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
        if not len(images):
            return np.zeros((0, net.visual.output_dim))
        x = self.pixels(images)
        with torch.no_grad():  # one batch (the feature cache's chunk)
            return net.encode_image(x.to(self.device)).double().cpu().numpy()

    def pixels(self, images: Sequence[np.ndarray]):
        """The network's input batch (N, 3, S, S): open_clip's preprocessing, CLIP mean/std."""
        return normalised_batch(images, self.image_size, OPENAI_MEAN, OPENAI_STD)

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
