"""Generation room: one ``adapter.generate`` call per fixed group, each sample a durable PNG.

Knows adapters, the plan's slots and the sample store; knows nothing of metrics or scoring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varbench.adapter import Adapter, Request
from varbench.core.files import atomic_write_json, atomic_write_png, read_json_or, read_rgb
from varbench.core.progress import progress_bar
from varbench.plan.datasets import DatasetListing
from varbench.plan.slots import SampleSlot
from varbench.runs.store import RunStore


def as_uint8(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Accept uint8 or float [0, 1] HxWx3 output; NaNs become 0 and are reported."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr, False
    has_nan = bool(np.isnan(arr).any())
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8), has_nan


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationJob:
    """One sweep point of one shard: where the samples go and at which resolution."""

    adapter_name: str
    listing: DatasetListing
    store: RunStore
    pid: str
    point: dict[str, Any]
    resolution: int


def _requests(job: GenerationJob, group: Sequence[SampleSlot], cond_cache: dict) -> list[Request]:
    """One request per conditioning image of the group, with its members' indices and seeds."""
    requests = []
    for cond_id in dict.fromkeys(s.cond_id for s in group):
        members = [s for s in group if s.cond_id == cond_id]
        if cond_id not in cond_cache:
            cond_cache.clear()
            cond_cache[cond_id] = read_rgb(job.listing.path(cond_id))
        first = members[0]
        requests.append(
            Request(
                cond_image=cond_cache[cond_id],
                cond_id=cond_id,
                class_name=first.class_name,
                class_label=first.class_label,
                class_index=first.class_index,
                sample_indices=tuple(s.sample_index for s in members),
                seeds=tuple(s.seed for s in members),
                point=dict(job.point),
                resolution=job.resolution,
            )
        )
    return requests


def generate_groups(
    adapter: Adapter, job: GenerationJob, groups: Sequence[tuple[SampleSlot, ...]]
) -> None:
    """One ``adapter.generate`` call per group with a missing sample; each PNG written atomically.

    A group is regenerated whole (its other samples come out bit-identical) so that every
    sample is always made in the same model call as in an uninterrupted run.
    """
    name, store, pid = job.adapter_name, job.store, job.pid
    cond_cache: dict[str, np.ndarray] = {}
    point_dir = store.point_dir(pid)
    timing_path = point_dir / "timing.json"
    nan_path = point_dir / "nan.json"
    warnings_path = point_dir / "warnings.json"
    timing = read_json_or(timing_path, {"seconds": 0.0, "images": 0})
    nan_slots = set(read_json_or(nan_path, []))
    todo = [(g, store.missing(pid, list(g))) for g in groups]
    todo = [(g, miss) for g, miss in todo if miss]
    total = sum(len(miss) for _, miss in todo)
    with progress_bar(f"generating {name} {pid}", total) as advance:
        for group, missing in todo:
            requests = _requests(job, group, cond_cache)
            t0 = time.perf_counter()
            outputs = adapter.generate(requests)
            elapsed = time.perf_counter() - t0
            events = adapter.drain_warnings()
            if events:
                for event in events:
                    log.warning("%s %s: %s", name, pid, event)
                atomic_write_json(warnings_path, read_json_or(warnings_path, []) + events)
            if len(outputs) != len(requests):
                raise RuntimeError(
                    f"adapter {name} returned {len(outputs)} results for {len(requests)} requests"
                )
            wanted = {s.relpath for s in missing}
            images: list[tuple[SampleSlot, np.ndarray]] = []
            for req, imgs in zip(requests, outputs, strict=True):
                if len(imgs) != len(req.sample_indices):
                    raise RuntimeError(
                        f"adapter {name} returned {len(imgs)} images for {len(req.sample_indices)} samples"
                    )
                members = [s for s in group if s.cond_id == req.cond_id]
                for slot, img in zip(members, imgs, strict=True):
                    arr, had_nan = as_uint8(img)
                    if arr.ndim != 3 or arr.shape[2] != 3:
                        raise RuntimeError(
                            f"adapter {name} returned an image of shape {arr.shape}; expected HxWx3"
                        )
                    if slot.relpath not in wanted:
                        continue  # on disk already, and bit-identical to this one
                    if had_nan:
                        nan_slots.add(slot.relpath)
                    images.append((slot, arr))
            if nan_slots:
                atomic_write_json(nan_path, sorted(nan_slots))  # before the PNGs exist
            for slot, arr in images:
                atomic_write_png(store.sample_path(pid, slot), arr)
            timing["seconds"] += elapsed
            timing["images"] += len(group)
            atomic_write_json(timing_path, timing)
            advance(len(images))


__all__ = ["GenerationJob", "generate_groups", "as_uint8"]
