"""What the member-based layouts share: their label file and the listing they return."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from varbench.core.files import Blob
from varbench.plan.datasets import DatasetListing, _default_label, imagenet_labels
from varbench.plan.layouts.base import DataSource, imagenet_wnids
from varbench.plan.layouts.labels import Labels, find_labels, read_labels
from varbench.plan.protocol import ProtocolSpec


def labels_for(
    source: DataSource, spec: ProtocolSpec, beside: Path, cache_dir: Path | None = None
) -> Labels | None:
    """``--labels``, or a label file found beside the images (``None``: classes from paths)."""
    wnids = imagenet_wnids() if spec.class_names == "imagenet" else None
    if source.labels:
        return read_labels(Path(source.labels).expanduser(), wnids, cache_dir)
    found = find_labels(beside)
    return read_labels(found, wnids, cache_dir) if found is not None else None


def human_labels(classes, spec: ProtocolSpec, labels: Labels | None) -> dict[str, str]:
    """Class -> prompt label: ImageNet's names, the label file's, or the class name's words."""
    names = imagenet_labels() if spec.class_names == "imagenet" else {}
    if labels is not None:
        names = {**labels.names, **names}
    return {c: names.get(c, _default_label(c)) for c in classes}


class LazyFiles(Mapping):
    """Entry name -> its ``Blob``, made on lookup from a small key (a member name), so listing
    50,000 entries builds no 50,000 closures; a run looks up only the entries it reads."""

    def __init__(self, keys: dict[str, Any], open_entry: Callable[[Any], Blob | Path]):
        self.keys = keys
        self.open_entry = open_entry

    def __getitem__(self, name: str) -> Blob | Path:
        return self.open_entry(self.keys[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def make_listing(
    root: Path,
    spec: ProtocolSpec,
    entries: dict[str, dict[str, Any]],
    labels: Labels | None,
    origin: dict[str, Any],
    validate_all: bool = False,
    open_entry: Callable[[Any], Blob | Path] | None = None,
) -> DatasetListing:
    """The listing of a container: every entry named, read in place, validated where read.

    ``entries`` maps class -> entry name -> its source, or the key ``open_entry`` opens."""
    keys = {name: key for cls in entries.values() for name, key in cls.items()}
    files = keys if open_entry is None else LazyFiles(keys, open_entry)
    origin = {"label_source": labels.source if labels else "paths (class folders)", **origin}
    return DatasetListing(
        root=root,
        layout=spec.layout,
        classes={c: tuple(sorted(e)) for c, e in entries.items()},
        labels=human_labels(entries, spec, labels),
        files=files,
        validate_all=validate_all,
        origin=origin,
    )
