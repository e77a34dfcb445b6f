"""Parquet shards (Hugging Face ``datasets`` exports and others), read in place.

Listing reads the label column and the image struct's ``path`` child only, never an image's
bytes: a Parquet column chunk is read on its own, so the names of 50,000 rows cost a few MB of
a 5.5 GB validation split. Entries are named as a class-folder tree names the same images
(``n01440764/ILSVRC2012_val_00000293.JPEG``), so a protocol selects the same images from either.

Bytes live in row groups: reading one row means reading its row group's image column chunk.
The first read of any row of a group reads that chunk once (under a per-group lock, so threads
never read a group twice), keeps those of its rows a run may read (the top ``2 x n_per_class``
of each class in selection order: references, then as many held out) in one cache file per
group (under the shard's fingerprint and the column; written by a background thread while the
next group is read), and serves later reads, in this process
and the next, from those files. The last few groups read stay in memory, so reads in storage
order (as validation makes them: ``Blob.stamp`` sorts so) take each group's rows from there. So
a manifest reads only the row groups holding chosen rows (with rows in random class order, as
Hugging Face's ImageNet validation split has them, that is nearly all of them), each once, and
memory is a few row groups.

Rows without a file name (a binary column, or an Image struct whose ``path`` is empty) are named
``<class>/<shard stem>-<row:08d><ext>``: such names cannot match a folder tree of the same
images, so selections from the two differ. The extension comes from the column's name when it
is one (WebDataset-style ``jpg``/``png``/``webp`` columns), otherwise from the bytes of the
shard's first row (one row group per shard read at listing); decoding sniffs every entry's own
bytes either way.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import warnings
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from varbench.core.files import Blob, atomic_write_bytes
from varbench.core.progress import progress_bar
from varbench.errors import DatasetError
from varbench.plan.datasets import DatasetListing, _default_label, imagenet_labels
from varbench.plan.layouts.base import (
    DataSource,
    Layout,
    class_of_label,
    entry_rel,
    expand,
    imagenet_wnids,
    is_pattern,
)
from varbench.plan.layouts.tarindex import fingerprint
from varbench.plan.lsun import sniff
from varbench.plan.manifest import _ranked
from varbench.plan.protocol import ProtocolSpec

SUFFIX = ".parquet"
LABEL_COLUMNS = ("label", "cls", "class", "wnid")  # auto-detected, in this order
KEY_COLUMNS = ("__key__",)  # WebDataset-style sample keys: the file name without extension
_EXT_COLUMNS = {"jpg": ".jpg", "jpeg": ".jpeg", "png": ".png", "webp": ".webp"}
_SPLIT = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")  # HF shard names: validation-00003-of-00014
_SHARD_FIX = "fix: download the shard again (compare its size with the source's)"
_MAGIC = b"varbench parquet rows 1\n"  # a row group's kept rows in the cache
_ROW_BITS = 40  # an entry's location packed in one int: shard << 40 | row within the shard
_RECENT_GROUPS = 4  # row groups kept in memory after their read (about 11 MB each for ImageNet)
_PENDING_WRITES = 4  # row groups' kept rows waiting for the cache writer (views: no copies)

READS: dict[str, int] = {"row_groups": 0, "bytes": 0}  # image chunks read (tests, benchmarks)
_reads_lock = threading.Lock()


class _Writer:
    """Writes row groups' kept rows to the cache on one background thread, so the next group's
    read goes on meanwhile (a write into the page cache costs about half a read). At most
    ``_PENDING_WRITES`` wait; a failed write is a warning (the rows are read from the shard
    again), and ``flush`` waits for all of them."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        """A fresh state; again in a forked child (a data loader's worker), whose copy of the
        parent's thread does not run."""
        self._pid = os.getpid()
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(_PENDING_WRITES)
        self._lock = threading.Lock()
        self._futures: set[Future] = set()

    def submit(self, fn, *args) -> None:
        if self._pid != os.getpid():
            self._start()
        self._slots.acquire()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="varbench-parquet-cache")
            future = self._pool.submit(fn, *args)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)
        self._slots.release()
        exc = future.exception()
        if exc is not None:
            warnings.warn(f"parquet row cache not written ({exc}); rows are read from the shard "
                          "again", stacklevel=1)  # fmt: skip

    def flush(self) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            pending = list(self._futures)
        wait(pending)


_WRITER = _Writer()


def flush() -> None:
    """Wait until every kept row group is in the cache (tests, benchmarks: the writes count)."""
    _WRITER.flush()


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
            f"{_SHARD_FIX}"
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


def _chunk_bytes(meta, rg: int, leaf: str) -> int:
    """Compressed size of the column chunk ``leaf`` of row group ``rg`` (what reading it costs)."""
    group = meta.row_group(rg)
    return sum(
        group.column(i).total_compressed_size
        for i in range(group.num_columns)
        if group.column(i).path_in_schema == leaf
    )


class Shards:
    """The shards' image column chunks, read one row group at a time, chosen rows cached."""

    def __init__(self, paths: list[Path], leaf: str, cache_dir: Path | None):
        self.paths = paths
        self.leaf = leaf
        self.fingerprints = [fingerprint(p) for p in paths]
        self.starts: list[list[int]] = []  # per shard: first row of each row group
        self.wanted: dict[tuple[int, int], set[int]] = {}  # (shard, rg) -> rows a run may read
        self.cache = Path(cache_dir) / "parquet" if cache_dir is not None else None
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._indexes: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}  # kept rows
        self._paths: dict[tuple[int, int], Path] = {}
        self._recent: OrderedDict[tuple[int, int], Any] = OrderedDict()  # group -> its column
        self._locks_lock = threading.Lock()

    def add_shard(self, meta) -> None:
        starts, row = [], 0
        for rg in range(meta.num_row_groups):
            starts.append(row)
            row += meta.row_group(rg).num_rows
        self.starts.append(starts)

    def locate(self, code: int) -> tuple[int, int, int, int]:
        """(shard, row group, row within the group, row within the shard) of an entry."""
        shard, row = code >> _ROW_BITS, code & ((1 << _ROW_BITS) - 1)
        starts = self.starts[shard]
        rg = bisect_right(starts, row) - 1
        return shard, rg, row - starts[rg], row

    def want(self, codes: list[int]) -> None:
        """Rows a run may read: stored in the cache when their row group is first read."""
        for code in codes:
            shard, rg, _i, row = self.locate(code)
            self.wanted.setdefault((shard, rg), set()).add(row)

    def blob(self, name: str, code: int) -> Blob:
        shard, rg, i, row = self.locate(code)
        return Blob(
            name=f"{self.paths[shard]}::row {row}",
            read=lambda: self.read(shard, rg, i, row),
            stamp=(self.fingerprints[shard], rg, row),
        )

    def cached(self, shard: int, rg: int) -> Path | None:
        """One row group's kept rows (by the shard's content and the column: it names the image)."""
        if self.cache is None:
            return None
        path = self._paths.get((shard, rg))
        if path is None:
            column = quote(self.leaf, safe="")
            path = self.cache / self.fingerprints[shard][:32] / column / f"rg{rg:06d}.rows"
            self._paths[(shard, rg)] = path
        return path

    def read(self, shard: int, rg: int, i: int, row: int) -> bytes:
        """One row's image bytes: from a group read lately, the cache, else its row group."""
        data = self._from_recent(shard, rg, i)
        if data is None:
            data = self._from_cache(shard, rg, row)
        if data is None:
            with self._lock(shard, rg):
                data = self._from_recent(shard, rg, i)  # another thread read the group meanwhile
                if data is None:
                    data = self._from_cache(shard, rg, row)
                if data is None:
                    column = self.group(shard, rg)
                    self._keep(shard, rg, column)
                    with self._locks_lock:
                        self._recent[(shard, rg)] = column
                        while len(self._recent) > _RECENT_GROUPS:
                            self._recent.popitem(last=False)
                    data = column[i].as_py() or b""
        if not data:
            raise OSError(
                f"row {row} of {self.paths[shard]} has no image bytes (null or empty in column "
                f"{self.leaf!r}; a Hugging Face Image may hold only a path); fix: export the "
                "dataset with the image bytes embedded, or download the shard again"
            )
        return data

    def _from_recent(self, shard: int, rg: int, i: int) -> bytes | None:
        with self._locks_lock:
            column = self._recent.get((shard, rg))
        return None if column is None else (column[i].as_py() or b"")

    def _from_cache(self, shard: int, rg: int, row: int) -> bytes | None:
        key = (shard, rg)
        index = self._indexes.get(key)
        if index is None:
            index = _read_index(self.cached(shard, rg))
            if index is None:
                return None
            self._indexes[key] = index
        if row not in index:
            return None
        offset, size = index[row]
        try:
            with open(self.cached(shard, rg), "rb") as f:  # type: ignore[arg-type]
                data = os.pread(f.fileno(), size, offset)
        except OSError:
            return None
        return data if len(data) == size else None

    def _keep(self, shard: int, rg: int, column) -> None:
        """Store the group's wanted rows (and those a file of an earlier run kept) in one file."""
        path, old = self.cached(shard, rg), set(self._indexes.get((shard, rg)) or ())
        rows = self.wanted.get((shard, rg), set()) | old
        if path is None or rows == old:  # no cache, or all kept already (a row it does not keep)
            return
        start = self.starts[shard][rg]
        idx, sizes, data = _nonempty(column, [r - start for r in sorted(rows)])
        if idx:
            _WRITER.submit(self._store, (shard, rg), path, [i + start for i in idx], sizes, data)

    def _store(self, key: tuple[int, int], path: Path, rows: list[int], sizes, data) -> None:
        self._indexes[key] = _store_rows(path, rows, sizes, data)

    def group(self, shard: int, rg: int):
        """The image bytes of every row of one row group (that column chunk only), as an Arrow
        array: only the rows asked for become Python bytes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.paths[shard]
        try:
            pf = pq.ParquetFile(path, memory_map=True)  # no copy into a read buffer: 30 % faster
            # one thread: validation's own threads read other groups
            table = pf.read_row_group(rg, columns=[self.leaf], use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise OSError(f"cannot read row group {rg} of {path} ({exc}); {_SHARD_FIX}") from None
        chunks = table.column(0)
        column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
        if "." in self.leaf:  # a struct read with one child
            column = _child(column, self.leaf)
        with _reads_lock:
            READS["row_groups"] += 1
            READS["bytes"] += _chunk_bytes(pf.metadata, rg, self.leaf)
        return column

    def _lock(self, shard: int, rg: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault((shard, rg), threading.Lock())


def _child(struct, leaf: str):
    """The struct's child ``image.bytes`` names, null where the struct itself is null."""
    import pyarrow.compute as pc

    return pc.struct_field(struct, leaf.rsplit(".", 1)[1])


def _read_index(path: Path | None) -> dict[int, tuple[int, int]] | None:
    """row -> (offset, size) of a cache file, or None when absent, damaged or cut short."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 4)
            if len(head) < len(_MAGIC) + 4 or not head.startswith(_MAGIC):
                return None
            (count,) = struct.unpack("<I", head[len(_MAGIC) :])
            table = f.read(16 * count)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(table) != 16 * count:
        return None
    offset = len(_MAGIC) + 4 + 16 * count
    index = {}
    for row, n in struct.iter_unpack("<QQ", table):
        index[row] = (offset, n)
        offset += n
    return index if offset == size else None


def _nonempty(column, idx: list[int]) -> tuple[list[int], list[int], list[memoryview]]:
    """The rows ``idx`` of a binary column that hold bytes: their indices, sizes and bytes (views
    into the column's buffer: no copy, no Python object per row until written)."""
    import numpy as np
    import pyarrow as pa

    wide = pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64 if wide else np.int32)
    at = np.asarray(idx, dtype=np.int64) + column.offset
    starts, ends = offsets[at].tolist(), offsets[at + 1].tolist()
    valid = [column[i].is_valid for i in idx] if column.null_count else [True] * len(idx)
    data = memoryview(column.buffers()[2]) if column.buffers()[2] is not None else memoryview(b"")
    kept = [
        (i, e - s0, data[s0:e])
        for i, s0, e, ok in zip(idx, starts, ends, valid, strict=True)
        if ok and e > s0
    ]
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def _store_rows(
    path: Path, rows: list[int], sizes: list[int], data: list[memoryview]
) -> dict[int, tuple[int, int]]:
    """Write rows' bytes as one file (magic, count, (row, size) pairs, the bytes), atomically;
    return its index.

    Not fsynced (one fsync per row group would dominate a manifest's reads); a file a crash cut
    short fails the size check of ``_read_index`` and is read again from the shard.
    """
    header = _MAGIC + struct.pack("<I", len(rows))
    header += b"".join(struct.pack("<QQ", r, n) for r, n in zip(rows, sizes, strict=True))
    index, offset = {}, len(header)
    for r, n in zip(rows, sizes, strict=True):
        index[r] = (offset, n)
        offset += n
    atomic_write_bytes(path, [header, *data], sync=False)
    return index


class Entries(Mapping):
    """Entry name -> ``Blob``, made on lookup (one packed int per row, not one closure)."""

    def __init__(self, shards: Shards, codes: dict[str, int]):
        self.shards = shards
        self.codes = codes

    def __getitem__(self, name: str) -> Blob:
        return self.shards.blob(name, self.codes[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.codes)

    def __len__(self) -> int:
        return len(self.codes)


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
    human = imagenet_labels() if spec.class_names == "imagenet" else {}
    return DatasetListing(
        root=paths[0].resolve() if len(paths) == 1 else paths[0].resolve().parent,
        layout=spec.layout,
        classes=classes,
        labels={c: human.get(c, _default_label(c)) for c in classes},
        files=Entries(shards, codes),
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
        raise DatasetError(str(path), [f"cannot read {path} ({exc}); {_SHARD_FIX}"]) from None
    labels = table.column(cols.label).to_pylist()
    if cols.path is None:
        files: list[str | None] = [None] * len(labels)
    elif cols.path.startswith(cols.image + "."):  # the Image struct read with its path only
        files = _child(table.column(cols.image).combine_chunks(), cols.path).to_pylist()
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
            other = f"{shards.paths[first >> _ROW_BITS]} row {first & ((1 << _ROW_BITS) - 1)}"
            raise DatasetError(str(path), [
                f"entry {name!r} appears twice ({other} and {path} row {row}); which image is "
                "meant is ambiguous; fix: remove the duplicate rows"
            ])  # fmt: skip
        codes[name] = s << _ROW_BITS | row
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
