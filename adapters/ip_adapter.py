"""IP-Adapter SD 1.5 (Ye et al.): decoupled cross-attention on CLIP image features, empty prompt.

Base model: SD 1.5 in diffusers layout. The original ``runwayml/stable-diffusion-v1-5`` repo is
gone from the Hub, so the default is the maintained mirror
``stable-diffusion-v1-5/stable-diffusion-v1-5``; change it with ``--set base_model=REPO`` (and
``--set base_revision=…``) or point ``--model-path`` at a local SD 1.5 folder. Adapter weights:
``h94/IP-Adapter`` ``models/ip-adapter_sd15.safetensors`` (else ``.bin``), image encoder
``models/image_encoder`` (CLIP ViT-H/14); ``--set ip_adapter_repo=`` takes another repo id or a
local folder with the same layout. The ``.bin`` file is a pickle: it is read with
``torch.load(weights_only=True)`` and handed to ``load_ip_adapter`` as a state dict, so no pickled
code ever runs. Conditioning image preprocessing: CLIPImageProcessor (shortest side to the
encoder's input size, bicubic, centre crop, CLIP normalisation), as in the IP-Adapter release.
Guidance (``sd`` convention): eps(none) + g * (eps(c) - eps(none)), g = 1 unguided; eps(none) uses
zero image embeddings and the same (empty) prompt. ``scale`` multiplies the image cross-attention.
Paper sweep: g = 1, 2, 4, 7 x scale = 0.5, 1.0. Default sampler: DDIM, as in IP-Adapter's demos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from varbench.adapter import Param
from varbench.errors import UsageError

from .diffusers_common import DiffusersVariationAdapter, WeightsSource, common_params
from .hf import SampleJob, load_safetensors_or_torch

BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER_REPO = "h94/IP-Adapter"
SUBFOLDER = "models"
WEIGHT_NAMES = ("ip-adapter_sd15.safetensors", "ip-adapter_sd15.bin")  # preference order
IMAGE_ENCODER = f"{SUBFOLDER}/image_encoder"
# SD 1.5 components, fp32 safetensors preferred: not the safety checker, EMA/fp16 variants or .ckpt.
BASE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    "unet/config.json",
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae/config.json",
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
)
BASE_EXTRA = ("tokenizer/*",)  # vocabulary, merges, special tokens
IP_FILES = (
    tuple(f"{SUBFOLDER}/{w}" for w in WEIGHT_NAMES),
    f"{IMAGE_ENCODER}/config.json",
    (f"{IMAGE_ENCODER}/model.safetensors", f"{IMAGE_ENCODER}/pytorch_model.bin"),
)


def load_ip_adapter_state_dict(folder: str | Path) -> tuple[dict[str, dict[str, Any]], str]:
    """``{"image_proj": …, "ip_adapter": …}`` from ``models/ip-adapter_sd15.*``; never unpickles code."""
    folder = Path(folder)
    for weight_name in WEIGHT_NAMES:
        path = folder / SUBFOLDER / weight_name
        if not path.is_file():
            continue
        flat = load_safetensors_or_torch(path)  # safetensors, or torch.load(weights_only=True)
        if "image_proj" in flat and "ip_adapter" in flat:
            return {
                "image_proj": dict(flat["image_proj"]),
                "ip_adapter": dict(flat["ip_adapter"]),
            }, str(path)
        nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            prefix, _, rest = key.partition(".")
            if prefix in nested and rest:
                nested[prefix][rest] = value
        if not nested["image_proj"] or not nested["ip_adapter"]:
            raise UsageError(f"{path}: no image_proj.* / ip_adapter.* weights in this file")
        return nested, str(path)
    raise UsageError(f"{folder}: none of {', '.join(f'{SUBFOLDER}/{w}' for w in WEIGHT_NAMES)}")


class IPAdapterAdapter(DiffusersVariationAdapter):
    """IP-Adapter on SD 1.5 with an empty text prompt, through diffusers' load_ip_adapter."""

    name = "ip_adapter"
    description = (
        "IP-Adapter SD 1.5 (h94/IP-Adapter ip-adapter_sd15) on an SD 1.5 base, empty prompt"
    )
    hub_ids = (BASE_MODEL, IP_ADAPTER_REPO)
    licence = "Apache-2.0 (IP-Adapter weights); CreativeML OpenRAIL-M (SD 1.5 base)"
    group_by_condition = True  # the SD pipeline broadcasts one IP image over a call
    # all of a conditioning image's samples in one call (10 on ImageNet 1-shot)
    images_per_call = 16
    params = (
        Param(
            "guidance",
            float,
            (1.0, 2.0, 4.0, 7.0),
            "guidance scale g (sd: 1 = unguided)",
            sweep=True,
        ),
        Param("scale", float, (0.5, 1.0), "IP-Adapter image cross-attention scale", sweep=True),
        *common_params("ddim"),
        Param(
            "base_model", str, BASE_MODEL, "Hub id of the SD 1.5 base (--model-path: a local copy)"
        ),
        Param("base_revision", str, "main", "Hub revision of base_model"),
        Param(
            "ip_adapter_repo",
            str,
            IP_ADAPTER_REPO,
            "Hub id or local folder with models/ip-adapter_sd15.* and models/image_encoder",
        ),
        Param("ip_adapter_revision", str, "main", "Hub revision of ip_adapter_repo"),
        Param("prompt", str, "", "text prompt (the paper's setting: empty)"),
        Param("negative_prompt", str, "", "text of the unconditional branch"),
    )

    def sources(self) -> list[WeightsSource]:
        repo = str(self.options.get("ip_adapter_repo") or IP_ADAPTER_REPO)
        ip_local = repo if Path(repo).expanduser().is_dir() else None
        return [
            WeightsSource(
                self.name,
                str(self.options.get("base_model") or BASE_MODEL),
                str(self.options.get("base_revision") or "main"),
                BASE_FILES,
                BASE_EXTRA,
                local=self.model_path,
            ),
            WeightsSource(
                self.name,
                repo,
                str(self.options.get("ip_adapter_revision") or "main"),
                IP_FILES,
                local=ip_local,
                flag="--set ip_adapter_repo",
            ),
        ]

    def load(self, paths: list[str], torch_dtype: Any) -> Any:
        from diffusers import StableDiffusionPipeline
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        base, ip_dir = paths
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(Path(ip_dir) / IMAGE_ENCODER), dtype=torch_dtype
        )
        side = int(encoder.config.image_size)
        pipe = StableDiffusionPipeline.from_pretrained(
            base,
            image_encoder=encoder,
            feature_extractor=CLIPImageProcessor(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            ),
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=torch_dtype,
        )
        state_dict, self._ip_weights = load_ip_adapter_state_dict(ip_dir)
        pipe.load_ip_adapter(
            state_dict, subfolder=SUBFOLDER, weight_name=Path(self._ip_weights).name
        )
        return pipe

    def call(self, job: SampleJob, height: int, width: int) -> Sequence[np.ndarray]:
        from PIL import Image

        if len(set(job.cond_ids)) != 1:
            raise RuntimeError("ip_adapter: one conditioning image per pipeline call")
        n = len(job)
        self.pipe.set_ip_adapter_scale(float(job.point["scale"]))
        out = self.pipe(
            prompt=[str(self.options["prompt"])] * n,
            negative_prompt=[str(self.options["negative_prompt"])] * n,
            ip_adapter_image=Image.fromarray(job.cond_images[0]),
            height=height,
            width=width,
            num_inference_steps=int(self.options["steps"]),
            guidance_scale=float(job.point["guidance"]),
            generator=list(job.generators),
            output_type="np",
        )
        return list(out.images)

    def provenance(self) -> dict[str, Any]:
        info = super().provenance()
        info["ip_adapter_weights"] = getattr(self, "_ip_weights", None)
        info["prompt"] = str(self.options.get("prompt", ""))
        return info
