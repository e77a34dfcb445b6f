"""Semantica (image variations from web-scale image pairs): the paper's U-ViT, from a checkpoint.

No public weights exist. This adapter implements the architecture and sampler the paper
describes (see ``semantica_model``) and loads any checkpoint trained with it from
``--model-path`` (safetensors only; layout in ``semantica_checkpoint``). The published numbers
are on the leaderboard with source "Semantica (arXiv 2024)".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from varbench.adapter import Adapter, Param, Request, RunContext
from varbench.errors import UsageError, WeightsUnavailableError

from .hf import generators, torch_dtype, with_oom_backoff

log = logging.getLogger(__name__)

NO_WEIGHTS = (
    "semantica: no public weights exist for this model. Pass --model-path DIR pointing at a "
    "checkpoint trained with this architecture (a folder with config.json + model.safetensors, "
    "or one .safetensors file with the config in its metadata; see docs/adapters-semantica.md). The "
    "paper's own numbers are on the leaderboard (`varbench leaderboard`, source "
    '"Semantica (arXiv 2024)").'
)


class SemanticaAdapter(Adapter):
    """Pixel-space U-ViT conditioned by cross-attention on frozen DINOv2 tokens (checkpoint)."""

    name = "semantica"
    description = (
        "Semantica: pixel U-ViT diffusion cross-attending to frozen DINOv2 tokens; "
        "no public weights, needs --model-path"
    )
    params = (
        Param(
            "steps",
            int,
            256,
            "DDPM sampling steps (the paper does not state its count; 256 is our default)",
        ),
        Param(
            "resolution",
            int,
            0,
            "output size in pixels (0: the protocol's); the model samples at its trained size "
            "and the image is resized",
        ),
        Param(
            "guidance",
            float,
            (0.1, 0.5, 1.0),
            "w in eps = (1 + w) eps(c) - w eps(none); 0 is unguided",
            sweep=True,
        ),
    )
    guidance_convention = "one_plus_w"
    needs_weights = True
    images_per_call = 8
    # never float16 by default: bfloat16 on GPU (float32 on CPU, like the other adapters)
    gpu_auto_dtype = "bfloat16"

    def __init__(self, options: Any, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._checkpoint = None
        self.model = None
        self.encoder = None

    # -- lifecycle -------------------------------------------------------------------------
    def check_available(self) -> None:
        """No --model-path: say that no public weights exist; else validate the files."""
        if not self.model_path:
            raise WeightsUnavailableError(NO_WEIGHTS)
        from .semantica_checkpoint import resolve_checkpoint

        self._checkpoint = resolve_checkpoint(self.model_path)
        if int(self.options.get("steps", 1)) < 1:
            raise UsageError("--set steps=…: need at least 1 sampling step")

    def fetch(self) -> list[str]:
        """Nothing to download: there are no public weights."""
        raise WeightsUnavailableError(NO_WEIGHTS)

    def setup(self, context: RunContext) -> None:
        """Load the denoiser and the frozen encoder from the checkpoint."""
        super().setup(context)
        from .semantica_checkpoint import load_checkpoint

        if self._checkpoint is None:
            self.check_available()
        model, encoder = load_checkpoint(self._checkpoint)
        if not str(self.device).startswith("cuda") and self.dtype != "float32":
            log.warning(
                "semantica: %s on %s runs in float32 (CPU fallback)", self.dtype, self.device
            )
            self.dtype = "float32"
        dtype = torch_dtype(self.dtype)
        self.model = model.to(device=self.device, dtype=dtype)
        self.encoder = encoder.to(device=self.device, dtype=dtype)
        cfg = self._checkpoint.config
        log.info(
            "semantica: %d-px U-ViT (%s channels, transformer %dx%d), encoder %s, from %s",
            cfg.image_size,
            "/".join(map(str, cfg.channels)),
            cfg.transformer_depth,
            cfg.transformer_width,
            cfg.encoder.timm_name,
            self.model_path,
        )

    # -- generation ------------------------------------------------------------------------
    def _tokens(self, request: Request):
        """Frozen encoder tokens of one conditioning image (1 x T x D)."""
        from .semantica_model import encode_condition, preprocess_condition

        enc = self._checkpoint.config.encoder
        pixels = preprocess_condition(request.cond_image, enc.image_size)
        param = next(self.encoder.parameters())
        return encode_condition(self.encoder, enc, pixels.to(param.device, param.dtype)).float()

    def _sample(self, items: Sequence[tuple[Any, int]], guidance: float) -> list[np.ndarray]:
        """Sample one batch of (tokens, seed) items; images as HxWx3 uint8 at the model's size."""
        import torch

        from .semantica_model import sample

        tokens = torch.cat([t for t, _ in items])
        # CPU generators: the same seed gives the same noise (and images) on any device
        gens = generators([s for _, s in items], "cpu")
        x = sample(self.model, tokens, guidance, int(self.options["steps"]), gens)
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return list(x.permute(0, 2, 3, 1).cpu().numpy())

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        from PIL import Image

        items: list[tuple[Any, int]] = []
        owners: list[int] = []
        for ri, r in enumerate(requests):
            tokens = self._tokens(r)
            for seed in r.seeds:
                items.append((tokens, int(seed)))
                owners.append(ri)
        guidance = float(requests[0].point["guidance"]) if requests else 0.0
        if any(float(r.point["guidance"]) != guidance for r in requests):
            raise ValueError("semantica: one generate() call must share one guidance value")
        # one model call per generation group (the runner's; never --batch-size dependent)
        images = (
            with_oom_backoff(lambda part: self._sample(part, guidance), items, self.warn)
            if items
            else []
        )
        native = self._checkpoint.config.image_size
        out: list[list[np.ndarray]] = [[] for _ in requests]
        for ri, img in zip(owners, images, strict=True):
            size = requests[ri].resolution  # the runner resolves resolution=0 to the protocol's
            if size != native:
                img = np.asarray(
                    Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS)
                )
            out[ri].append(img)
        return out

    def provenance(self) -> dict[str, Any]:
        """Checkpoint config facts recorded with every result row."""
        if self._checkpoint is None:
            return {}
        cfg = self._checkpoint.config
        return {
            "dtype": self.dtype,
            "native_resolution": cfg.image_size,
            "encoder": cfg.encoder.timm_name,
            "unconditional": "learned null context token",
            "sampler": f"ddpm, std = sigma_post^{cfg.sampler_interpolation} * "
            f"sigma_ts^{1 - cfg.sampler_interpolation:g}",
            "schedule": f"cosine log-SNR shifted to noise resolution {cfg.noise_resolution}",
            "model_file": str(self._checkpoint.model_file),
        }
