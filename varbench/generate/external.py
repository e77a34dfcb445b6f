"""Import room: samples made outside varbench (image folders or ADM ``.npz`` batches) -> the store.

Everything is validated before anything is written: one error lists every problem (the first
20 and the count) with the fix. Imported samples become lossless PNGs in the run's store, so
scoring, resume, status and the report treat them like generated ones.

Layouts, relative to ``--set samples=PATH``:
- one point: PATH is a folder laid out as the plan names the files (``00000/c00_s0000.png``),
  or an ``.npz`` whose ``arr_0`` holds the samples in plan order (uint8, N x H x W x 3);
- a sweep: PATH holds one such folder or ``.npz`` per point, named like ``guidance-4`` or
  ``guidance-4_scale-0.5`` (the names become the points' parameters).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from varbench.core.files import atomic_write_png
from varbench.core.hashing import pixel_sha256, sha256_json
from varbench.core.images import MIN_SIDE, image_problem, policy_warnings_silenced
from varbench.core.progress import progress_bar
from varbench.errors import UsageError, VarbenchError
from varbench.plan.datasets import IMAGE_EXTENSIONS
from varbench.plan.slots import SampleSlot
from varbench.runs.store import RunStore

SHOWN = 20  # problems listed by name in one error
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_PARAM_RE = re.compile(r"([A-Za-z][A-Za-z0-9_]*?)-([^_]+)(?:_|$)")
_CLASS_DIR_RE = re.compile(r"^\d{5}$")


class ExternalSamplesError(VarbenchError):
    """Imported samples do not fit the plan; every problem is listed, nothing was written."""

    def __init__(self, path: Path, problems: Sequence[str], fix: str):
        shown = "\n".join(f"  - {p}" for p in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        super().__init__(
            f"samples {path}: {len(problems)} problem(s); nothing was imported or scored:\n"
            f"{shown}{more}\nfix: {fix}"
        )


def check_name(name: str | None) -> str:
    """The leaderboard name of imported samples (``--set name=NAME``): file-safe, required."""
    if not name:
        raise UsageError(
            "--model external needs --set name=NAME (the name the leaderboard shows, e.g. "
            "--set name=semantica_jax)"
        )
    if not NAME_RE.match(name):
        raise UsageError(
            f"--set name={name!r}: use letters, digits and _ . + - (at most 64, no spaces)"
        )
    return name


def parse_point(name: str) -> dict[str, Any] | None:
    """``guidance-4_scale-0.5`` -> ``{"guidance": 4, "scale": 0.5}``; None if not such a name."""
    stem = name[:-4] if name.endswith(".npz") else name
    params: dict[str, Any] = {}
    pos = 0
    for m in _PARAM_RE.finditer(stem):
        if m.start() != pos:
            return None
        value: Any = m.group(2)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        params[m.group(1)] = value
        pos = m.end()
    return params if params and pos == len(stem) else None


@dataclass(frozen=True)
class PointSource:
    """Where one sweep point's samples come from: a folder or an ``.npz``."""

    point: dict[str, Any]
    path: Path

    @property
    def kind(self) -> str:
        return "npz" if self.path.suffix.lower() == ".npz" else "folder"


def discover(path: Path) -> list[PointSource]:
    """The sweep points under ``path`` (one point when it is itself a plan-shaped folder or npz)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--set samples={path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise UsageError(f"--set samples={path}: expected a folder or an .npz file")
        return [PointSource({}, path)]
    entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
    if any(_CLASS_DIR_RE.match(e) and (path / e).is_dir() for e in entries):
        return [PointSource({}, path)]
    points = []
    for e in entries:
        params = parse_point(e)
        if params is not None and ((path / e).is_dir() or e.endswith(".npz")):
            points.append(PointSource(params, path / e))
    if not points:
        raise UsageError(
            f"--set samples={path}: neither the plan's layout (class folders 00000/, 00001/, ... "
            "as `varbench export` names them) nor one folder or .npz per sweep point "
            "(named like guidance-4 or guidance-4_scale-0.5)"
        )
    keys = {tuple(sorted(p.point)) for p in points}
    if len(keys) > 1:
        raise UsageError(
            f"--set samples={path}: sweep points name different parameters "
            f"({', '.join(p.path.name for p in points)}); name every point by the same ones"
        )
    seen: dict[str, Path] = {}
    for p in points:
        key = sha256_json(p.point)
        if key in seen:
            raise UsageError(
                f"--set samples={path}: {seen[key].name} and {p.path.name} are one point"
            )
        seen[key] = p.path
    return sorted(points, key=lambda p: tuple(p.point[k] for k in sorted(p.point)))


# -- folders --------------------------------------------------------------------------------


def _folder_files(folder: Path, slots: Sequence[SampleSlot], problems: list[str]) -> list[Path]:
    """The file of each slot (any image extension), noting missing, duplicate and extra files."""
    found: dict[str, list[Path]] = {}
    extra: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if n.startswith("."):
                continue
            rel = Path(root, n).relative_to(folder).as_posix()
            stem, ext = os.path.splitext(rel)
            if ext.lower() in IMAGE_EXTENSIONS:
                found.setdefault(stem, []).append(Path(root, n))
            else:
                extra.append(rel)
    out: list[Path] = []
    missing: list[str] = []
    for s in slots:
        stem = os.path.splitext(s.relpath)[0]
        files = found.pop(stem, [])
        if not files:
            missing.append(s.relpath)
            out.append(folder / s.relpath)
        else:
            if len(files) > 1:
                names = ", ".join(f.relative_to(folder).as_posix() for f in files)
                problems.append(f"{folder}: several files for one sample: {names}")
            out.append(files[0])
    problems += [f"missing {folder / m}" for m in missing]
    extra += [f.relative_to(folder).as_posix() for fs in found.values() for f in fs]
    problems += [f"extra file {folder / e} (not in the plan)" for e in sorted(extra)]
    return out


def _check_file(path: Path) -> tuple[str | None, str | None]:
    """(pixel hash, None) of an accepted RGB sample file, or (None, problem)."""
    arr, problem = image_problem(path)  # the dataset policy: 16-bit, animated, broken, ...
    if arr is None:
        return None, problem
    with Image.open(path) as im:
        bands, mode = im.getbands(), im.mode
    if len(bands) < 3 and mode != "P":
        return None, (
            f"{path}: {len(bands)} channel(s) (mode {mode}); samples must be colour images "
            "(save them as RGB)"
        )
    return pixel_sha256(arr), None


# -- npz --------------------------------------------------------------------------------------


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy stream ``f``, leaving it at the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_header(path: Path) -> tuple[zipfile.ZipFile, str, tuple[int, ...], np.dtype]:
    """Open an npz and read ``arr_0``'s shape and dtype without loading it."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ExternalSamplesError(
            path, [f"{path}: not a readable .npz ({exc})"], "write it with numpy.savez"
        ) from None
    member = "arr_0.npy"
    if member not in zf.namelist():
        keys = ", ".join(n[:-4] for n in zf.namelist()) or "nothing"
        zf.close()
        raise ExternalSamplesError(
            path,
            [f"{path}: no arr_0 (holds {keys})"],
            "save the samples as the first positional array: numpy.savez(path, samples)",
        )
    with zf.open(member) as f:
        shape, fortran, dtype = _read_header(f)
    if fortran:
        zf.close()
        raise ExternalSamplesError(
            path, [f"{path}: arr_0 is Fortran-ordered"], "save np.ascontiguousarray(samples)"
        )
    return zf, member, tuple(shape), np.dtype(dtype)


def _npz_problems(path: Path, shape: tuple[int, ...], dtype: np.dtype, n: int) -> list[str]:
    problems = []
    if dtype != np.uint8:
        problems.append(
            f"{path}: arr_0 has dtype {dtype}; expected uint8 (ADM layout; convert with "
            "(x * 255).round().clip(0, 255).astype(np.uint8) for floats in 0..1)"
        )
    if len(shape) != 4 or shape[-1] != 3:
        what = f"{shape[-1]} channel(s)" if len(shape) == 4 else f"{len(shape)} dimension(s)"
        problems.append(f"{path}: arr_0 has shape {shape} ({what}); expected N x H x W x 3 (RGB)")
    elif shape[0] != n:
        problems.append(f"{path}: arr_0 holds {shape[0]} samples; the plan has {n} slots")
    elif min(shape[1], shape[2]) < MIN_SIDE:
        problems.append(f"{path}: samples are {shape[1]} x {shape[2]}; need >= {MIN_SIDE} px")
    return problems


def iter_npz(path: Path) -> Iterator[np.ndarray]:
    """The samples of ``arr_0`` one at a time (streamed: a 10,000-sample batch never sits in memory)."""
    zf, member, shape, dtype = _npz_header(path)
    with zf, zf.open(member) as f:
        _read_header(f)
        size = int(np.prod(shape[1:])) * dtype.itemsize
        for _ in range(shape[0]):
            buf = f.read(size)
            if len(buf) != size:
                raise ExternalSamplesError(path, [f"{path}: arr_0 is truncated"], "write it again")
            yield np.frombuffer(buf, dtype=dtype).reshape(shape[1:])


# -- the whole set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalSamples:
    """Validated samples of every sweep point, with their pixel hashes in plan order."""

    path: Path
    points: tuple[PointSource, ...]
    files: tuple[tuple[Path, ...] | None, ...]  # per point: the slot files (None for an npz)
    hashes: tuple[tuple[str, ...], ...]  # per point: pixel hash of each slot's sample

    @property
    def sha256(self) -> str:
        """Content hash of every imported sample (part of the run id)."""
        return sha256_json(
            [[p.point, list(h)] for p, h in zip(self.points, self.hashes, strict=True)]
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "samples_sha256": self.sha256,
            "samples_path": str(self.path.resolve()),
            "samples_format": sorted({p.kind for p in self.points}),
        }


def validate(path: Path, slots: Sequence[SampleSlot]) -> ExternalSamples:
    """Check every point's samples against the plan; one error lists every problem."""
    path = Path(path)
    points = discover(path)
    problems: list[str] = []
    files: list[tuple[Path, ...] | None] = []
    hashes: list[tuple[str, ...]] = []
    for src in points:
        if src.kind == "npz":
            zf, _, shape, dtype = _npz_header(src.path)
            zf.close()
            bad = _npz_problems(src.path, shape, dtype, len(slots))
            problems += bad
            files.append(None)
            if bad:
                hashes.append(())
                continue
            with progress_bar(f"checking {src.path.name}", len(slots)) as advance:
                digests = []
                for arr in iter_npz(src.path):
                    digests.append(pixel_sha256(arr))
                    advance(1)
            hashes.append(tuple(digests))
            continue
        point_problems: list[str] = []
        paths = _folder_files(src.path, slots, point_problems)
        problems += point_problems
        files.append(tuple(paths))
        present = [p for p in paths if p.is_file()]
        with (
            policy_warnings_silenced(),
            ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool,
            progress_bar(f"checking {src.path.name}", len(present)) as advance,
        ):
            checked = {}
            for p, out in zip(present, pool.map(_check_file, present), strict=True):
                checked[p] = out
                advance(1)
        problems += [problem for _, problem in checked.values() if problem]
        hashes.append(tuple(checked.get(p, (None, None))[0] or "" for p in paths))
    if problems:
        raise ExternalSamplesError(
            path,
            problems,
            "write exactly one RGB image per line of the plan (plan.csv from `varbench export`), "
            "named as its `file` column, or an .npz whose arr_0 is uint8 N x H x W x 3 in plan order",
        )
    return ExternalSamples(path, tuple(points), tuple(files), tuple(hashes))


def import_point(
    samples: ExternalSamples,
    index: int,
    slots: Sequence[SampleSlot],
    mine: Sequence[SampleSlot],
    store: RunStore,
    pid: str,
) -> None:
    """Write the missing samples of ``mine`` (a subset of ``slots``) as lossless PNGs."""
    want = {s.relpath for s in store.missing(pid, list(mine))}
    if not want:
        return
    src = samples.points[index]
    with progress_bar(f"importing {src.path.name}", len(want)) as advance:
        if src.kind == "npz":
            for slot, arr in zip(slots, iter_npz(src.path), strict=True):
                if slot.relpath in want:
                    atomic_write_png(store.sample_path(pid, slot), np.ascontiguousarray(arr))
                    advance(1)
            return
        files = samples.files[index]
        assert files is not None
        with policy_warnings_silenced():
            for slot, file in zip(slots, files, strict=True):
                if slot.relpath in want:
                    arr, problem = image_problem(file)
                    if arr is None:
                        raise ExternalSamplesError(
                            samples.path, [problem or str(file)], "repair it"
                        )
                    atomic_write_png(store.sample_path(pid, slot), arr)
                    advance(1)


__all__ = ["ExternalSamples", "ExternalSamplesError", "validate", "import_point", "discover"]
