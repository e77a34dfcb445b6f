"""The layout interface: what ``--data`` points at, how a container is recognised and listed.

A layout turns a ``DataSource`` into a ``DatasetListing`` whose entries are named
``<class>/<file name>`` the way a class-folder tree of the same images names them, so a
protocol selects the same images from every container (selection ranks those names).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varbench.core.options import Param
from varbench.errors import DatasetError, UsageError
from varbench.plan.datasets import IMAGE_EXTENSIONS, DatasetListing, imagenet_labels
from varbench.plan.protocol import ProtocolSpec

DATA_OPTIONS = (
    Param("data_image_column", str, help="parquet: the image column (default: auto-detected)"),
    Param("data_label_column", str, help="parquet: the label column (default: auto-detected)"),
)


@dataclass(frozen=True)
class DataSource:
    """``--data`` (a path, glob or brace pattern), ``--labels`` and the ``data_*`` options."""

    data: str
    labels: str | None = None
    image_column: str | None = None
    label_column: str | None = None

    @classmethod
    def with_options(cls, data: str, labels: str | None, options: Mapping[str, Any]) -> DataSource:
        """From ``--data``, ``--labels`` and the ``data_*`` options (typed ``--set`` values, or
        the keys ``describe`` records)."""
        return cls(
            data=str(data),
            labels=labels,
            image_column=options.get("data_image_column"),
            label_column=options.get("data_label_column"),
        )

    @property
    def path(self) -> Path:
        return Path(self.data).expanduser()

    def describe(self) -> dict[str, str]:
        """What the user gave, made absolute (a run's report may be built from another folder),
        for provenance and to list the container again."""
        out = {"data": os.path.abspath(os.path.expanduser(self.data))}
        if self.labels:
            out["labels"] = os.path.abspath(os.path.expanduser(self.labels))
        if self.image_column:
            out["data_image_column"] = self.image_column
        if self.label_column:
            out["data_label_column"] = self.label_column
        return out


def as_source(data: str | os.PathLike | DataSource) -> DataSource:
    """A ``DataSource`` from ``--data`` as typed (or one already made)."""
    return data if isinstance(data, DataSource) else DataSource(data=str(data))


@dataclass(frozen=True)
class Layout:
    """One container: its name, what it expects (for the error listing every layout), and how
    to recognise (``detect``) and list (``listing``) it."""

    name: str
    expects: str
    detect: Callable[[DataSource], bool]
    listing: Callable[[DataSource, ProtocolSpec, Path], DatasetListing]


_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand(pattern: str) -> list[Path]:
    """Files of a pattern: ``shard-{0000..0063}.tar`` (numeric braces, zero-padded), globs, or
    one path; sorted, so shard order never depends on the file system."""
    m = _BRACE.search(pattern)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") else 0
        out: list[Path] = []
        for i in range(int(lo), int(hi) + 1):
            out += expand(pattern[: m.start()] + f"{i:0{width}d}" + pattern[m.end() :])
        return out
    if glob.has_magic(pattern):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    return [Path(pattern).expanduser()]


def is_pattern(data: str) -> bool:
    return bool(_BRACE.search(data)) or glob.has_magic(data)


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension (cheap: listing asks once per member)."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return dot > 0 and base[0] != "." and base[dot:].lower() in IMAGE_EXTENSIONS


def entry_name(file_name: str, class_name: str) -> str:
    """The file name a class-folder tree would use: the base name, without the ``_<wnid>``
    suffix Hugging Face's ImageNet archives append (``ILSVRC2012_val_00000001_n01751748.JPEG``
    is ``ILSVRC2012_val_00000001.JPEG`` in the official tar, Kaggle's folder and valprep trees)."""
    if "\\" in file_name:  # a path written on Windows
        file_name = file_name.replace("\\", "/")
    base = file_name.rpartition("/")[2]
    tail = "_" + class_name.rpartition("/")[2]
    if tail not in base:  # the common case, checked cheaply: listing calls this once per image
        return base
    stem, ext = os.path.splitext(base)
    if stem.endswith(tail) and len(stem) > len(tail):
        stem = stem[: -len(tail)]
    return stem + ext


def entry_rel(class_name: str, file_name: str, layout: str) -> str:
    """A container entry's name: the root-relative path of the same image in the documented
    folder tree, ``<class>/<file>`` (``SUN397/<letter>/<category>/<file>`` for SUN397, whose
    tree is documented as ``<data>/SUN397/...``), which is what selection ranks."""
    rel = f"{class_name}/{entry_name(file_name, class_name)}"
    return f"SUN397/{rel}" if layout == "sun397" else rel


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k WordNet ids in sorted order: integer label i is ``wnids[i]``, as
    torchvision's ImageFolder, Hugging Face's ``imagenet-1k`` and timm's WebDataset number them."""
    wnids = sorted(imagenet_labels())
    if len(wnids) != 1000:
        raise DatasetError("varbench_adapters/data/imagenet_classes.tsv", [
            f"the shipped ImageNet class list has {len(wnids)} ids, not 1000; reinstall varbench"
        ])  # fmt: skip
    return wnids


def class_of_label(label: int, names: list[str] | None, where: str) -> str:
    """The class name of an integer label: ``names[label]`` (ImageNet's sorted wnids, or the
    container's own class names); a label outside them is an error naming ``where``."""
    if names is None:
        return str(label)
    if not 0 <= label < len(names):
        raise DatasetError(where, [
            f"label {label} is outside 0-{len(names) - 1} ({len(names)} classes); fix: check the "
            "label column (ImageNet labels count 0-999 in sorted WordNet-id order)"
        ])  # fmt: skip
    return names[label]


def usage_unknown(data: str, layouts: list[Layout]) -> UsageError:
    """The error for data no layout recognises: every layout and what it expects."""
    lines = "\n".join(f"  - {lay.name}: {lay.expects}" for lay in layouts)
    return UsageError(
        f"--data {data}: not a dataset layout varbench recognises. It reads:\n{lines}\n"
        "fix: point --data at one of these (and --labels at the label file where one is needed)"
    )
