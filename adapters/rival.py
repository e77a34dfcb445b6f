"""RIVAL on Stable Diffusion 1.5: image variations by aligning the DDIM inversion chain.

The conditioning image is inverted with DDIM under its class-name prompt; each variation starts
from the inverted latent with its spatial positions shuffled by the sample's own seed, and is
denoised next to a reference branch that follows the inversion chain, with cross-image
self-attention and early-step AdaIN of the predicted noise (see ``rival_core``). Defaults are the
authors' variation config (50 DDIM steps, guidance 5, t_align = t_early = 600).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from varbench.adapter import Adapter, Param, Request, RunContext
from varbench.errors import UsageError

from . import hf
from .rival_core import (
    DDIMSchedule,
    Group,
    RivalSettings,
    center_square,
    install_processors,
    invert,
    permute_positions,
    sample,
)

log = logging.getLogger(__name__)

DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # maintained mirror of runwayml's
# The authors' negative prompt for variations (assets/images/configs_variation.json), verbatim.
NEGATIVE_PROMPT = ", monochrome, lowres, bad anatomy, worst quality, low quality"
# The authors' variation config pairs that negative prompt with this positive suffix; the two
# are one template and are used (and recorded) together.
POSITIVE_SUFFIX = ", best quality, extremely detailed"
PROMPT_TEMPLATE = "{label}" + POSITIVE_SUFFIX
# Only what RIVAL loads: no safety checker, no feature extractor, no pickled .bin weights.
ALLOW_PATTERNS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
CHAIN_CACHE = 4  # inversion chains kept (the runner walks conditioning images in order)


class RivalAdapter(Adapter):
    """RIVAL (NeurIPS 2023) variations on SD 1.5 with a class-name prompt."""

    name = "rival"
    description = "RIVAL: DDIM-inversion chain alignment + cross-image self-attention on SD 1.5"
    guidance_convention = "sd"
    hub_ids = (DEFAULT_BASE,)
    licence = "CreativeML OpenRAIL-M (SD 1.5 weights); RIVAL method: Apache-2.0 code by the authors"
    needs_weights = True
    # the DDIM-inversion reference chain is shared by a conditioning image's samples
    group_by_condition = True
    images_per_call = 16
    params = (
        Param(
            "guidance",
            float,
            5.0,
            "classifier-free guidance, SD convention (1 = unguided)",
            sweep=True,
        ),
        Param("steps", int, 50, "DDIM steps of both the inversion and the sampling"),
        Param(
            "t_align",
            int,
            600,
            "cross-image attention: reference K/V only while t > t_align, then reference + own",
        ),
        Param(
            "t_early",
            int,
            600,
            "AdaIN of the variation's noise to the reference's while t > t_early",
        ),
        Param(
            "inject",
            bool,
            True,
            "cross-image self-attention (false: plain self-attention, an ablation)",
        ),
        Param("adain", bool, True, "early-step AdaIN latent alignment (false: an ablation)"),
        Param(
            "prompt",
            str,
            PROMPT_TEMPLATE,
            "text prompt; {label} is the class name (default: the authors' template)",
        ),
        Param("negative_prompt", str, NEGATIVE_PROMPT, "negative prompt of the variation branch"),
        Param(
            "base_model",
            str,
            DEFAULT_BASE,
            "Hub id of the SD 1.5 diffusers weights (without --model-path)",
        ),
        Param("base_revision", str, "main", "Hub revision of base_model"),
        Param("resolution", int, 0, "output side in pixels (0: the protocol's, 512 for ImageNet)"),
    )

    def __init__(self, options: Any, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        try:
            str(self.options["prompt"]).format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"--set prompt={self.options['prompt']!r}: only the field {{label}} is allowed ({exc})"
            ) from None
        if int(self.options["steps"]) < 1:
            raise UsageError("--set steps must be >= 1")
        self._weights: str | None = None
        self._chains: OrderedDict[tuple, list] = OrderedDict()
        self._prompts: dict[str, Any] = {}

    # -- weights -------------------------------------------------------------------------
    def _resolve(self) -> str:
        if self._weights is None:
            self._weights = hf.resolve_weights(
                self.name,
                self.model_path,
                str(self.options["base_model"]),
                str(self.options["base_revision"]) or None,
                ALLOW_PATTERNS,
            )
            if self.model_path:
                missing = [
                    f"{sub}/config.json"
                    for sub in ("unet", "vae", "text_encoder")
                    if not (Path(self._weights) / sub / "config.json").is_file()
                ]
                if missing or not (Path(self._weights) / "tokenizer").is_dir():
                    raise UsageError(
                        f"--model-path {self.model_path}: not an SD 1.5 diffusers folder "
                        f"(missing {', '.join(missing) or 'tokenizer/'})"
                    )
        return self._weights

    def check_available(self) -> None:
        """Fail within seconds if neither --model-path nor a cached or reachable snapshot exists."""
        self._resolve()

    def fetch(self) -> list[str]:
        """Download the SD 1.5 parts RIVAL needs (safetensors only) into the HF cache."""
        return [
            hf.fetch_snapshot(
                str(self.options["base_model"]),
                str(self.options["base_revision"]) or None,
                ALLOW_PATTERNS,
            )
        ]

    def setup(self, context: RunContext) -> None:
        """Load UNet, VAE, text encoder, tokenizer and a DDIM scheduler; install the processors."""
        super().setup(context)
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = self._resolve()
        if self.device == "cpu" and self.dtype != "float32":
            log.warning("rival: --dtype %s on CPU; running float32", self.dtype)
            self.dtype = "float32"
        dtype = hf.torch_dtype(self.dtype)
        load = {"use_safetensors": True}
        if path == self.options["base_model"]:  # downloadable, not cached yet
            load["revision"] = str(self.options["base_revision"]) or None
        self.unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=dtype, **load
        )
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **load)
        self.text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", dtype=dtype, **load
        )
        self.tokenizer = CLIPTokenizer.from_pretrained(
            path, subfolder="tokenizer", revision=load.get("revision")
        )
        sched_cfg = DDIMScheduler.load_config(
            path, subfolder="scheduler", revision=load.get("revision")
        )
        # The authors' scheduler: DDIM, scaled-linear betas, no clipping, alpha_final = alphas[0].
        self.scheduler = DDIMScheduler.from_config(
            sched_cfg,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
        )
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(self.device).eval().requires_grad_(False)
        self.state = install_processors(self.unet)
        self.schedule = DDIMSchedule.from_scheduler(self.scheduler, int(self.options["steps"]))
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.multiple = self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)
        self._torch = torch
        log.info("rival: loaded %s on %s (%s)", path, self.device, self.dtype)

    # -- building blocks (also used by the tests) ----------------------------------------
    def encode_prompt(self, text: str):
        """(1, L, D) text-encoder hidden states of ``text`` (cached)."""
        if text not in self._prompts:
            ids = self.tokenizer(
                [text],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            with self._torch.no_grad():
                self._prompts[text] = self.text_encoder(ids)[0]
        return self._prompts[text]

    def encode_image(self, image: np.ndarray, resolution: int):
        """VAE latent (posterior mean x scaling factor, as the authors) of the centred square crop."""
        if resolution % self.multiple:
            raise UsageError(
                f"rival: resolution {resolution} must be a multiple of {self.multiple} for this model"
            )
        torch = self._torch
        arr = center_square(image, resolution).astype(np.float32) / 127.5 - 1.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device, self.vae.dtype)
        with torch.no_grad():
            lat = self.vae.encode(x).latent_dist.mean
        return lat.float() * self.vae.config.scaling_factor

    def decode(self, latents) -> list[np.ndarray]:
        """Float HxWx3 images in [0, 1] from (N,C,h,w) latents."""
        torch = self._torch
        with torch.no_grad():
            img = self.vae.decode(
                latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            ).sample
        img = (img.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return list(img)

    def chain_for(self, request: Request) -> list:
        """The DDIM inversion chain of the request's image under its prompt (small LRU cache)."""
        prompt = self.prompt_for(request)
        digest = hashlib.sha256(np.ascontiguousarray(request.cond_image).tobytes()).hexdigest()
        key = (digest, request.cond_image.shape, prompt, request.resolution)
        if key in self._chains:
            self._chains.move_to_end(key)
            return self._chains[key]
        latent = self.encode_image(request.cond_image, request.resolution)
        chain = invert(self.unet, self.state, latent, self.encode_prompt(prompt), self.schedule)
        self._chains[key] = chain
        while len(self._chains) > CHAIN_CACHE:
            self._chains.popitem(last=False)
        return chain

    def prompt_for(self, request: Request) -> str:
        """The text prompt (also the inversion prompt) of a request."""
        return str(self.options["prompt"]).format(label=request.class_label)

    def settings(self, guidance: float) -> RivalSettings:
        """Sampling settings from the options and one sweep point."""
        return RivalSettings(
            guidance=float(guidance),
            t_align=int(self.options["t_align"]),
            t_early=int(self.options["t_early"]),
            inject=bool(self.options["inject"]),
            adain=bool(self.options["adain"]),
        )

    # -- generation ----------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        items = [(ri, j) for ri, r in enumerate(requests) for j in range(len(r.seeds))]
        flat = hf.with_oom_backoff(lambda chunk: self._run(requests, chunk), items, self.warn)
        out: list[list[np.ndarray]] = [[] for _ in requests]
        for (ri, _), img in zip(items, flat, strict=True):
            out[ri].append(img)
        return out

    def _run(
        self, requests: Sequence[Request], items: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        """Images for (request index, sample position) items, in order."""
        torch = self._torch
        by_req: OrderedDict[int, list[int]] = OrderedDict()
        for ri, j in items:
            by_req.setdefault(ri, []).append(j)
        groups, guid = [], set()
        for ri, js in by_req.items():
            r = requests[ri]
            chain = self.chain_for(r)
            # CPU generators: the permutation and noise depend on the seed only, not the device
            gens = hf.generators([r.seeds[j] for j in js], "cpu")
            x_T = torch.cat([permute_positions(chain[-1], g) for g in gens])
            prompt = self.prompt_for(r)
            groups.append(
                Group(
                    chain=chain,
                    cond=self.encode_prompt(prompt),
                    ref_uncond=self.encode_prompt(""),
                    var_uncond=self.encode_prompt(str(self.options["negative_prompt"])),
                    x_T=x_T,
                )
            )
            guid.add(float(r.point.get("guidance", self.options["guidance"][0])))
        if len(guid) != 1:
            raise ValueError(f"rival: one batch mixes guidance values {sorted(guid)}")
        settings = self.settings(guid.pop())
        # one reference pass per conditioning image and one batched variation pass per group
        latents = sample(self.unet, self.state, groups, self.schedule, settings)
        return self.decode(torch.cat(latents))

    def provenance(self) -> dict[str, Any]:
        """Weights, scheduler and the deliberate departures from the authors' script."""
        import diffusers

        weights = self._weights or ""
        snapshot = Path(weights).name if "/snapshots/" in weights else None
        return {
            "base_model": self.options["base_model"] if not self.model_path else None,
            "weights": weights,
            "hub_snapshot": snapshot,
            "safety_checker": "off",
            "scheduler": "DDIM eta=0, scaled_linear betas, leading spacing, steps_offset=1, set_alpha_to_one=False",
            "inversion": "DDIM, prompt = the text prompt, no guidance",
            "latent_permutation": "torch.randperm seeded by each sample's seed",
            "attention": "attn1 only; ref K/V while t - steps_offset > t_align, then ref + own",
            "adain": "per-channel noise AdaIN while t > t_early",
            "guidance_1_injects": True,
            "prompt_template": str(self.options["prompt"]),
            "negative_prompt": str(self.options["negative_prompt"]),
            "generation": "one call per group of a conditioning image's samples",
            "diffusers": diffusers.__version__,
        }
