"""The sample store: one folder per run, lossless PNGs written atomically as they are produced.

A sample exists iff its final PNG exists (written to a temp file, then renamed), so a run killed
at any moment resumes by skipping exactly the samples on disk.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from varbench.core.files import atomic_write_json, read_json_or, read_rgb
from varbench.core.hashing import pixel_sha256
from varbench.plan.slots import SampleSlot

log = logging.getLogger(__name__)


class RunStore:
    """Paths and bookkeeping of ``<out>/<run_id>/``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def results_path(self) -> Path:
        return self.root / "results.parquet"

    def point_dir(self, pid: str) -> Path:
        return self.root / "points" / pid

    def sample_path(self, pid: str, slot: SampleSlot) -> Path:
        return self.point_dir(pid) / "samples" / slot.relpath

    def remove_orphan_temps(self, pid: str, slots: list[SampleSlot]) -> int:
        """Delete temp files of ``slots``' PNGs left by a killed writer (``.NAME.[TAG.]XXXX.tmp``).

        Call it only while holding the lock of the shard that owns ``slots``: nobody else
        writes those samples then, so every such temp file is an orphan. Returns the count.
        """
        wanted: dict[Path, set[str]] = {}
        for slot in slots:
            path = self.sample_path(pid, slot)
            wanted.setdefault(path.parent, set()).add(path.name)
        removed = 0
        for folder, names in wanted.items():
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(".tmp"):
                    # ".c00_s0001.png.HOST-PID.ab12cd.tmp" (older: ".c00_s0001.png.ab12cd.tmp")
                    stem = name[1:]
                    if {stem.rsplit(".", 2)[0], stem.rsplit(".", 3)[0]} & names:
                        Path(entry.path).unlink(missing_ok=True)
                        removed += 1
        return removed

    def missing(self, pid: str, slots: list[SampleSlot]) -> list[SampleSlot]:
        """Slots whose PNG is not on disk yet."""
        return [s for s in slots if not self.sample_path(pid, s).is_file()]

    def write_index(self, pid: str, slots: list[SampleSlot]) -> None:
        """Human-readable index of a finished point's samples (written once all exist)."""
        atomic_write_json(
            self.point_dir(pid) / "index.json",
            [
                {
                    "file": f"samples/{s.relpath}",
                    "class": s.class_name,
                    "cond": s.cond_id,
                    "sample_index": s.sample_index,
                    "seed": s.seed,
                }
                for s in slots
            ],
        )

    def point_result_path(self, pid: str) -> Path:
        return self.point_dir(pid) / "result.json"

    def read_point_result(self, pid: str) -> dict[str, Any] | None:
        """The stored result row of a finished point; None if absent or damaged (with a warning)."""
        path = self.point_result_path(pid)
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("damaged %s (%s): the point is scored again", path, type(exc).__name__)
            return None
        if not isinstance(value, dict) or "_config_key" not in value:
            log.warning("damaged %s (not a result row): the point is scored again", path)
            return None
        return value

    def shard_marker(self, pid: str, index: int, count: int) -> Path:
        return self.point_dir(pid) / "shards" / f"{index}of{count}.json"

    def mark_shard_done(self, pid: str, index: int, count: int, n_samples: int) -> None:
        """Record that shard index/count has all its samples of this point (for `status`)."""
        path = self.shard_marker(pid, index, count)
        if not path.is_file():
            atomic_write_json(
                path,
                {
                    "shard": f"{index}/{count}",
                    "samples": n_samples,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "finished_at": time.time(),
                },
            )


def sample_hashes(
    store: RunStore, pid: str, slots: Sequence[SampleSlot], drop_damaged: bool = False
) -> dict[str, tuple[str, bool]]:
    """relpath -> (pixel hash, all black) of the slots' samples on disk, via ``hashes.json``.

    An entry is trusted only while the file's size and mtime match it; otherwise the PNG is
    decoded in full. A sample that does not decode raises, or with ``drop_damaged`` is deleted
    with a warning naming it (it then counts as missing and its group is regenerated).
    """
    hashes_path = store.point_dir(pid) / "hashes.json"
    known = read_json_or(hashes_path, {})
    out: dict[str, tuple[str, bool]] = {}
    changed = False
    for s in slots:
        path = store.sample_path(pid, s)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = known.get(s.relpath)
        if isinstance(hit, list) and len(hit) == 4 and hit[:2] == stamp:
            out[s.relpath] = (str(hit[2]), bool(hit[3]))
            continue
        try:
            arr = read_rgb(path)
        except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged sample
            if not drop_damaged:
                raise RuntimeError(f"damaged sample {path}: {exc}") from exc
            log.warning("damaged sample %s (%s): deleted; its group is regenerated", path, exc)
            path.unlink(missing_ok=True)
            known.pop(s.relpath, None)
            changed = True
            continue
        digest, black = pixel_sha256(arr), bool(arr.max() == 0)
        known[s.relpath] = [*stamp, digest, black]
        out[s.relpath] = (digest, black)
        changed = True
    if changed:
        atomic_write_json(hashes_path, known)
    return out


def verify_samples(store: RunStore, pid: str, slots: Sequence[SampleSlot]) -> None:
    """Delete (with a warning) any of these samples that no longer decode."""
    if store.point_dir(pid).is_dir():
        sample_hashes(store, pid, slots, drop_damaged=True)
