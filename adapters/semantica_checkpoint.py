"""Semantica checkpoints on disk: safetensors only (never pickle), config in JSON.

Layouts accepted by ``--model-path``:

- a folder with ``config.json`` and ``model.safetensors`` (denoiser keys ``denoiser.*``, and
  optionally the frozen encoder as ``encoder.*``), plus optionally ``encoder.safetensors``
  (a plain timm DINOv2 state dict);
- a single ``.safetensors`` file whose metadata key ``semantica_config`` holds the config JSON.

The encoder's weights are looked up in that order, then ``$VARBENCH_WEIGHTS_DIR/<timm name>
.safetensors``, then the Hugging Face cache (``timm/<timm name>``), without network access.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varbench.errors import UsageError, WeightsUnavailableError

from .semantica_model import (
    ARCHITECTURE,
    CONFIG_VERSION,
    EncoderConfig,
    SemanticaConfig,
    UViT,
    build_encoder,
    load_encoder_state,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
ENCODER_FILE = "encoder.safetensors"
METADATA_KEY = "semantica_config"
DENOISER_PREFIX = "denoiser."
ENCODER_PREFIX = "encoder."
# Formats that unpickle (and so can execute code) when loaded: never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
# `varbench fetch --encoders NAME` fills the HF cache with these timm checkpoints.
FETCHABLE_ENCODERS = {
    "vit_base_patch14_dinov2.lvd142m": "dinov2",
    "vit_large_patch14_dinov2.lvd142m": "dinov2_l",
}


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: its config, the model file and where the encoder weights are."""

    config: SemanticaConfig
    model_file: Path
    encoder_file: Path
    encoder_prefix: str  # "encoder." when the encoder lives inside model_file, else ""


def _pickle_error(path: Path) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"--model-path {path}: refusing to load a pickle-based weights file ({path.suffix}); "
        "pickle can run arbitrary code. Semantica checkpoints must be safetensors: "
        f"{CONFIG_FILE} + {MODEL_FILE} in a folder, or one .safetensors file with the config "
        f"in its metadata key {METADATA_KEY!r}."
    )


def _parse_config(data: dict[str, Any], origin: Path) -> SemanticaConfig:
    try:
        return SemanticaConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{origin}: invalid Semantica config ({exc})") from None


def _safetensors_keys(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a safetensors file"
        raise UsageError(f"{path}: not a readable safetensors file ({exc})") from None


def _encoder_candidates(enc: EncoderConfig, folder: Path | None) -> list[Path]:
    """Places the encoder weights may be, in lookup order (after the model file itself)."""
    out = []
    if folder is not None:
        out.append(folder / ENCODER_FILE)
    if os.environ.get("VARBENCH_WEIGHTS_DIR"):
        out.append(
            Path(os.environ["VARBENCH_WEIGHTS_DIR"]).expanduser() / f"{enc.timm_name}.safetensors"
        )
    return out


def _hf_cached(enc: EncoderConfig) -> Path | None:
    """timm's safetensors checkpoint of ``enc`` in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    hit = try_to_load_from_cache(f"timm/{enc.timm_name}", "model.safetensors")
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _missing_encoder(enc: EncoderConfig, looked: list[str]) -> WeightsUnavailableError:
    fetch = FETCHABLE_ENCODERS.get(enc.timm_name)
    how = (
        f"run `varbench fetch --encoders {fetch}` on a machine with internet (it fills the "
        "Hugging Face cache)"
        if fetch
        else f"download timm/{enc.timm_name} model.safetensors into the Hugging Face cache"
    )
    return WeightsUnavailableError(
        f"semantica: the frozen DINOv2 encoder {enc.timm_name} (file model.safetensors of "
        f"timm/{enc.timm_name}) is not on this machine; looked in: {'; '.join(looked)}. "
        f"Put {ENCODER_FILE} in the checkpoint folder or {enc.timm_name}.safetensors in "
        f"$VARBENCH_WEIGHTS_DIR, or {how}, then set HF_HUB_OFFLINE=1."
    )


def resolve_checkpoint(model_path: str | Path) -> Checkpoint:
    """Validate ``--model-path`` and locate every file, without loading any tensor."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise UsageError(f"--model-path {model_path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_error(path)
        if path.suffix != ".safetensors":
            raise UsageError(f"--model-path {path}: expected a folder or a .safetensors file")
        keys, meta = _safetensors_keys(path)
        if METADATA_KEY not in meta:
            raise UsageError(
                f"--model-path {path}: no {METADATA_KEY!r} metadata; pass the checkpoint folder "
                f"holding {CONFIG_FILE} instead"
            )
        config = _parse_config(json.loads(meta[METADATA_KEY]), path)
        folder = None
        model_file = path
    else:
        folder = path
        model_file = path / MODEL_FILE
        if not model_file.is_file():
            pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                raise _pickle_error(path / pickles[0])
            raise WeightsUnavailableError(
                f"--model-path {path}: no {MODEL_FILE}; a Semantica checkpoint folder holds "
                f"{CONFIG_FILE} and {MODEL_FILE}"
            )
        ignored = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if ignored:
            log.warning("semantica: ignoring pickle files in %s (never loaded): %s", path, ignored)
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise UsageError(f"--model-path {path}: missing {CONFIG_FILE}")
        try:
            data = json.loads(cfg_path.read_text())
        except ValueError as exc:
            raise UsageError(f"{cfg_path}: not valid JSON ({exc})") from None
        config = _parse_config(data, cfg_path)
        keys, _ = _safetensors_keys(model_file)
    if not any(k.startswith(DENOISER_PREFIX) for k in keys):
        raise UsageError(f"{model_file}: no {DENOISER_PREFIX}* tensors; not a Semantica checkpoint")
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        return Checkpoint(config, model_file, model_file, ENCODER_PREFIX)
    looked = [f"{model_file} ({ENCODER_PREFIX}* tensors)"]
    for cand in _encoder_candidates(config.encoder, folder):
        looked.append(str(cand))
        if cand.is_file():
            if cand.suffix != ".safetensors":
                raise _pickle_error(cand)
            return Checkpoint(config, model_file, cand, "")
    looked.append(f"Hugging Face cache timm/{config.encoder.timm_name}")
    cached = _hf_cached(config.encoder)
    if cached is None:
        raise _missing_encoder(config.encoder, looked)
    return Checkpoint(config, model_file, cached, "")


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_checkpoint(ckpt: Checkpoint) -> tuple[UViT, Any]:
    """Build the denoiser and the frozen encoder and load their safetensors weights (CPU)."""
    from safetensors.torch import load_file

    state = load_file(str(ckpt.model_file))
    encoder = build_encoder(ckpt.config.encoder)
    enc_state = (
        _strip(state, ckpt.encoder_prefix)
        if ckpt.encoder_prefix
        else load_file(str(ckpt.encoder_file))
    )
    try:
        load_encoder_state(encoder, enc_state)
    except RuntimeError as exc:
        raise UsageError(
            f"{ckpt.encoder_file}: encoder weights do not fit {ckpt.config.encoder.timm_name} "
            f"with {ckpt.config.encoder.model_kwargs or 'default'} sizes ({exc})"
        ) from None
    model = UViT(ckpt.config, context_dim=int(encoder.num_features))
    try:
        model.load_state_dict(_strip(state, DENOISER_PREFIX), strict=True)
    except RuntimeError as exc:
        raise UsageError(f"{ckpt.model_file}: weights do not fit config.json ({exc})") from None
    return model.eval().requires_grad_(False), encoder.eval().requires_grad_(False)


def save_checkpoint(
    target: str | Path,
    config: SemanticaConfig,
    model: UViT,
    encoder: Any = None,
    *,
    single_file: bool = False,
) -> Path:
    """Write a checkpoint: folder layout (encoder in ``encoder.safetensors``) or one file."""
    from safetensors.torch import save_file

    def tensors(module: Any, prefix: str) -> dict[str, Any]:
        return {prefix + k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}

    meta = json.dumps({"architecture": ARCHITECTURE, "version": CONFIG_VERSION, **config.to_dict()})
    target = Path(target)
    if single_file:
        state = tensors(model, DENOISER_PREFIX)
        if encoder is not None:
            state.update(tensors(encoder, ENCODER_PREFIX))
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target), metadata={METADATA_KEY: meta})
        return target
    target.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_FILE).write_text(json.dumps(json.loads(meta), indent=2) + "\n")
    save_file(tensors(model, DENOISER_PREFIX), str(target / MODEL_FILE))
    if encoder is not None:
        save_file(tensors(encoder, ""), str(target / ENCODER_FILE))
    return target
