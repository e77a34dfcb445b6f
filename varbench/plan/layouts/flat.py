"""A flat image folder with a label file: Kaggle's ``ILSVRC/Data/CLS-LOC/val`` with
``LOC_val_solution.csv``, or ImageNet's extracted validation images with the devkit."""

from __future__ import annotations

import os
from pathlib import Path

from varbench.errors import DatasetError
from varbench.plan.datasets import DatasetListing
from varbench.plan.layouts.base import DataSource, Layout, is_image_name, is_pattern
from varbench.plan.layouts.common import labels_for, make_listing
from varbench.plan.layouts.labels import find_labels
from varbench.plan.layouts.members import group_members
from varbench.plan.protocol import ProtocolSpec

KAGGLE_IMAGES = Path("ILSVRC/Data/CLS-LOC/val")


def image_folder(data: Path) -> Path:
    """Kaggle's images inside its download root, or the folder itself."""
    return data / KAGGLE_IMAGES if (data / KAGGLE_IMAGES).is_dir() else data


def _has_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(is_image_name(e.name) and e.is_file() for e in it)
    except OSError:
        return False


def _detect(source: DataSource) -> bool:
    if is_pattern(source.data) or not source.path.is_dir():
        return False
    folder = image_folder(source.path)
    return _has_images(folder) and (bool(source.labels) or find_labels(folder) is not None)


def list_flat(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """Every image file directly in the folder, classed by the label file."""
    folder = image_folder(source.path.resolve())
    labels = labels_for(source, spec, folder, cache_dir)
    if labels is None:
        raise DatasetError(str(folder), [
            f"{folder} holds images directly and no label file was found beside it; fix: pass "
            "--labels (ILSVRC2012_devkit_t12.tar.gz, LOC_val_solution.csv, or a CSV file,class)"
        ])  # fmt: skip
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if is_image_name(e.name) and not e.is_dir())
    grouped, _ = group_members(names, spec.layout, labels, str(folder))
    entries = {c: {n: folder / m for n, m in e.items()} for c, e in grouped.items()}
    origin = {"container": "flat folder", "path": str(folder), "members": len(names)}
    return make_listing(
        folder, spec, entries, labels, origin, validate_all=True
    )  # files: as folders


FLAT = Layout(
    name="flat folder + labels",
    expects="a folder of images with a label file beside it or given with --labels (Kaggle's "
    "download root or ILSVRC/Data/CLS-LOC/val with LOC_val_solution.csv; extracted "
    "ILSVRC2012_img_val with the devkit)",
    detect=_detect,
    listing=list_flat,
)
