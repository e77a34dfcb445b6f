"""Versatile Diffusion (Xu et al.), image-variation flow, via diffusers' deprecated VD pipelines.

Weights: ``shi-labs/versatile-diffusion``. The image-variation pipeline needs only the image
branch: ``image_unet`` (a UNet2DConditionModel; the text branch's flat UNet is not loaded or
downloaded), ``vae``, ``image_feature_extractor``, ``image_encoder`` (CLIP ViT-L/14, all 257
tokens projected and divided by the norm of the projected class token) and ``scheduler``.
Preprocessing is the pipeline's CLIPImageProcessor on the PIL image, as in the VD release.
Guidance (``sd`` convention): eps(none) + g * (eps(c) - eps(none)), g = 1 unguided; eps(none)
is conditioned on a uniform grey image (the pipeline's default). Paper sweep: g = 1, 4, 6, 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .diffusers_common import DiffusersVariationAdapter, single_repo_params
from .hf import SampleJob

REPO_ID = "shi-labs/versatile-diffusion"
REVISION = "main"
# The image branch only (not text_unet, 6.8 GB, nor the text encoder); safetensors preferred.
FILES = (
    "model_index.json",
    "image_feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "image_encoder/config.json",
    ("image_encoder/model.safetensors", "image_encoder/pytorch_model.bin"),
    "image_unet/config.json",
    ("image_unet/diffusion_pytorch_model.safetensors", "image_unet/diffusion_pytorch_model.bin"),
    "vae/config.json",
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
)


# Unconditional input for classifier-free guidance: a mid-grey image. diffusers' pipeline builds
# it as a float array of 0.5 that current CLIP processors rescale by 1/255 again (nearly black,
# and dependent on the transformers version); a uint8 grey image goes through the processor the
# same way the conditioning images do.
GREY = 128
UNCONDITIONAL = f"grey uint8 RGB image ({GREY}, {GREY}, {GREY}), 512 px, through the CLIP processor"


def grey_image(size: int = 512):
    """The unconditional image (PIL, uint8)."""
    from PIL import Image

    return Image.fromarray(np.full((size, size, 3), GREY, dtype=np.uint8))


def vd_pipeline_class():
    """VersatileDiffusionImageVariationPipeline (top-level alias, else the deprecated module)."""
    try:
        from diffusers import VersatileDiffusionImageVariationPipeline
    except ImportError:
        from diffusers.pipelines.deprecated.versatile_diffusion import (
            VersatileDiffusionImageVariationPipeline,
        )
    return VersatileDiffusionImageVariationPipeline


class VersatileDiffusionAdapter(DiffusersVariationAdapter):
    """Versatile Diffusion image variation (image_unet + CLIP image tokens)."""

    name = "versatile_diffusion"
    description = "Versatile Diffusion image-variation pipeline (shi-labs)"
    hub_ids = (REPO_ID,)
    licence = "MIT"
    repo_id = REPO_ID
    default_revision = REVISION
    files = FILES
    params = single_repo_params(REPO_ID, REVISION)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "unconditional": UNCONDITIONAL}

    def load(self, paths: list[str], torch_dtype: Any) -> Any:
        return vd_pipeline_class().from_pretrained(paths[0], torch_dtype=torch_dtype)

    def call(self, job: SampleJob, height: int, width: int) -> Sequence[np.ndarray]:
        from PIL import Image

        cache: dict[str, Image.Image] = {}
        for cond_id, image in zip(job.cond_ids, job.cond_images, strict=True):
            cache.setdefault(cond_id, Image.fromarray(image))
        images = [cache[c] for c in job.cond_ids]
        out = self.pipe(
            image=images,
            negative_prompt=[grey_image()] * len(images),
            height=height,
            width=width,
            num_inference_steps=int(self.options["steps"]),
            guidance_scale=float(job.point["guidance"]),
            generator=list(job.generators),
            output_type="np",
        )
        return list(out.images)
