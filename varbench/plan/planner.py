"""Planning room: protocol + dataset -> manifest -> sample slots; shared by run, import and export.

Everything here is a pure function of the protocol, the dataset and the seed, so `varbench
export`, `varbench run` and an import of samples made elsewhere plan exactly the same slots.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from varbench.core.hashing import sha256_json
from varbench.errors import UsageError
from varbench.plan.datasets import DatasetListing, list_dataset
from varbench.plan.demo_data import demo_root
from varbench.plan.layouts import DataSource, open_listing
from varbench.plan.layouts.base import as_source
from varbench.plan.manifest import Manifest, build_manifest, check_same, read_manifest
from varbench.plan.protocol import ProtocolSpec
from varbench.plan.slots import SampleSlot, generation_groups, sample_slots

log = logging.getLogger(__name__)
DataArg = Path | str | DataSource | None  # --data as typed, or with --labels and data_* options


def load_dataset(spec: ProtocolSpec, data: DataArg, cache_dir: Path) -> DatasetListing:
    """The demo's generated folder, or the user's ``--data`` in whatever container it is."""
    if spec.layout == "demo":
        if data is not None:
            log.warning(
                "protocol %s uses the embedded demo images; --data %s is ignored",
                spec.name,
                as_source(data).data,
            )
        listing = list_dataset(demo_root(cache_dir), "imagefolder")
        return replace(listing, origin={"container": "embedded demo", "path": str(listing.root)})
    if data is None:
        raise UsageError(
            f"protocol {spec.name!r} needs --data PATH ({spec.layout} layout); see `varbench list protocols`"
        )
    if spec.layout == "lsun":
        from varbench.plan.lsun import list_lsun

        listing = list_lsun(as_source(data).path, spec, cache_dir)
        return replace(listing, origin={"container": "lsun", "path": str(listing.root)})
    return open_listing(data, spec, cache_dir)


FOLDER_CONTAINERS = ("class folders", "embedded demo")


def reads_container(info: Mapping[str, Any]) -> bool:
    """Whether a run's images come from a container that ``listing_of_run`` lists again (its
    run.json records what was given), rather than from files under its ``data_root``."""
    origin = info.get("data_origin") or {}
    return bool(origin.get("given")) and origin.get("container") not in (None, *FOLDER_CONTAINERS)


def listing_of_run(
    info: Mapping[str, Any], spec: ProtocolSpec, root: str, cache_dir: Path
) -> DatasetListing:
    """The dataset of a finished run, to read its images again: files under ``root``, or the
    container run.json's ``data_origin`` names, listed again (indexes are cached)."""
    if not reads_container(info):
        return DatasetListing(root=Path(root), layout=spec.layout, classes={}, labels={})
    given = info["data_origin"]["given"]
    source = DataSource.with_options(given["data"], given.get("labels"), given)
    return load_dataset(spec, source, cache_dir)


@dataclass(frozen=True)
class RunPlan:
    """The exact files and sample slots of one protocol on one dataset."""

    spec: ProtocolSpec
    listing: DatasetListing
    manifest: Manifest
    slots: tuple[SampleSlot, ...]

    def groups(self, size: int, by_condition: bool) -> list[tuple[SampleSlot, ...]]:
        """Generation groups of at most ``size`` consecutive slots (see ``generation_groups``)."""
        return generation_groups(list(self.slots), size, by_condition)

    @property
    def conditioning(self) -> list[tuple[int, str]]:
        """(class index, root-relative file) of every conditioning image, in manifest order."""
        return [(c.index, f) for c in self.manifest.classes for f in c.conditioning]


def make_plan(spec: ProtocolSpec, data: DataArg, cache_dir: Path) -> RunPlan:
    """List and validate the dataset, select the manifest, and lay out every sample slot."""
    listing = load_dataset(spec, data, cache_dir)
    origin = listing.origin
    log.info(
        "dataset: %s %s, %d classes, %d images, labels from %s",
        origin.get("container", listing.layout),
        origin.get("path") or listing.root,
        len(listing.classes),
        sum(len(v) for v in listing.classes.values()),
        origin.get("label_source", "paths"),
    )
    manifest, _ = build_manifest(spec, listing, cache_dir)
    slots = tuple(sample_slots(manifest, spec.samples_per_cond, spec.seed))
    return RunPlan(spec=spec, listing=listing, manifest=manifest, slots=slots)


def run_id(name: str, spec: ProtocolSpec, base_key: Mapping[str, Any], manifest: Manifest) -> str:
    """``<name>-<protocol>-<hash>`` of the run's identity (``base_key``) and manifest hash."""
    digest = sha256_json({**base_key, "manifest": manifest.sha256})[:12]
    return f"{name}-{spec.name}-{digest}"


def check_drift(out: Path, base_key: Mapping[str, Any], manifest: Manifest, root: str) -> None:
    """A changed dataset is an error: look for runs of the same identity on the same data root."""
    key = sha256_json(dict(base_key))
    out = Path(out)
    if not out.is_dir():
        return
    for run_json in sorted(out.glob("*/run.json")):
        try:
            info = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if (
            info.get("base_key") == key
            and info.get("data_root") == root
            and info.get("manifest_sha256") != manifest.sha256
        ):
            stored = read_manifest(run_json.parent / "manifest.json")
            check_same(stored, manifest, run_json.parent)


__all__ = [
    "RunPlan",
    "make_plan",
    "load_dataset",
    "listing_of_run",
    "reads_container",
    "run_id",
    "check_drift",
]
