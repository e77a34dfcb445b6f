"""Stable Diffusion Image Variations v2 (Pinkney / Lambda Labs): CLIP image embedding as the context.

Weights: ``lambdalabs/sd-image-variations-diffusers`` at revision ``v2.0`` (the model card's
pin). Preprocessing follows the model card exactly: the [0, 1] RGB tensor is resized to the
image encoder's input size (224) with bicubic interpolation *without* antialiasing, then CLIP-
normalised, and passed to the pipeline as a tensor (its PIL path would antialias).
Guidance (``sd`` convention): eps(none) + g * (eps(c) - eps(none)), g = 1 unguided; the
unconditional embedding is zeros, as in the pipeline. Paper sweep: g = 1, 4, 6, 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .diffusers_common import DiffusersVariationAdapter, single_repo_params
from .hf import SampleJob

REPO_ID = "lambdalabs/sd-image-variations-diffusers"
REVISION = "v2.0"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Everything the image-variation pipeline loads (safetensors preferred, else the .bin pickle,
# read with weights_only); not the safety checker (off) or the model card's sample images.
FILES = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "image_encoder/config.json",
    ("image_encoder/model.safetensors", "image_encoder/pytorch_model.bin"),
    "unet/config.json",
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae/config.json",
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
)


def clip_preprocess(images: Sequence[np.ndarray], size: int):
    """Model-card preprocessing: bicubic resize without antialias on [0, 1], CLIP normalisation."""
    import torch
    import torch.nn.functional as F

    batch = torch.stack(
        [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
    ).float()
    batch = batch / 255.0
    batch = F.interpolate(
        batch, size=(size, size), mode="bicubic", align_corners=False, antialias=False
    )
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


class SdImageVariationsAdapter(DiffusersVariationAdapter):
    """SD Image Variations v2 through diffusers' StableDiffusionImageVariationPipeline."""

    name = "sd_iv"
    description = "Stable Diffusion Image Variations v2 (lambdalabs, revision v2.0)"
    hub_ids = (REPO_ID,)
    licence = "CreativeML OpenRAIL-M"
    repo_id = REPO_ID
    default_revision = REVISION
    files = FILES
    params = single_repo_params(REPO_ID, REVISION)

    def load(self, paths: list[str], torch_dtype: Any) -> Any:
        from diffusers import StableDiffusionImageVariationPipeline

        return StableDiffusionImageVariationPipeline.from_pretrained(
            paths[0],
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=torch_dtype,
        )

    def call(self, job: SampleJob, height: int, width: int) -> Sequence[np.ndarray]:
        pipe = self.pipe
        size = int(pipe.image_encoder.config.image_size)
        cache: dict[str, Any] = {}
        for cond_id, image in zip(job.cond_ids, job.cond_images, strict=True):
            if cond_id not in cache:
                cache[cond_id] = clip_preprocess([image], size)
        pixels = self._torch.cat([cache[c] for c in job.cond_ids])
        out = pipe(
            image=pixels.to(self.device, dtype=pipe.image_encoder.dtype),
            height=height,
            width=width,
            num_inference_steps=int(self.options["steps"]),
            guidance_scale=float(job.point["guidance"]),
            generator=list(job.generators),
            output_type="np",
        )
        return list(out.images)
