"""WebDataset shards (``shard-{0000..0063}.tar`` or a folder of ``*.tar``): each sample is the
members sharing a key (``KEY.jpg`` + ``KEY.cls``, optionally ``KEY.json``), read in place
through each shard's cached index. The class is ``.cls`` (an integer, ImageNet's sorted-wnid
order for ImageNet protocols) or the json's ``label``/``wnid``; the entry's file name is the
json's ``filename`` when present (timm's shards keep ImageNet's), else ``KEY.<ext>``.

What each sample's small members say (the ``.cls`` text, the json's label and file name) is
cached per shard version in ``<cache>/webdataset/``, so a listing after the first reads no member
(a training set's 1.28 million samples are 2.5 million small reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varbench.core.files import atomic_write_json
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
_META_FORMAT = 1
_JSON_FIELDS = ("wnid", "label", "cls", "filename")  # what a listing reads from a sample's json


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


def _sample_meta(index: TarIndex, fields: dict[str, str]) -> dict[str, Any]:
    """What a sample's small members say: ``cls`` (the .cls text), ``json`` (its label and file
    name fields), or ``bad_json`` when the json does not parse."""
    out: dict[str, Any] = {}
    if "cls" in fields:
        out["cls"] = _read_small(index, fields["cls"]).decode("utf-8", "replace").strip()
    if "json" in fields:
        try:
            meta = json.loads(_read_small(index, fields["json"]))
        except ValueError:
            return {**out, "bad_json": True}
        out["json"] = (
            {k: meta[k] for k in _JSON_FIELDS if k in meta} if isinstance(meta, dict) else {}
        )
    return out


def _shard_meta(
    index: TarIndex, samples: dict[str, dict[str, str]], cache_dir: Path | None
) -> dict[str, dict[str, Any]]:
    """Every sample's ``_sample_meta``, from the cache when the shard is unchanged."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "webdataset" / f"{index.fingerprint[:40]}.json"
        try:
            data = json.loads(path.read_text())
            if data.get("format") == _META_FORMAT and set(data["samples"]) == set(samples):
                return data["samples"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # absent or damaged: read again below
    metas = {key: _sample_meta(index, fields) for key, fields in samples.items()}
    if path is not None:
        atomic_write_json(
            path, {"format": _META_FORMAT, "shard": str(index.path), "samples": metas}
        )
    return metas


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
            metas = _shard_meta(index, samples, cache_dir)
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
                sample = metas[key]
                if sample.get("bad_json"):
                    problems.append(f"{where}.json is not JSON; {_FIX}")
                    continue
                meta = sample.get("json", {})
                cls = _class_of(sample.get("cls"), meta, wnids, where, problems)
                if cls is None:
                    continue
                fname = meta.get("filename")
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


def _class_of(
    cls_text: str | None, meta: dict, wnids, where: str, problems: list[str]
) -> str | None:
    """The sample's class: ``.cls`` (integer), else the json's ``wnid``/``label``."""
    raw: Any = cls_text
    if raw is None:
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
