"""WebDataset shards (``shard-{0000..0063}.tar`` or a folder of ``*.tar``): each sample is the
members sharing a key (``KEY.jpg`` + ``KEY.cls``, optionally ``KEY.json``), read in place
through each shard's cached index. The class is ``.cls`` (an integer, ImageNet's sorted-wnid
order for ImageNet protocols) or the json's ``label``/``wnid``; the entry's file name is the
json's ``filename`` when present (timm's shards keep ImageNet's), else ``KEY.<ext>``."""

from __future__ import annotations

import json
from pathlib import Path

from varbench.core.progress import progress_bar
from varbench.errors import DatasetError
from varbench.plan.datasets import DatasetListing
from varbench.plan.layouts.base import (
    DataSource,
    Layout,
    class_of_label,
    entry_rel,
    expand,
    imagenet_wnids,
    is_image_name,
    is_pattern,
)
from varbench.plan.layouts.common import make_listing
from varbench.plan.layouts.tarindex import TarIndex, tar_index
from varbench.plan.protocol import ProtocolSpec

_FIX = "fix: rebuild the shards with one image and one .cls (or .json label) per key"


def shards_of(source: DataSource) -> list[Path]:
    if is_pattern(source.data):
        return [p for p in expand(source.data) if p.name.lower().endswith(".tar")]
    if source.path.is_dir():
        return sorted(p for p in source.path.glob("*.tar") if p.is_file())
    if source.path.is_file() and source.path.name.lower().endswith(".tar"):
        return [source.path]
    return []


def _detect(source: DataSource) -> bool:
    shards = shards_of(source)
    if not shards or source.labels:
        return False
    if is_pattern(source.data):
        return True
    try:  # a folder of tars: WebDataset when the first shard's members come in key groups
        import tarfile

        with tarfile.open(shards[0], mode="r:") as tf:
            names = [m.name for m, _ in zip(tf, range(8), strict=False)]
    except (OSError, tarfile.TarError):
        return True  # a broken shard: let listing name it
    return any(n.lower().endswith((".cls", ".json")) for n in names)


def _split(member: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``): WebDataset's key ends at the first
    dot of the base name."""
    folder, _, base = member.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def _read_small(index: TarIndex, member: str) -> bytes:
    return index.blob(member).read()


def list_webdataset(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """Index every shard, group members by key, class each sample, name its image entry."""
    shards = shards_of(source)
    missing = [p for p in shards if not p.is_file()]
    if not shards or missing:
        raise DatasetError(source.data, [
            f"no WebDataset shards at {source.data}" + (f" (missing {missing[0]})" if missing else "")
            + "; fix: give a brace pattern such as shard-{0000..0063}.tar or the shards' folder"
        ])  # fmt: skip
    wnids = imagenet_wnids() if spec.class_names == "imagenet" else None
    entries: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    indexes: list[TarIndex] = []
    problems: list[str] = []
    with progress_bar("reading WebDataset labels", len(shards)) as advance:
        for shard in shards:
            index = tar_index(shard, cache_dir)
            indexes.append(index)
            samples: dict[str, dict[str, str]] = {}
            for member in index.members:
                key, ext = _split(member)
                samples.setdefault(key, {})[ext] = member
            for key, fields in samples.items():
                where = f"{shard}::{key}"
                if key in owner:
                    problems.append(
                        f"duplicate key {key!r} in {owner[key]} and {shard}; which sample is "
                        f"meant is ambiguous; {_FIX}"
                    )
                    continue
                owner[key] = shard
                image = next((m for e, m in sorted(fields.items()) if is_image_name(m)), None)
                if image is None:
                    problems.append(f"{where}: no image member among {sorted(fields)}; {_FIX}")
                    continue
                meta = {}
                if "json" in fields:
                    try:
                        meta = json.loads(_read_small(index, fields["json"]))
                    except ValueError:
                        problems.append(f"{where}.json is not JSON; {_FIX}")
                        continue
                cls = _class_of(index, fields, meta, wnids, where, problems)
                if cls is None:
                    continue
                fname = meta.get("filename") if isinstance(meta, dict) else None
                name = entry_rel(cls, str(fname or image), spec.layout)
                if name in entries.setdefault(cls, {}):
                    problems.append(f"{where}: entry {name!r} appears twice; {_FIX}")
                    continue
                entries[cls][name] = (len(indexes) - 1, image)
            advance(1)
    if problems:
        raise DatasetError(source.data, problems[:20] + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else []))  # fmt: skip
    origin = {
        "container": "webdataset",
        "shards": [str(p.resolve()) for p in shards],
        "label_source": ".cls / .json per sample",
    }
    return make_listing(
        shards[0].resolve().parent, spec, entries, None, origin,
        open_entry=lambda key: indexes[key[0]].blob(key[1]),
    )  # fmt: skip


def _class_of(index, fields, meta, wnids, where: str, problems: list[str]) -> str | None:
    """The sample's class: ``.cls`` (integer), else the json's ``wnid``/``label``."""
    raw = None
    if "cls" in fields:
        raw = _read_small(index, fields["cls"]).decode("utf-8", "replace").strip()
    elif isinstance(meta, dict):
        raw = meta.get("wnid", meta.get("label", meta.get("cls")))
    if raw is None or raw == "":
        problems.append(f"{where}: no .cls member and no label in .json; {_FIX}")
        return None
    text = str(raw)
    if text.lstrip("-").isdigit():
        try:
            return class_of_label(int(text), wnids, where)
        except DatasetError as exc:
            problems.extend(exc.problems)
            return None
    return text


WEBDATASET = Layout(
    name="webdataset",
    expects="WebDataset tar shards: a brace pattern (shard-{0000..0063}.tar), a glob, or a "
    "folder of *.tar, each sample KEY.jpg|png|webp with KEY.cls (or KEY.json with a label)",
    detect=_detect,
    listing=list_webdataset,
)
