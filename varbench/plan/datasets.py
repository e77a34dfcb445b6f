"""Dataset listing by layout (class folders, SUN397) and full validation before any generation.

Every non-folder entry with an image extension is listed, including broken or looping links and
files PIL cannot read, so validation reports it by name instead of a class silently coming up
short; what is converted and what is rejected is decided in ``varbench.core.images``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varbench.core.files import Blob, atomic_write_json
from varbench.core.hashing import pixel_sha256, sha256_text
from varbench.core.images import (
    IMAGE_POLICY_VERSION,
    image_problem,
    os_problem,
    policy_warnings_silenced,
    stat_problem,
)
from varbench.core.progress import progress_bar
from varbench.errors import DatasetError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class ClassSource:
    """A class read from a container (an LMDB) of which only the chosen entries are extracted."""

    n_files: int  # entries in the container, not only the extracted ones
    listing_sha256: str  # hash of every key in the container: adding or removing one is drift


@dataclass(frozen=True)
class DatasetListing:
    """Every image of a dataset by class, as sorted root-relative POSIX paths."""

    root: Path
    layout: str
    classes: dict[str, tuple[str, ...]]  # class name -> sorted relative paths
    labels: dict[str, str]  # class name -> human-readable label (for prompts)
    problems: tuple[str, ...] = ()  # unreadable folders and link cycles, reported by validation
    files: Mapping[str, Path | Blob] = field(default_factory=dict)  # entries not under root
    sources: Mapping[str, ClassSource] = field(default_factory=dict)  # classes listed from LMDBs
    # False for containers (archives, shards): validation decodes only the entries a run reads
    # (references and the first n_per_class held out), not every member of a 6-150 GB archive.
    validate_all: bool = True
    origin: Mapping[str, Any] = field(default_factory=dict)  # container, paths, label source

    def path(self, rel: str) -> Path | Blob:
        """A file's absolute path, or the container entry (read in place) the name stands for."""
        return self.files.get(rel) or self.root / rel

    @property
    def class_names(self) -> list[str]:
        """Sorted class names; their position is the class index."""
        return sorted(self.classes)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_problem(folder: Path | str, exc: OSError) -> str:
    """A folder that cannot be listed (permissions, vanished, link loop), with the fix."""
    if isinstance(exc, PermissionError):
        return (
            f"permission denied listing folder {folder}; "
            "fix: make it readable (chmod a+rx) or remove it"
        )
    return f"cannot list folder {folder}: {exc.strerror or exc}; fix: repair or remove it"


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _images_in(folder: Path, root: Path, problems: list[str]) -> list[str]:
    """Image-named non-folder entries directly inside ``folder`` (links included, unresolved)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if _is_image(e.name) and not _is_folder(e)]
    except OSError as exc:
        problems.append(_folder_problem(folder, exc))
        return []
    return sorted(Path(folder, f).relative_to(root).as_posix() for f in names)


def _walk(top: Path, problems: list[str]) -> Iterable[tuple[str, list[str], list[str]]]:
    """``os.walk`` following folder links; a link back into its own walk path is a reported loop.

    Each folder carries the real paths of the folders above it on the walk path, so a link to an
    ancestor (directly or through other links) is pruned, while two links to one folder are not.
    """
    above: dict[str, frozenset[str]] = {str(top): frozenset({os.path.realpath(top)})}
    for dirpath, dirnames, filenames in os.walk(
        top, followlinks=True, onerror=lambda e: problems.append(_folder_problem(e.filename, e))
    ):
        chain = above.pop(dirpath, frozenset())
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            child = os.path.join(dirpath, d)
            real = os.path.realpath(child)
            if real in chain:
                problems.append(
                    f"symlink loop {child} (leads back to {real}); fix: remove the link"
                )
                continue
            above[child] = chain | {real}
            keep.append(d)
        dirnames[:] = keep
        yield dirpath, dirnames, filenames


Listed = tuple[dict[str, tuple[str, ...]], list[str], list[str]]


def list_imagefolder(root: Path) -> Listed:
    """``<root>/<class>/*.jpg`` (images directly inside each class folder).

    Returns (classes, fatal problems, problems left for validation to report with the rest).
    """
    problems: list[str] = []
    classes: dict[str, tuple[str, ...]] = {}
    file_problems: list[str] = []
    subdirs = []
    for d in sorted(root.iterdir()):
        if d.name.startswith("."):
            continue
        if d.is_dir():
            subdirs.append(d)
        elif d.is_symlink() and not os.path.exists(d):  # broken or looping: maybe a class folder
            file_problems.append(stat_problem(d) or f"unusable link {d}; fix: remove it")
    if not subdirs:
        problems.append(
            f"missing class folders: {root} has no sub-folders; expected <data>/<class>/<image files>"
        )
    for d in subdirs:
        classes[d.name] = tuple(_images_in(d, root, file_problems))
    loose = [f for f in os.listdir(root) if _is_image(f)]
    if loose and not subdirs:
        problems.append(f"{root} holds {len(loose)} images directly; put them in class folders")
    return classes, problems, file_problems


def list_sun397(root: Path) -> Listed:
    """``<root>/SUN397/<letter>/<category>[/<sub>]/*.jpg``; category = path between letter and file."""
    problems: list[str] = []
    deferred: list[str] = []
    base = root / "SUN397" if (root / "SUN397").is_dir() else root
    letters = sorted(d for d in base.iterdir() if d.is_dir() and len(d.name) == 1)
    if not letters:
        problems.append(
            f"missing folder {root}/SUN397/<letter>/: expected SUN397/<letter>/<category>[/<sub>]/*.jpg"
        )
        return {}, problems, deferred
    classes: dict[str, list[str]] = {}
    for letter in letters:
        for dirpath, _dirnames, filenames in _walk(letter, deferred):
            files = [f for f in filenames if _is_image(f)]
            if not files:
                continue
            category = Path(dirpath).relative_to(base).as_posix()  # "<letter>/<category>[/<sub>]"
            classes.setdefault(category, []).extend(
                Path(dirpath, f).relative_to(root).as_posix() for f in files
            )
    return {k: tuple(sorted(v)) for k, v in classes.items()}, problems, deferred


def imagenet_labels() -> dict[str, str]:
    """ImageNet wnid -> first class name, from the list shipped with the adapters."""
    from importlib import resources

    path = resources.files("varbench_adapters").joinpath("data/imagenet_classes.tsv")
    labels = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                wnid, _, name = line.partition("\t")
                labels[wnid] = name
    return labels


def _default_label(name: str) -> str:
    # SUN397 "b/bedroom" -> "bedroom"; "a/apartment_building/outdoor" -> "apartment building outdoor"
    parts = name.split("/")
    if len(parts) > 1 and len(parts[0]) == 1:
        parts = parts[1:]
    return " ".join(parts).replace("_", " ")


def list_dataset(root: str | Path, layout: str, class_names: str | None = None) -> DatasetListing:
    """List a dataset; raise ``DatasetError`` when the root or its folders are missing."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(str(root), [f"missing folder: --data {root} does not exist"])
    try:
        if layout == "sun397":
            classes, problems, deferred = list_sun397(root)
        else:
            classes, problems, deferred = list_imagefolder(root)
    except OSError as exc:  # the root itself (or SUN397/) cannot be listed
        raise DatasetError(str(root), [_folder_problem(exc.filename or root, exc)]) from exc
    if problems:
        raise DatasetError(str(root), problems)
    names = imagenet_labels() if class_names == "imagenet" else {}
    labels = {c: names.get(c, _default_label(c)) for c in classes}
    return DatasetListing(
        root=root, layout=layout, classes=classes, labels=labels, problems=tuple(deferred)
    )


def check_image_file(path: Path | Blob) -> tuple[str | None, str | None]:
    """Decode one image fully under the image policy; return (pixel hash, None) or (None, problem)."""
    try:
        arr, problem = image_problem(path)
    except Exception as exc:  # noqa: BLE001 - anything the policy did not foresee is still named
        return (
            None,
            f"unreadable image {path}: {type(exc).__name__}: {exc}; fix: re-save or delete it",
        )
    if arr is None:
        return None, problem
    return pixel_sha256(arr), None


@dataclass
class ValidationReport:
    """Pixel hashes of every readable image and the problems found."""

    pixel_hashes: dict[str, str]
    problems: list[str]


def storage_order(listing: DatasetListing, todo: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """``(entry, stamp)`` pairs in the order to read them: a container's in storage order (its
    stamps sort so), so each tar is read front to back and each parquet row group once, while it
    is still in memory; files as listed. Results never depend on it: they are keyed by entry."""
    if todo and isinstance(listing.path(todo[0][0]), Blob):
        return sorted(todo, key=lambda t: t[1])
    return todo


def validate_files(
    listing: DatasetListing, files: Iterable[str], cache_dir: Path | None, workers: int = 4
) -> ValidationReport:
    """Fully decode ``files`` under the image policy (``varbench.core.images``), collecting problems.

    Problems found while listing (unlistable folders, link cycles) are included. Results are
    cached by (path, size, mtime) and the policy version, so re-runs are fast.
    """
    files = list(files)
    cache_path = None
    cache: dict[str, list] = {}
    if cache_dir is not None:
        cache_path = (
            Path(cache_dir)
            / "validation"
            / f"{sha256_text(str(listing.root))[:24]}.p{IMAGE_POLICY_VERSION}.json"
        )
        if cache_path.is_file():
            try:
                cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                cache = {}
    hashes: dict[str, str] = {}
    problems: list[str] = list(listing.problems)
    todo: list[tuple[str, list]] = []
    for rel in files:
        src = listing.path(rel)
        if isinstance(src, Blob):
            stamp = list(src.stamp)
        else:
            try:
                st = src.stat()
            except OSError as exc:
                problems.append(os_problem(src, exc))
                continue
            stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(rel)
        if hit and hit[:-1] == stamp and hit[-1]:
            hashes[rel] = hit[-1]
        else:
            todo.append((rel, stamp))
    todo = storage_order(listing, todo)
    same: dict[str, list[str]] = {}  # a read failure with its entry's name taken out -> those
    if todo:
        with (
            policy_warnings_silenced(),
            ThreadPoolExecutor(max_workers=workers) as pool,
            progress_bar("validating images", len(todo)) as advance,
        ):
            for (rel, stamp), (digest, problem) in zip(
                todo, pool.map(lambda t: check_image_file(listing.path(t[0])), todo), strict=True
            ):
                advance(1)
                if problem and problem.startswith("unreadable entry"):  # the container's
                    key = problem.replace(str(listing.path(rel)), "\0")  # fault, not the image's
                    same.setdefault(key, []).append(problem)
                elif problem:
                    problems.append(problem)
                else:
                    hashes[rel] = digest
                    cache[rel] = [*stamp, digest]
        if cache_path is not None:
            atomic_write_json(cache_path, cache)
    for group in same.values():  # one damaged row group or shard: one line, with a count
        more = (
            f" (and {len(group) - 1} more entries with the same problem)" if len(group) > 1 else ""
        )
        problems.append(min(group) + more)
    return ValidationReport(pixel_hashes=hashes, problems=sorted(problems))
