"""Manifests: the exact reference and conditioning files per class, hashed.

Selection is a pure function of (protocol seed, class name, relative path): files are ranked by
sha256, so it never depends on numpy's RNG, on listing order, or on which other classes exist.
References are nested across n_per_class and conditioning images across k for the same seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from varbench.core.files import atomic_write_json
from varbench.core.hashing import sha256_json, sha256_text
from varbench.errors import DatasetError, ManifestMismatchError
from varbench.plan.datasets import DatasetListing, ValidationReport, validate_files
from varbench.plan.protocol import ProtocolSpec

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ManifestClass:
    """One class's selection."""

    name: str
    label: str
    index: int
    n_files: int
    listing_sha256: str  # hash of the class's sorted file list (selection depends on it)
    references: tuple[str, ...]
    conditioning: tuple[str, ...]
    heldout: tuple[str, ...]  # images of the class outside the references (oracle, reference curve)


@dataclass(frozen=True)
class Manifest:
    """The exact files a run uses, with their pixel hashes; ``sha256`` identifies it."""

    protocol: dict[str, Any]
    classes: tuple[ManifestClass, ...]
    pixel_sha256: dict[str, str]  # relative path -> pixel hash, for references and conditioning
    sha256: str
    root: str = ""  # informational only: not part of the hash

    @property
    def references(self) -> list[tuple[ManifestClass, str]]:
        """All (class, reference path) pairs in manifest order."""
        return [(c, r) for c in self.classes for r in c.references]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"format": MANIFEST_FORMAT, **asdict(self)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Manifest:
        """Inverse of ``to_json``."""
        classes = tuple(
            ManifestClass(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
            for c in data["classes"]
        )
        return Manifest(
            protocol=data["protocol"],
            classes=classes,
            pixel_sha256=data["pixel_sha256"],
            sha256=data["sha256"],
            root=data.get("root", ""),
        )


def _shallow(c: ManifestClass) -> dict[str, Any]:
    """``asdict`` without its deep copy of every name tuple (same JSON, a tenth of the time)."""
    return {f.name: getattr(c, f.name) for f in fields(c)}


def _rank(seed: int, role: str, class_name: str, rel: str) -> str:
    return sha256_text(f"{seed}\x1f{role}\x1f{class_name}\x1f{rel}")


def _ranked(files: tuple[str, ...], class_name: str, seed: int) -> list[str]:
    """A class's files in selection order: references first, then the held-out order."""
    return sorted(files, key=lambda f: _rank(seed, "reference", class_name, f))


def select(
    files: tuple[str, ...], class_name: str, n: int, k: int, seed: int, ranked: list | None = None
) -> tuple:
    """Pick ``n`` references and ``k`` conditioning images among them; rest are held out.

    ``ranked``: ``files`` already in ``_ranked`` order (a container's listing ranked them)."""
    ranked = ranked if ranked is not None else _ranked(files, class_name, seed)
    refs = ranked[:n]
    cond = sorted(refs, key=lambda f: _rank(seed, "conditioning", class_name, f))[:k]
    return tuple(refs), tuple(cond), tuple(ranked[n:])


def build_manifest(
    spec: ProtocolSpec, listing: DatasetListing, cache_dir: Path | None
) -> tuple[Manifest, ValidationReport]:
    """Validate the whole dataset, then select; every problem is reported in one ``DatasetError``."""
    ranks: dict[str, list[str]] = {}
    if listing.validate_all:
        todo = [f for files in listing.classes.values() for f in files]
    else:  # a container: decode what a run reads (references, then as many held out), never
        # every member of the archive
        ranks = {c: _ranked(fs, c, spec.seed) for c, fs in listing.classes.items()}
        todo = [f for ranked in ranks.values() for f in ranked[: 2 * spec.n_per_class]]
    report = validate_files(listing, todo, cache_dir)
    problems = list(report.problems)
    if listing.validate_all:
        valid = {
            c: tuple(f for f in fs if f in report.pixel_hashes) for c, fs in listing.classes.items()
        }
    else:  # selection over every entry's name; any entry it reads that fails is an error above
        valid = dict(listing.classes)
    if spec.n_classes is not None and len(valid) != spec.n_classes:
        problems.append(
            f"expected {spec.n_classes} classes for protocol {spec.name!r}, found {len(valid)} "
            f"in {listing.root} (use protocol folder_kshot for other datasets)"
        )
    noun = "readable image(s)" if listing.validate_all else "image(s)"
    short = [
        f"class {c!r} has {len(fs)} {noun}, needs n_per_class={spec.n_per_class}"
        for c, fs in sorted(valid.items())
        if len(fs) < spec.n_per_class
    ]
    problems += short
    if problems:
        raise DatasetError(str(listing.root), problems)
    classes = []
    hashes: dict[str, str] = {}
    for index, name in enumerate(sorted(valid)):
        files = valid[name]
        refs, cond, heldout = select(
            files, name, spec.n_per_class, spec.k, spec.seed, ranks.get(name)
        )
        source = listing.sources.get(name)  # an LMDB: count and hash all its keys, not the extract
        classes.append(
            ManifestClass(
                name=name,
                label=listing.labels.get(name, name),
                index=index,
                n_files=source.n_files if source else len(files),
                listing_sha256=source.listing_sha256 if source else sha256_json(list(files)),
                references=refs,
                conditioning=cond,
                heldout=heldout,
            )
        )
        for f in refs:
            hashes[f] = report.pixel_hashes[f]
    protocol = spec.identity()
    body = {"protocol": protocol, "classes": [_shallow(c) for c in classes], "pixel_sha256": hashes}
    manifest = Manifest(
        protocol=protocol,
        classes=tuple(classes),
        pixel_sha256=hashes,
        sha256=sha256_json(body),
        root=str(listing.root),
    )
    return manifest, report


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write the manifest atomically."""
    atomic_write_json(path, manifest.to_json())


def read_manifest(path: Path) -> Manifest:
    """Read a manifest written by ``write_manifest``."""
    return Manifest.from_json(json.loads(Path(path).read_text()))


def check_same(stored: Manifest, fresh: Manifest, where: Path) -> None:
    """Raise a clear error when the dataset drifted from the run's stored manifest."""
    if stored.sha256 == fresh.sha256:
        return
    diffs = []
    old = {c.name: c for c in stored.classes}
    new = {c.name: c for c in fresh.classes}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            diffs.append(f"class {name!r} is gone")
        elif name not in old:
            diffs.append(f"class {name!r} is new")
        elif old[name].listing_sha256 != new[name].listing_sha256:
            diffs.append(
                f"class {name!r}: files added or removed ({old[name].n_files} -> {new[name].n_files})"
            )
    changed = [f for f, h in stored.pixel_sha256.items() if fresh.pixel_sha256.get(f, h) != h]
    diffs += [f"image content changed: {f}" for f in changed[:10]]
    raise ManifestMismatchError(
        f"the dataset no longer matches the manifest of this run ({where}): "
        + "; ".join(diffs[:20] or ["protocol selection changed"])
        + ". Restore the dataset, or start a new run with a different --out."
    )
