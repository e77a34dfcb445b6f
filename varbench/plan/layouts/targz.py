"""A gzip-compressed tar (``SUN397.tar.gz``): not seekable, so read in ONE streaming pass that
keeps only the entries a run can read (per class the best-ranked ``2 * n_per_class``: the
references and as many held out) in the cache, as LSUN's LMDB is read.

The listing holds those entries, so references and conditioning images are the ones a
class-folder tree gives, while the held-out list (oracle, memorisation, C_T) is its first
``n_per_class`` instead of every other image: the manifest equals the tree's only for classes
of at most ``2 * n_per_class`` images. Each class's count and name hash cover every member, so a
changed archive is still drift. The pass costs a full decompression (SUN397: about 37 GB, read
again only when the archive, seed or n_per_class change); ``gunzip`` once and pass the ``.tar``
to read everything in place with the same manifest as the tree.
"""

from __future__ import annotations

import heapq
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

from varbench.core.files import atomic_write_json, keep_bytes
from varbench.core.hashing import sha256_json
from varbench.core.progress import progress_bar
from varbench.errors import DatasetError
from varbench.plan.datasets import ClassSource, DatasetListing
from varbench.plan.layouts.base import DataSource, Layout, entry_rel, is_image_name, is_pattern
from varbench.plan.layouts.common import labels_for, make_listing
from varbench.plan.layouts.members import _path_class, _stem
from varbench.plan.layouts.tarindex import fingerprint
from varbench.plan.manifest import _rank
from varbench.plan.protocol import ProtocolSpec

FORMAT = 1
_FIX = "fix: download the archive again, or gunzip it and pass the .tar (read in place)"


def _detect(source: DataSource) -> bool:
    p = source.path
    return (
        not is_pattern(source.data) and p.is_file() and p.name.lower().endswith((".tar.gz", ".tgz"))
    )


def _class(member: str, spec: ProtocolSpec, labels) -> str | None:
    if labels is not None:
        return labels.classes.get(_stem(member))
    if spec.layout == "sun397":
        return _path_class(member, "sun397", "")
    parts = member.split("/")
    return parts[-2] if len(parts) >= 2 else None


def _stream(path: Path, spec: ProtocolSpec, labels, folder: Path) -> dict:
    """One pass: every image member's entry name by class; the best-ranked 2n stored."""
    keep = 2 * spec.n_per_class
    names: dict[str, dict[str, str]] = {}
    best: dict[str, list] = {}  # class -> heap of (-rank, name, file): the 2n smallest ranks
    loose: list[str] = []
    try:
        with (
            open(path, "rb") as raw,
            tarfile.open(fileobj=raw, mode="r|gz") as tf,
            progress_bar(f"reading {path.name} (one pass)", path.stat().st_size) as advance,
        ):
            done = 0
            for info in tf:
                tf.members.clear()
                if not info.isfile() or not is_image_name(info.name):
                    continue
                cls = _class(info.name, spec, labels)
                if cls is None:
                    loose.append(info.name)
                    continue
                name = entry_rel(cls, info.name, spec.layout)
                if name in names.setdefault(cls, {}):
                    raise DatasetError(str(path), [f"{path}: entry {name!r} appears twice; {_FIX}"])
                names[cls][name] = info.name
                rank = int(_rank(spec.seed, "reference", cls, name), 16)
                heap = best.setdefault(cls, [])
                if len(heap) < keep or rank < -heap[0][0]:
                    data = tf.extractfile(info).read()
                    ext = os.path.splitext(info.name)[1]
                    file = keep_bytes(folder, data, ext, sync=False)  # a cache: see lsun
                    item = (-rank, name, str(file))
                    if len(heap) < keep:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heapreplace(heap, item)
                pos = raw.tell()
                advance(max(0, pos - done))
                done = max(done, pos)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DatasetError(str(path), [f"{path} is truncated or corrupt ({exc}); {_FIX}"]) from None
    if loose:
        raise DatasetError(str(path), [
            f"{len(loose)} image(s) of {path} have no class (e.g. {loose[0]!r}); expected "
            + ("SUN397/<letter>/<category>/<image>" if spec.layout == "sun397" else "<class>/<image>")
            + " or a label file (--labels)"
        ])  # fmt: skip
    extracted = {name: file for heap in best.values() for _r, name, file in heap}
    return {"format": FORMAT, "names": names, "extracted": extracted}


def list_targz(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """The pass's result from the cache when the archive, seed and n_per_class are unchanged."""
    path = source.path.resolve()
    labels = labels_for(source, spec, path.parent, cache_dir)
    fp = fingerprint(path)
    folder = Path(cache_dir) / "targz" / fp[:32]
    key = sha256_json(
        [fp, spec.layout, spec.seed, spec.n_per_class, labels.source if labels else ""]
    )
    index_file = folder / f"listing-{key[:24]}.json"
    data = None
    if index_file.is_file():
        try:
            data = json.loads(index_file.read_text())
            if data.get("format") != FORMAT or not all(
                Path(f).is_file() for f in data["extracted"].values()
            ):
                data = None
        except (OSError, ValueError, KeyError):
            data = None
    if data is None:
        data = _stream(path, spec, labels, folder)
        atomic_write_json(index_file, data)
    extracted = data["extracted"]
    entries = {
        cls: {n: Path(extracted[n]) for n in e if n in extracted}
        for cls, e in data["names"].items()
    }
    sources = {
        cls: ClassSource(n_files=len(e), listing_sha256=sha256_json(sorted(e)))
        for cls, e in data["names"].items()
    }
    origin = {
        "container": "tar.gz",
        "path": str(path),
        "fingerprint": fp,
        "extracted": len(extracted),
        "cache": str(folder),
    }
    return replace(make_listing(path, spec, entries, labels, origin), sources=sources)


TARGZ = Layout(
    name="tar.gz",
    expects="a .tar.gz/.tgz (SUN397.tar.gz, or a class-folder tree), read in one streaming pass "
    "that keeps only the entries a run reads; gunzip it to read in place instead",
    detect=_detect,
    listing=list_targz,
)
