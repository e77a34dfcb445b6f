"""Tiny random-weight diffusers pipelines built from configs, saved with save_pretrained.

They exercise the adapters' real loading and sampling code on a CPU in seconds; nothing is
downloaded. The tokenizer's vocabulary is written by the test itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CROSS_DIM = 32
TINY_IMAGE_SIZE = 32  # CLIP vision input size of the tiny encoders


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE CLIP tokenizer with a small vocabulary written here."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(c, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    tok.save_pretrained(folder)


def tiny_unet(cross_attention_dim: int = TINY_CROSS_DIM, sample_size: int = 8):
    """UNet2DConditionModel with 32/64 channels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_vae():
    """AutoencoderKL with 4 latent channels and a downsampling factor of 2."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def tiny_text_encoder(vocab_size: int = 100, projection_dim: int = TINY_CROSS_DIM):
    """CLIPTextModel with hidden size 32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TINY_CROSS_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=16,
        projection_dim=projection_dim,
    )
    return CLIPTextModel(cfg)


def tiny_image_encoder(projection_dim: int = TINY_CROSS_DIM):
    """CLIPVisionModelWithProjection on 32 px inputs."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=TINY_CROSS_DIM,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=TINY_IMAGE_SIZE,
        patch_size=4,
    )
    return CLIPVisionModelWithProjection(cfg)


def tiny_feature_extractor():
    """CLIPImageProcessor resizing to the tiny encoder's input size."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        size={"shortest_edge": TINY_IMAGE_SIZE},
    )


def ddim_scheduler():
    """The SD 1.x noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def save_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionPipeline (SD 1.5 layout) saved to ``folder``."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    folder = Path(folder)
    write_tiny_tokenizer(folder / "tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=tiny_feature_extractor(),
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_vae_f8():
    """AutoencoderKL with the real models' downsampling factor of 8 (small latents, fast tests)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
    )


def save_tiny_sd15_f8(folder: Path, seed: int = 0) -> Path:
    """``save_tiny_sd15`` with the factor-8 VAE: 64 px images have 8x8 latents, as 512 px have 64x64."""
    folder = save_tiny_sd15(folder, seed)
    torch.manual_seed(seed + 1)
    tiny_vae_f8().save_pretrained(Path(folder) / "vae", safe_serialization=True)
    return Path(folder)


def save_tiny_sd_image_variation(folder: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionImageVariationPipeline (lambdalabs SD-IV layout) saved to ``folder``."""
    from diffusers import StableDiffusionImageVariationPipeline

    torch.manual_seed(seed)
    pipe = StableDiffusionImageVariationPipeline(
        vae=tiny_vae_f8(),
        image_encoder=tiny_image_encoder(),
        unet=tiny_unet(),
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=tiny_feature_extractor(),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_versatile_diffusion(folder: Path, seed: int = 0) -> Path:
    """The image-variation half of a tiny Versatile Diffusion repo, saved to ``folder``.

    ``model_index.json`` is rewritten to the full VersatileDiffusionPipeline index (text branch
    listed but absent), as in ``shi-labs/versatile-diffusion`` fetched with only the image files.
    """
    from diffusers import VersatileDiffusionImageVariationPipeline

    torch.manual_seed(seed)
    folder = Path(folder)
    pipe = VersatileDiffusionImageVariationPipeline(
        image_feature_extractor=tiny_feature_extractor(),
        image_encoder=tiny_image_encoder(),
        image_unet=tiny_unet(),
        vae=tiny_vae_f8(),
        scheduler=ddim_scheduler(),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "VersatileDiffusionPipeline"
    index["text_unet"] = ["versatile_diffusion", "UNetFlatConditionModel"]
    index["text_encoder"] = ["transformers", "CLIPTextModelWithProjection"]
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def ip_adapter_state_dict(unet, image_embed_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter (SD 1.5 "ip-adapter_sd15") weights for ``unet``, flat safetensors keys.

    ``image_proj.proj`` maps the CLIP image embedding to 4 context tokens (+ ``norm``);
    ``ip_adapter.{2i+1}.to_{k,v}_ip`` are the i-th cross-attention layer's image key/value maps.
    """
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)
    sd: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim, generator=gen) * 0.2,
        "image_proj.proj.bias": torch.randn(4 * cross, generator=gen) * 0.2,
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for kind in ("to_k_ip", "to_v_ip"):
            w = torch.randn(hidden, cross, generator=gen) / cross**0.5
            sd[f"ip_adapter.{key_id}.{kind}.weight"] = w
        key_id += 2
    return sd


def save_tiny_ip_adapter(folder: Path, base: Path, seed: int = 0, fmt: str = "safetensors") -> Path:
    """An h94/IP-Adapter layout for the tiny SD 1.5 at ``base``: models/ip-adapter_sd15.* + image_encoder."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    folder = Path(folder)
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    encoder = tiny_image_encoder()
    encoder.save_pretrained(models / "image_encoder", safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(Path(base) / "unet")
    flat = ip_adapter_state_dict(unet, encoder.config.projection_dim, seed)
    if fmt == "safetensors":
        save_file(flat, str(models / "ip-adapter_sd15.safetensors"))
    else:  # the original release's pickle: {"image_proj": {...}, "ip_adapter": {...}}
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            prefix, _, rest = key.partition(".")
            nested[prefix][rest] = value
        torch.save(nested, models / "ip-adapter_sd15.bin")
    return folder
