"""Parquet shards (Hugging Face ``datasets`` exports and others), read in place.

Listing reads the label column and the image struct's ``path`` child only, never an image's
bytes: a Parquet column chunk is read on its own, so the names of 50,000 rows cost a few MB of
a 5.5 GB validation split. Entries are named as a class-folder tree names the same images
(``n01440764/ILSVRC2012_val_00000293.JPEG``), so a protocol selects the same images from either.

Bytes live in row groups, read by ``rowgroups``: each group holding a row a run reads is read
once, and those rows (the top ``2 x n_per_class`` of each class in selection order: references,
then as many held out) are kept in the cache. With rows in random class order, as Hugging Face's
ImageNet validation split has them, that is nearly every group.

Rows without a file name (a binary column, or an Image struct whose ``path`` is empty) are named
``<class>/<shard stem>-<row:08d><ext>``: such names cannot match a folder tree of the same
images, so selections from the two differ. The extension comes from the column's name when it
is one (WebDataset-style ``jpg``/``png``/``webp`` columns), otherwise from the bytes of the
shard's first row (one row group per shard read at listing); decoding sniffs every entry's own
bytes either way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    is_pattern,
)
from varbench.plan.layouts.common import LazyFiles, human_labels
from varbench.plan.layouts.rowgroups import ROW_BITS, SHARD_FIX, Shards, child
from varbench.plan.lsun import sniff
from varbench.plan.manifest import _ranked
from varbench.plan.protocol import ProtocolSpec

SUFFIX = ".parquet"
LABEL_COLUMNS = ("label", "cls", "class", "wnid")  # auto-detected, in this order
KEY_COLUMNS = ("__key__",)  # WebDataset-style sample keys: the file name without extension
_EXT_COLUMNS = {"jpg": ".jpg", "jpeg": ".jpeg", "png": ".png", "webp": ".webp"}
_SPLIT = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")  # HF shard names: validation-00003-of-00014


def shards_of(data: str) -> list[Path]:
    """The ``.parquet`` files ``--data`` names: one file, a pattern's matches, or a folder's
    ``*.parquet`` and ``*/*.parquet`` (Hugging Face keeps them in ``data/``); sorted by path."""
    if is_pattern(data):
        return expand(data)
    path = Path(data).expanduser()
    if path.is_dir():
        found = list(path.glob(f"*{SUFFIX}")) + list(path.glob(f"*/*{SUFFIX}"))
        return sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    return [path]


def detect(source: DataSource) -> bool:
    """A ``.parquet`` file, a folder holding some (or its sub-folders), or a pattern of them."""
    try:
        shards = shards_of(source.data)
    except OSError:
        return False
    return bool(shards) and all(p.suffix.lower() == SUFFIX and p.is_file() for p in shards)


def _one_split(data: str, shards: list[Path]) -> None:
    """A folder holding several splits (``train-*``, ``validation-*``) is ambiguous: refuse it."""
    splits = {m["split"]: p.parent for p in shards if (m := _SPLIT.match(p.stem))}
    if len(splits) > 1 and not is_pattern(data) and Path(data).expanduser().is_dir():
        split, folder = sorted(splits.items())[-1]
        raise DatasetError(data, [
            f"{data} holds the shards of {len(splits)} splits ({', '.join(sorted(splits))}); which "
            f"one is meant is ambiguous; fix: name one split's shards, e.g. --data "
            f"'{folder}/{split}-*.parquet'"
        ])  # fmt: skip


def _open(path: Path):
    """A ``ParquetFile``, or a ``DatasetError`` naming the file for anything else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise DatasetError(str(path), [f"missing file {path}"]) from None
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(str(path), [
            f"{path} is not a readable parquet file (its footer is missing or damaged: {exc}); "
            f"{SHARD_FIX}"
        ]) from None  # fmt: skip


@dataclass(frozen=True)
class Columns:
    """Where a shard keeps its images and labels."""

    image: str  # top-level column
    leaf: str  # the column chunk holding the bytes: "image.bytes" (HF Image) or the column
    path: str | None  # the column chunk holding file names: "image.path" (HF Image) or __key__
    label: str
    label_is_int: bool


def _kind(t) -> str:
    """``image`` (Hugging Face's Image: a struct of binary ``bytes`` and string ``path``),
    ``binary``, ``int``, ``string`` or ``""`` for a column's Arrow type."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_struct(t):
        kids = {t.field(i).name: _kind(t.field(i).type) for i in range(t.num_fields)}
        return "image" if kids.get("bytes") == "binary" and kids.get("path") == "string" else ""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_integer(t):
        return "int"
    return "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else ""


def _columns(schema, path: Path, source: DataSource) -> Columns:
    """The image and label columns: ``source``'s choice, else detected; a clear error if neither."""
    kinds = {f.name: _kind(f.type) for f in schema}
    have = ", ".join(f"{f.name} ({f.type})" for f in schema)
    problems = []
    image, label = source.image_column, source.label_column
    for name, option, want in ((image, "image", ("image", "binary")), (label, "label", ("int", "string"))):  # fmt: skip
        if name is not None and name not in kinds:
            problems.append(f"{path} has no column {name!r} (data_{option}_column); it has: {have}")
        elif name is not None and kinds[name] not in want:
            problems.append(
                f"column {name!r} of {path} is {schema.field(name).type}, not {option}s (a "
                f"{' or '.join(want)} column); fix: --set data_{option}_column=<column>"
            )
    if image is None:
        image = next((n for n, k in kinds.items() if k == "image"), None)
        image = image or next((n for n, k in kinds.items() if k == "binary"), None)
        if image is None:
            problems.append(
                f"{path} has no image column (a struct of bytes and path, as Hugging Face's Image "
                f"feature, or a binary column); it has: {have}; fix: --set data_image_column=<column>"
            )
    if label is None:
        label = next((n for n in LABEL_COLUMNS if kinds.get(n) in ("int", "string")), None)
        if label is None:
            problems.append(
                f"{path} has no label column (an integer or string column named "
                f"{', '.join(LABEL_COLUMNS)}); it has: {have}; fix: --set data_label_column=<column>"
            )
    if problems:
        raise DatasetError(str(path), problems)
    if kinds[image] == "image":
        leaf, name_col = f"{image}.bytes", f"{image}.path"
    else:
        leaf = image
        name_col = next((k for k in KEY_COLUMNS if kinds.get(k) == "string"), None)
    return Columns(image, leaf, name_col, label, kinds[label] == "int")


def class_label_names(schema, label: str) -> list[str] | None:
    """The ClassLabel names Hugging Face records for ``label`` in the schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][label]
        names = feature.get("names") if isinstance(feature, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def sun397_class(name: str) -> str:
    """SUN397's folder form ``a/abbey`` of a class name (``/a/abbey``, ``abbey``, ``a/abbey``)."""
    name = name.strip().lstrip("/")
    first = name.split("/", 1)[0]
    return name if len(first) == 1 else f"{name[:1].lower()}/{name}"


class _Classes:
    """Class names of labels, resolved once per distinct label value."""

    def __init__(self, spec: ProtocolSpec, names: list[str] | None, is_int: bool):
        self.imagenet = spec.class_names == "imagenet"
        self.sun397 = spec.layout == "sun397"
        self.layout = spec.layout
        wnids = imagenet_wnids() if self.imagenet else None
        self.wnid_set = set(wnids or ())
        self.names = wnids if self.imagenet else names
        self.is_int = is_int
        self.known: dict[Any, str] = {}

    def of(self, label: Any, path: Path, row: int) -> str:
        cls = self.known.get(label)
        if cls is not None:
            return cls
        where = f"{path} row {row}"
        if label is None:
            raise DatasetError(str(path), [
                f"row {row} of {path} has no label (null); fix: drop unlabelled rows (a test "
                "split has none) or choose another column with --set data_label_column=<column>"
            ])  # fmt: skip
        if self.is_int:
            try:
                cls = class_of_label(int(label), self.names, where)
            except DatasetError as exc:  # name the shard as the dataset, the row in the line
                raise DatasetError(str(path), [f"{where}: {p}" for p in exc.problems]) from None
        else:
            cls = str(label)
            if self.imagenet and cls not in self.wnid_set:
                raise DatasetError(str(path), [
                    f"row {row} of {path}: label {cls!r} is not an ImageNet WordNet id (such as "
                    "n01440764); fix: choose the wnid column with --set data_label_column=<column>"
                ])  # fmt: skip
        if self.sun397:
            cls = sun397_class(cls)
        self.known[label] = cls
        return cls


def listing(source: DataSource, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """List every row by class from the label and file-name columns; bytes are read on demand."""
    paths = shards_of(source.data)
    if not paths:
        raise DatasetError(source.data, [f"--data {source.data} matches no .parquet file"])
    _one_split(source.data, paths)
    opened = [_open(p) for p in paths]
    try:
        return _listing(source, spec, cache_dir, paths, opened)
    finally:
        for pf in opened:
            pf.close()


def _listing(
    source: DataSource, spec: ProtocolSpec, cache_dir: Path, paths: list[Path], opened: list
) -> DatasetListing:
    cols = _columns(opened[0].schema_arrow, paths[0], source)
    names = class_label_names(opened[0].schema_arrow, cols.label) if cols.label_is_int else None
    label_source = f"column {cols.label}" + (
        " (ImageNet sorted WordNet ids)" if spec.class_names == "imagenet"
        else " (ClassLabel names)" if names is not None else ""
    )  # fmt: skip
    classes_of = _Classes(spec, names, cols.label_is_int)
    try:
        shards = Shards(paths, cols.leaf, cache_dir)
    except OSError as exc:
        raise DatasetError(str(exc.filename or paths[0]), [f"cannot read: {exc}"]) from None
    by_class: dict[str, list[str]] = {}
    codes: dict[str, int] = {}
    total = sum(pf.metadata.num_rows for pf in opened)
    with progress_bar("listing parquet shards", total) as advance:
        for s, (path, pf) in enumerate(zip(paths, opened, strict=True)):
            if (
                pf.schema_arrow != opened[0].schema_arrow
                and _columns(pf.schema_arrow, path, source) != cols
            ):
                raise DatasetError(str(path), [
                    f"{path} keeps its images or labels in other columns than {paths[0]}; fix: "
                    "point --data at shards of one dataset and split"
                ])  # fmt: skip
            shards.add_shard(pf.metadata)
            _list_shard(shards, s, pf, cols, classes_of, by_class, codes)
            advance(pf.metadata.num_rows)
    classes = {c: tuple(sorted(v)) for c, v in by_class.items()}
    for c, entries in classes.items():
        shards.want([codes[e] for e in _ranked(entries, c, spec.seed)[: 2 * spec.n_per_class]])
    return DatasetListing(
        root=paths[0].resolve() if len(paths) == 1 else paths[0].resolve().parent,
        layout=spec.layout,
        classes=classes,
        labels=human_labels(classes, spec, None),
        files=LazyFiles(codes, shards.blob),
        validate_all=False,
        origin={
            "container": "parquet",
            "shards": [str(p) for p in paths],
            "n_rows": total,
            "image_column": cols.image,
            "label_column": cols.label,
            "label_source": label_source,
        },
    )


def _list_shard(
    shards: Shards,
    s: int,
    pf,
    cols: Columns,
    classes_of: _Classes,
    by_class: dict[str, list[str]],
    codes: dict[str, int],
) -> None:
    """Name every row of shard ``s`` (label and file-name columns only) and file it by class."""
    import pyarrow as pa

    path = shards.paths[s]
    read = [cols.label] + ([cols.path] if cols.path else [])
    try:
        table = pf.read(columns=read)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(str(path), [f"cannot read {path} ({exc}); {SHARD_FIX}"]) from None
    labels = table.column(cols.label).to_pylist()
    if cols.path is None:
        files: list[str | None] = [None] * len(labels)
    elif cols.path.startswith(cols.image + "."):  # the Image struct read with its path only
        files = child(table.column(cols.image).combine_chunks(), cols.path).to_pylist()
    else:  # a sample key column: the name without its extension
        ext = _extension(shards, s, cols)
        files = [k + ext if k else None for k in table.column(cols.path).to_pylist()]
    ext = None
    for row, (label, file) in enumerate(zip(labels, files, strict=True)):
        cls = classes_of.of(label, path, row)
        if file:
            name = entry_rel(cls, file, classes_of.layout)
        else:
            ext = ext or _extension(shards, s, cols)
            name = entry_rel(cls, f"{path.stem}-{row:08d}{ext}", classes_of.layout)
        first = codes.get(name)
        if first is not None:
            other = f"{shards.paths[first >> ROW_BITS]} row {first & ((1 << ROW_BITS) - 1)}"
            raise DatasetError(str(path), [
                f"entry {name!r} appears twice ({other} and {path} row {row}); which image is "
                "meant is ambiguous; fix: remove the duplicate rows"
            ])  # fmt: skip
        codes[name] = s << ROW_BITS | row
        by_class.setdefault(cls, []).append(name)


def _extension(shards: Shards, s: int, cols: Columns) -> str:
    """Extension of a shard's unnamed rows: the column's name (``jpg``), else its first image's."""
    if ext := _EXT_COLUMNS.get(cols.image.lower()):
        return ext
    for rg in range(len(shards.starts[s])):  # the first row group holding an image names it
        try:
            column = shards.group(s, rg)
        except OSError as exc:
            raise DatasetError(str(shards.paths[s]), [str(exc)]) from None
        if first := next((b for x in column if (b := x.as_py())), None):
            return sniff(first) or ".img"  # JPEG, PNG or WebP by their bytes
    return ".img"


PARQUET = Layout(
    name="parquet",
    expects=(
        "parquet shards (a .parquet file, a folder of them such as a Hugging Face dataset's "
        "data/, or a pattern like 'data/validation-*.parquet') with an image column (bytes, or "
        "Hugging Face's Image struct) and a label column (label, cls, class or wnid); choose "
        "others with --set data_image_column=... --set data_label_column=..."
    ),
    detect=detect,
    listing=listing,
)
