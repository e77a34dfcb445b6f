"""Shared Hugging Face plumbing for the diffusion adapters: weights location, fetch, dtype, seeds.

Every adapter resolves weights the same way: ``--model-path`` (a local folder or file) wins;
otherwise the Hub id at a pinned revision, from the local HF cache when offline. A missing
snapshot fails within seconds with the Hub id and the `varbench fetch` command to run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from varbench.adapter import Request, weights_only_loads
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


def require_hub_for_fetch(repo_id: str, revision: str | None, timeout: float = 5.0) -> None:
    """Fail at once (not after retries) when a download of ``repo_id`` cannot happen here."""
    rev = f" (revision {revision})" if revision else ""
    if hub_offline():
        why = "HF_HUB_OFFLINE / VARBENCH_OFFLINE is set"
    else:
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(repo_id, revision=revision, timeout=timeout)
            return
        except Exception as exc:  # noqa: BLE001 - network, auth and 404 all end the same way
            why = f"the Hub did not answer: {type(exc).__name__}"
    raise WeightsUnavailableError(
        f"cannot download {repo_id}{rev}: {why}. Run `varbench fetch` on a machine with internet "
        f"and copy its Hugging Face cache ($HF_HOME) here, or pass --model-path to a local copy."
    )


def fetch_snapshot(
    repo_id: str, revision: str | None, allow_patterns: Sequence[str] | None = None
) -> str:
    """Download ``repo_id`` at ``revision`` into the HF cache; return the local path."""
    from huggingface_hub import snapshot_download

    require_hub_for_fetch(repo_id, revision)

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
    run: Callable[[Sequence[T]], list],
    items: Sequence[T],
    on_backoff: Callable[[str], None] | None = None,
) -> list:
    """Run ``run(items)``; on CUDA out-of-memory, split the group in halves and retry.

    A split changes which samples share a model call, so the images are no longer bit-identical
    to a run without it: ``on_backoff`` (the adapter's ``warn``) records it for the result row.
    """
    import torch

    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(items) <= 1:
            raise UsageError(
                "out of GPU memory with a single sample; lower the resolution (--set resolution=…), "
                "use --dtype float16, or a larger GPU (--images-per-call is already 1)"
            ) from None
        half = len(items) // 2
        message = (
            f"out of GPU memory with {len(items)} samples in one call; split into "
            f"{half} + {len(items) - half} (use a smaller --images-per-call to avoid this)"
        )
        log.warning(message)
        if on_backoff is not None:
            on_backoff(message)
        return with_oom_backoff(run, items[:half], on_backoff) + with_oom_backoff(
            run, items[half:], on_backoff
        )


def load_safetensors_or_torch(path: str | Path) -> dict[str, Any]:
    """Load a state dict without executing pickled code (safetensors, or torch weights_only).

    A file that needs pickled code, or is damaged, raises one ``UnsafeWeightsError`` naming it
    and saying how to convert it to safetensors (no library traceback).
    """
    path = Path(path)
    with weights_only_loads(path):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)


def snapshot_commit(path: str | Path) -> str | None:
    """The commit hash of a HF-cache snapshot folder (``.../snapshots/<commit>/...``), else None."""
    parts = Path(path).resolve().parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None


@dataclass(frozen=True)
class SampleJob:
    """One pipeline call: per-sample conditioning, labels and generators, one sweep point."""

    cond_images: tuple[np.ndarray, ...]  # HxWx3 uint8, one per sample (repeated within a request)
    cond_ids: tuple[str, ...]
    class_labels: tuple[str, ...]
    generators: tuple  # one torch.Generator per sample
    point: Mapping[str, Any]
    resolution: int

    def __len__(self) -> int:
        return len(self.generators)


def sample_requests(
    requests: Sequence[Request],
    call: Callable[[SampleJob], Sequence[np.ndarray]],
    *,
    group_by_condition: bool = False,
    generator_device: str = "cpu",
    on_backoff: Callable[[str], None] | None = None,
) -> list[list[np.ndarray]]:
    """Run ``call`` over every sample of ``requests``; return images per request, in order.

    ``requests`` are one generation group of the runner (fixed by the protocol and the group
    size, never by --batch-size or shards): samples sharing a sweep point (and, with
    ``group_by_condition``, a conditioning image) go in one call, halved on CUDA out-of-memory
    (reported through ``on_backoff``). Each sample draws its noise from its own generator seeded
    with its per-sample seed (on ``generator_device``, CPU by default so the initial noise is the
    same on every device). ``call`` returns HxWx3 images (uint8 or float in [0, 1]).
    """
    items = [
        (ri, r, seed) for ri, r in enumerate(requests) for seed in r.seeds
    ]  # (request index, request, seed), in request order

    def run(chunk: Sequence[tuple[int, Request, int]]) -> list[np.ndarray]:
        first = chunk[0][1]
        job = SampleJob(
            cond_images=tuple(r.cond_image for _, r, _ in chunk),
            cond_ids=tuple(r.cond_id for _, r, _ in chunk),
            class_labels=tuple(r.class_label for _, r, _ in chunk),
            generators=tuple(generators([s for _, _, s in chunk], generator_device)),
            point=first.point,
            resolution=first.resolution,
        )
        images = list(call(job))
        if len(images) != len(chunk):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(chunk)} samples")
        return images

    groups: dict[tuple, list[tuple[int, Request, int]]] = {}
    for item in items:
        _, r, _ = item
        key: tuple = (tuple(sorted(r.point.items())), r.resolution)
        if group_by_condition:
            key += (r.cond_id,)
        groups.setdefault(key, []).append(item)
    out: list[list[np.ndarray]] = [[] for _ in requests]
    for chunk in groups.values():
        images = with_oom_backoff(run, chunk, on_backoff)
        for (ri, _, _), img in zip(chunk, images, strict=True):
            out[ri].append(img)
    return out
