"""Dataset containers read in place: one module per container, one interface (``base.Layout``).

``--data`` may be a class-folder tree, a flat folder or tar with a label file (ImageNet devkit,
Kaggle CSV), parquet shards, WebDataset tar shards, a ``.tar.gz``, or LSUN's LMDB; ``detect``
picks the layout and ``open_listing`` lists classes and entries without extracting anything.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from varbench.errors import DatasetError
from varbench.plan.datasets import DatasetListing, list_dataset
from varbench.plan.layouts.base import DataSource, Layout, as_source, is_pattern, usage_unknown
from varbench.plan.layouts.flat import FLAT
from varbench.plan.layouts.parquet import PARQUET
from varbench.plan.layouts.tar import TAR
from varbench.plan.layouts.targz import TARGZ
from varbench.plan.layouts.webdataset import WEBDATASET
from varbench.plan.protocol import ProtocolSpec


def _folder_detect(source: DataSource) -> bool:
    return not is_pattern(source.data) and source.path.is_dir()


def _folder_listing(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    try:
        listing = list_dataset(source.path, spec.layout, spec.class_names)
    except DatasetError as exc:  # a folder that holds an archive, not the images: say which
        archives = sorted(
            p.name
            for p in source.path.iterdir()
            if p.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".parquet"))
        )
        if not archives:
            raise
        hint = (
            f"{source.path} holds {', '.join(archives[:3])}: point --data at the archive itself "
            "(e.g. --data " + str(source.path / archives[0]) + ")"
        )
        raise DatasetError(exc.root, [*exc.problems, hint]) from None
    origin = {"container": "class folders", "path": str(listing.root), "label_source": "paths"}
    return replace(listing, origin=origin)


FOLDERS = Layout(
    name="class folders",
    expects="a folder tree <data>/<class>/<image> (SUN397: <data>/SUN397/<letter>/<category>/<image>)",
    detect=_folder_detect,
    listing=_folder_listing,
)

# Detection order: the most specific first; class folders last (any folder is one).
LAYOUTS: tuple[Layout, ...] = (PARQUET, TARGZ, WEBDATASET, TAR, FLAT, FOLDERS)


def detect(source: DataSource) -> Layout:
    """The layout ``--data`` is, or a usage error listing every layout and what it expects."""
    if not is_pattern(source.data) and not source.path.exists():
        raise DatasetError(source.data, [f"missing: --data {source.data} does not exist"])
    for layout in LAYOUTS:
        if layout.detect(source):
            return layout
    raise usage_unknown(source.data, list(LAYOUTS))


def open_listing(data, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """List ``--data`` (a path, pattern or ``DataSource``) in place, whatever its container."""
    source = as_source(data)
    listing = detect(source).listing(source, spec, Path(cache_dir))
    return replace(listing, origin={**listing.origin, **{"given": source.describe()}})


__all__ = ["DataSource", "LAYOUTS", "Layout", "detect", "open_listing"]
