"""What the member-based layouts share: their label file and the listing they return."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from varbench.core.files import Blob
from varbench.plan.datasets import DatasetListing, _default_label, imagenet_labels
from varbench.plan.layouts.base import DataSource, imagenet_wnids
from varbench.plan.layouts.labels import Labels, find_labels, read_labels
from varbench.plan.protocol import ProtocolSpec


def labels_for(source: DataSource, spec: ProtocolSpec, beside: Path) -> Labels | None:
    """``--labels``, or a label file found beside the images (``None``: classes from paths)."""
    wnids = imagenet_wnids() if spec.class_names == "imagenet" else None
    if source.labels:
        return read_labels(Path(source.labels).expanduser(), wnids)
    found = find_labels(beside)
    return read_labels(found, wnids) if found is not None else None


def human_labels(classes, spec: ProtocolSpec, labels: Labels | None) -> dict[str, str]:
    """Class -> prompt label: ImageNet's names, the label file's, or the class name's words."""
    names = imagenet_labels() if spec.class_names == "imagenet" else {}
    if labels is not None:
        names = {**labels.names, **names}
    return {c: names.get(c, _default_label(c)) for c in classes}


def make_listing(
    root: Path,
    spec: ProtocolSpec,
    entries: dict[str, dict[str, Blob | Path]],
    labels: Labels | None,
    origin: dict[str, Any],
    validate_all: bool = False,
) -> DatasetListing:
    """The listing of a container: every entry named, read in place, validated where read."""
    files = {name: src for cls in entries.values() for name, src in cls.items()}
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
