"""A tiny random-weight Semantica checkpoint (U-ViT + tiny timm DINOv2) for CPU tests."""

from __future__ import annotations

from pathlib import Path

import torch

from varbench_adapters.semantica_checkpoint import save_checkpoint
from varbench_adapters.semantica_model import (
    EncoderConfig,
    SemanticaConfig,
    UViT,
    build_encoder,
)

# A 2-block, 32-wide DINOv2 ViT-S/14 shape at 28 px (CLS + 2x2 patch tokens). Layer scale is
# set to 1 so the random encoder's tokens depend visibly on the image.
TINY_ENCODER = EncoderConfig(
    timm_name="vit_small_patch14_dinov2.lvd142m",
    image_size=28,
    tokens="all",
    model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1.0},
)


def tiny_config(image_size: int = 64) -> SemanticaConfig:
    """Two conv stages (16, 32 channels; self-attention in the second) and a 2-block transformer."""
    return SemanticaConfig(
        image_size=image_size,
        patch_size=2,
        channels=(16, 32),
        blocks=(1, 1),
        attention=(False, True),
        transformer_width=32,
        transformer_depth=2,
        head_dim=16,
        mlp_ratio=2,
        emb_dim=32,
        norm_groups=8,
        noise_resolution=32,
        encoder=TINY_ENCODER,
    )


def save_tiny_semantica(
    folder: str | Path, seed: int = 0, image_size: int = 64, single_file: bool = False
) -> Path:
    """Build the tiny model with seeded random weights; write config.json + model.safetensors."""
    torch.manual_seed(seed)
    config = tiny_config(image_size)
    encoder = build_encoder(config.encoder)
    model = UViT(config, context_dim=int(encoder.num_features))
    target = Path(folder)
    if single_file:
        target = target / "semantica-tiny.safetensors"
    return save_checkpoint(target, config, model, encoder, single_file=single_file)
