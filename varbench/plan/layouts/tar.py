"""One uncompressed tar (``ILSVRC2012_img_val.tar``, or a tarred class-folder tree), read in
place: indexed once, each entry read with one ``pread``; labels from the devkit or a CSV."""

from __future__ import annotations

from pathlib import Path

from varbench.plan.datasets import DatasetListing
from varbench.plan.layouts.base import DataSource, Layout, is_pattern
from varbench.plan.layouts.common import labels_for, make_listing
from varbench.plan.layouts.members import group_members
from varbench.plan.layouts.tarindex import tar_index
from varbench.plan.protocol import ProtocolSpec


def _detect(source: DataSource) -> bool:
    p = source.path
    return not is_pattern(source.data) and p.is_file() and p.name.lower().endswith(".tar")


def list_tar(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """Index the tar (cached), class its image members, name each entry as a folder tree would."""
    path = source.path.resolve()
    index = tar_index(path, cache_dir)
    labels = labels_for(source, spec, path.parent, cache_dir)
    grouped, ignored = group_members(index.members, spec.layout, labels, str(path))
    origin = {
        "container": "tar",
        "path": str(path),
        "fingerprint": index.fingerprint,
        "members": len(index.members),
        "ignored_non_images": len(ignored),
    }
    return make_listing(path, spec, grouped, labels, origin, open_entry=index.blob)


TAR = Layout(
    name="tar",
    expects="one uncompressed .tar (e.g. ILSVRC2012_img_val.tar with --labels "
    "ILSVRC2012_devkit_t12.tar.gz beside it or given, or a tarred <class>/<image> tree)",
    detect=_detect,
    listing=list_tar,
)
