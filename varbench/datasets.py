"""Dataset listing by layout (class folders, SUN397) and full validation before any generation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from varbench.errors import DatasetError
from varbench.hashing import pixel_sha256, sha256_text
from varbench.io import atomic_write_json, read_rgb
from varbench.progress import progress_bar

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


@dataclass(frozen=True)
class DatasetListing:
    """Every image of a dataset by class, as sorted root-relative POSIX paths."""

    root: Path
    layout: str
    classes: dict[str, tuple[str, ...]]  # class name -> sorted relative paths
    labels: dict[str, str]  # class name -> human-readable label (for prompts)

    def path(self, rel: str) -> Path:
        """Absolute path of a root-relative file."""
        return self.root / rel

    @property
    def class_names(self) -> list[str]:
        """Sorted class names; their position is the class index."""
        return sorted(self.classes)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path, root: Path, recursive: bool) -> list[str]:
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [
                Path(dirpath, f).relative_to(root).as_posix() for f in filenames if _is_image(f)
            ]
    else:
        out = [
            Path(folder, f).relative_to(root).as_posix()
            for f in os.listdir(folder)
            if _is_image(f) and (folder / f).is_file()
        ]
    return sorted(out)


def list_imagefolder(root: Path) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """``<root>/<class>/*.jpg`` (images directly inside each class folder)."""
    problems: list[str] = []
    classes: dict[str, tuple[str, ...]] = {}
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        problems.append(
            f"missing class folders: {root} has no sub-folders; expected <data>/<class>/<image files>"
        )
    for d in subdirs:
        classes[d.name] = tuple(_images_under(d, root, recursive=False))
    loose = [f for f in os.listdir(root) if _is_image(f)]
    if loose and not subdirs:
        problems.append(f"{root} holds {len(loose)} images directly; put them in class folders")
    return classes, problems


def list_sun397(root: Path) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """``<root>/SUN397/<letter>/<category>[/<sub>]/*.jpg``; category = path between letter and file."""
    problems: list[str] = []
    base = root / "SUN397" if (root / "SUN397").is_dir() else root
    letters = sorted(d for d in base.iterdir() if d.is_dir() and len(d.name) == 1)
    if not letters:
        problems.append(
            f"missing folder {root}/SUN397/<letter>/: expected SUN397/<letter>/<category>[/<sub>]/*.jpg"
        )
        return {}, problems
    classes: dict[str, list[str]] = {}
    for letter in letters:
        for dirpath, dirnames, filenames in os.walk(letter):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files = [f for f in filenames if _is_image(f)]
            if not files:
                continue
            category = Path(dirpath).relative_to(base).as_posix()  # "<letter>/<category>[/<sub>]"
            classes.setdefault(category, []).extend(
                Path(dirpath, f).relative_to(root).as_posix() for f in files
            )
    return {k: tuple(sorted(v)) for k, v in classes.items()}, problems


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
    if layout == "sun397":
        classes, problems = list_sun397(root)
    else:
        classes, problems = list_imagefolder(root)
    if problems:
        raise DatasetError(str(root), problems)
    names = imagenet_labels() if class_names == "imagenet" else {}
    labels = {c: names.get(c, _default_label(c)) for c in classes}
    return DatasetListing(root=root, layout=layout, classes=classes, labels=labels)


def _check_file(path: Path) -> tuple[str | None, str | None]:
    """Decode one image fully; return (pixel hash, None) or (None, problem)."""
    try:
        arr = read_rgb(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a dataset problem to report
        return None, f"unreadable or truncated image {path}: {type(exc).__name__}: {exc}"
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        return None, f"image too small ({arr.shape[1]}x{arr.shape[0]}) {path}"
    return pixel_sha256(arr), None


@dataclass
class ValidationReport:
    """Pixel hashes of every readable image and the problems found."""

    pixel_hashes: dict[str, str]
    problems: list[str]


def validate_files(
    listing: DatasetListing, files: Iterable[str], cache_dir: Path | None, workers: int = 4
) -> ValidationReport:
    """Fully decode ``files``; results cached by (path, size, mtime) so re-runs are fast."""
    files = list(files)
    cache_path = None
    cache: dict[str, list] = {}
    if cache_dir is not None:
        cache_path = Path(cache_dir) / "validation" / f"{sha256_text(str(listing.root))[:24]}.json"
        if cache_path.is_file():
            try:
                cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                cache = {}
    hashes: dict[str, str] = {}
    problems: list[str] = []
    todo: list[tuple[str, list]] = []
    for rel in files:
        try:
            st = listing.path(rel).stat()
        except OSError as exc:
            problems.append(f"unreadable image {listing.path(rel)}: {exc}")
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(rel)
        if hit and hit[:2] == stamp and hit[2]:
            hashes[rel] = hit[2]
        else:
            todo.append((rel, stamp))
    if todo:
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            progress_bar("validating images", len(todo)) as advance,
        ):
            for (rel, stamp), (digest, problem) in zip(
                todo, pool.map(lambda t: _check_file(listing.path(t[0])), todo), strict=True
            ):
                advance(1)
                if problem:
                    problems.append(problem)
                else:
                    hashes[rel] = digest
                    cache[rel] = [*stamp, digest]
        if cache_path is not None:
            atomic_write_json(cache_path, cache)
    return ValidationReport(pixel_hashes=hashes, problems=sorted(problems))
