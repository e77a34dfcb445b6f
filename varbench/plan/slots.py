"""Sample slots: every sample a protocol asks for, in canonical order, with its seed and group.

The slots and their generation groups are a function of the manifest, the protocol and the
group size only, which is what makes a run's bits independent of batch size, shards and resume.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from varbench.core.hashing import sample_seed
from varbench.plan.manifest import Manifest


def point_id(point: Mapping[str, Any]) -> str:
    """File-safe, readable id of a sweep point, e.g. ``guidance-4.0_scale-1.0``."""
    if not point:
        return "default"
    parts = [f"{k}-{v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._=-]", "_", "_".join(parts))


@dataclass(frozen=True)
class SampleSlot:
    """Where one sample goes and how it is seeded."""

    class_index: int
    class_name: str
    class_label: str
    cond_rank: int  # position of the conditioning image within its class
    cond_id: str
    sample_index: int
    seed: int

    @property
    def relpath(self) -> str:
        """Path inside a point's ``samples/`` folder."""
        return f"{self.class_index:05d}/c{self.cond_rank:02d}_s{self.sample_index:04d}.png"


def sample_slots(manifest: Manifest, samples_per_cond: int, seed: int) -> list[SampleSlot]:
    """Every sample of a protocol in canonical order (class, conditioning image, sample index)."""
    slots = []
    for cls in manifest.classes:
        for rank, cond in enumerate(cls.conditioning):
            for s in range(samples_per_cond):
                slots.append(
                    SampleSlot(
                        class_index=cls.index,
                        class_name=cls.name,
                        class_label=cls.label,
                        cond_rank=rank,
                        cond_id=cond,
                        sample_index=s,
                        seed=sample_seed(seed, cond, s),
                    )
                )
    return slots


def generation_groups(
    slots: list[SampleSlot], size: int, by_condition: bool = False
) -> list[tuple[SampleSlot, ...]]:
    """Fixed groups of consecutive slots in manifest order, at most ``size`` each.

    With ``by_condition`` a group never spans two conditioning images (models that share work
    per conditioning image, or broadcast one image over a call). The groups are a function of
    the manifest and these two settings only, so one model call per group gives the same bits
    under any --batch-size, shard split or resume.
    """
    if size < 1:
        raise ValueError("group size must be >= 1")
    runs: list[list[SampleSlot]] = []
    for slot in slots:
        if not runs or (by_condition and runs[-1][-1].cond_id != slot.cond_id):
            runs.append([])
        runs[-1].append(slot)
    return [tuple(run[i : i + size]) for run in runs for i in range(0, len(run), size)]
