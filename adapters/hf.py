"""Shared Hugging Face plumbing for the diffusion adapters: weights location, fetch, dtype, seeds.

Every adapter resolves weights the same way: ``--model-path`` (a local folder or file) wins;
otherwise the Hub id at a pinned revision, from the local HF cache when offline. A missing
snapshot fails within seconds with the Hub id and the `varbench fetch` command to run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from varbench.errors import UsageError, WeightsUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = ("float32", "float16", "bfloat16")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or VARBENCH_OFFLINE) asks for no network."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "VARBENCH_OFFLINE")
    )


def missing_hub_error(
    model: str, repo_id: str, revision: str | None, why: str
) -> WeightsUnavailableError:
    """The message users see when a model's weights are neither local nor downloadable."""
    rev = f" (revision {revision})" if revision else ""
    return WeightsUnavailableError(
        f"model {model!r} needs Hugging Face repo {repo_id}{rev}, which is not in the local cache "
        f"and cannot be downloaded now ({why}). Run `varbench fetch --model {model}` on a machine "
        f"with internet (it fills the HF cache; then set HF_HUB_OFFLINE=1), or pass --model-path DIR "
        f"pointing at a local copy with the same layout."
    )


def local_snapshot(
    repo_id: str, revision: str | None, allow_patterns: Sequence[str] | None = None
) -> str | None:
    """Path of a cached snapshot of ``repo_id`` at ``revision``, or None (no network used)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            local_files_only=True,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
        )
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        return None


def check_hub_reachable(
    model: str, repo_id: str, revision: str | None, timeout: float = 5.0
) -> None:
    """Raise within ``timeout`` seconds if the Hub cannot serve ``repo_id`` (offline or missing)."""
    if hub_offline():
        raise missing_hub_error(model, repo_id, revision, "HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - network, auth and 404 all end the same way
        raise missing_hub_error(model, repo_id, revision, f"{type(exc).__name__}") from None


def resolve_weights(
    model: str,
    model_path: str | None,
    repo_id: str,
    revision: str | None,
    allow_patterns: Sequence[str] | None = None,
) -> str:
    """A local folder/file to load from: --model-path, else a cached or downloadable snapshot id."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.exists():
            raise UsageError(f"--model-path {model_path}: no such file or folder")
        return str(path)
    snap = local_snapshot(repo_id, revision, allow_patterns)
    if snap:
        return snap
    check_hub_reachable(model, repo_id, revision)
    return repo_id  # downloadable: from_pretrained fetches it


def fetch_snapshot(
    repo_id: str, revision: str | None, allow_patterns: Sequence[str] | None = None
) -> str:
    """Download ``repo_id`` at ``revision`` into the HF cache; return the local path."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None
    )


def torch_dtype(name: str):
    """torch dtype from its name; CPU always runs float32 (half precision is slow and lossy there)."""
    import torch

    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def generators(seeds: Sequence[int], device: str) -> list:
    """One torch.Generator per sample, so noise never depends on batch composition."""
    import torch

    gen_device = "cpu" if device == "mps" else device
    return [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]


def with_oom_backoff(
    run: Callable[[Sequence[T]], list], items: Sequence[T], flag_hint: str = "--batch-size"
) -> list:
    """Run ``run(items)``; on CUDA out-of-memory, split the batch in halves and retry."""
    import torch

    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(items) <= 1:
            raise UsageError(
                f"out of GPU memory with a single sample; lower the resolution (--set resolution=…), "
                f"use --dtype float16, or a larger GPU ({flag_hint} is already 1)"
            ) from None
        half = len(items) // 2
        log.warning(
            "out of GPU memory with %d samples; retrying in halves (%s)", len(items), flag_hint
        )
        return with_oom_backoff(run, items[:half], flag_hint) + with_oom_backoff(
            run, items[half:], flag_hint
        )


def load_safetensors_or_torch(path: str | Path) -> dict[str, Any]:
    """Load a state dict without executing pickled code (safetensors, or torch weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)
