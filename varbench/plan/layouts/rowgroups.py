"""Parquet row groups read in place: one image column chunk read once per row group, the rows a
run may read kept in the cache, entries located by one packed int.

Reading one row means reading its row group's image column chunk. The first read of any row of
a group reads that chunk once (under a per-group lock, so threads never read a group twice),
keeps those of its rows a run may read in one cache file per group (under the shard's
fingerprint and the column; written by a background thread while the next group is read), and
serves later reads, in this process and the next, from those files. The last few groups read
stay in memory, so reads in storage order (as validation makes them: ``Blob.stamp`` sorts so)
take each group's rows from there. Memory is a few row groups.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import quote

from varbench.core.files import Blob, atomic_write_bytes
from varbench.plan.layouts.tarindex import fingerprint

SHARD_FIX = "fix: download the shard again (compare its size with the source's)"
_MAGIC = b"varbench parquet rows 1\n"  # a row group's kept rows in the cache
ROW_BITS = 40  # an entry's location packed in one int: shard << 40 | row within the shard
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
        self._recent: OrderedDict[tuple[int, int], _Rows] = OrderedDict()  # groups read lately
        self._locks_lock = threading.Lock()
        self._files = threading.local()  # per thread: shard -> its open ParquetFile

    def add_shard(self, meta) -> None:
        starts, row = [], 0
        for rg in range(meta.num_row_groups):
            starts.append(row)
            row += meta.row_group(rg).num_rows
        self.starts.append(starts)

    def locate(self, code: int) -> tuple[int, int, int, int]:
        """(shard, row group, row within the group, row within the shard) of an entry."""
        shard, row = code >> ROW_BITS, code & ((1 << ROW_BITS) - 1)
        starts = self.starts[shard]
        rg = bisect_right(starts, row) - 1
        return shard, rg, row - starts[rg], row

    def want(self, codes: list[int]) -> None:
        """Rows a run may read: stored in the cache when their row group is first read."""
        for code in codes:
            shard, rg, _i, row = self.locate(code)
            self.wanted.setdefault((shard, rg), set()).add(row)

    def blob(self, code: int) -> Blob:
        """The entry at ``code`` (a packed location), read on demand."""
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
                    rows = _Rows(self.group(shard, rg))
                    self._keep(shard, rg, rows)
                    with self._locks_lock:
                        self._recent[(shard, rg)] = rows
                        while len(self._recent) > _RECENT_GROUPS:
                            self._recent.popitem(last=False)
                    data = rows.row(i)
        if not data:
            raise OSError(
                f"row {row} of {self.paths[shard]} has no image bytes (null or empty in column "
                f"{self.leaf!r}; a Hugging Face Image may hold only a path); fix: export the "
                "dataset with the image bytes embedded, or download the shard again"
            )
        return data

    def _from_recent(self, shard: int, rg: int, i: int) -> bytes | None:
        with self._locks_lock:
            rows = self._recent.get((shard, rg))
        return None if rows is None else rows.row(i)

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

    def _keep(self, shard: int, rg: int, group: _Rows) -> None:
        """Store the group's wanted rows (and those a file of an earlier run kept) in one file."""
        path, old = self.cached(shard, rg), set(self._indexes.get((shard, rg)) or ())
        rows = self.wanted.get((shard, rg), set()) | old
        if path is None or rows == old:  # no cache, or all kept already (a row it does not keep)
            return
        start = self.starts[shard][rg]
        idx, sizes, data = group.spans([r - start for r in sorted(rows)])
        if idx:
            _WRITER.submit(self._store, (shard, rg), path, [i + start for i in idx], sizes, data)

    def _store(self, key: tuple[int, int], path: Path, rows: list[int], sizes, data) -> None:
        self._indexes[key] = _store_rows(path, rows, sizes, data)

    def group(self, shard: int, rg: int):
        """The image bytes of every row of one row group (that column chunk only), as an Arrow
        array: only the rows asked for become Python bytes."""
        import pyarrow as pa

        path = self.paths[shard]
        try:
            pf = self._file(shard)
            # one thread: validation's own threads read other groups
            table = pf.read_row_group(rg, columns=[self.leaf], use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise OSError(f"cannot read row group {rg} of {path} ({exc}); {SHARD_FIX}") from None
        chunks = table.column(0)
        column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
        if "." in self.leaf:  # a struct read with one child
            column = child(column, self.leaf)
        with _reads_lock:
            READS["row_groups"] += 1
            READS["bytes"] += _chunk_bytes(pf.metadata, rg, self.leaf)
        return column

    def _file(self, shard: int):
        """This thread's open ``ParquetFile`` of a shard (opening one costs about 1 ms; a reader
        is not shared between threads), memory-mapped: no copy into a read buffer."""
        import pyarrow.parquet as pq

        files = getattr(self._files, "by_shard", None)
        if files is None or self._files.pid != os.getpid():  # a forked child opens its own
            files = self._files.by_shard = {}
            self._files.pid = os.getpid()
        pf = files.get(shard)
        if pf is None:
            pf = files[shard] = pq.ParquetFile(self.paths[shard], memory_map=True)
        return pf

    def _lock(self, shard: int, rg: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault((shard, rg), threading.Lock())


def child(struct, leaf: str):
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


class _Rows:
    """A row group's binary column as spans of one buffer: a row's bytes are one slice (no Arrow
    scalar per row), b"" when null."""

    def __init__(self, column):
        import numpy as np
        import pyarrow as pa

        wide = pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type)
        n, at = len(column), column.offset
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int64 if wide else np.int32)
        starts, ends = offsets[at : at + n].copy(), offsets[at + 1 : at + n + 1].copy()
        if column.null_count:
            nulls = column.is_null().to_numpy(zero_copy_only=False)
            ends[nulls] = starts[nulls]
        self.starts, self.ends = starts.tolist(), ends.tolist()
        buffer = column.buffers()[2]
        self.data = memoryview(buffer) if buffer is not None else memoryview(b"")

    def row(self, i: int) -> bytes:
        return bytes(self.data[self.starts[i] : self.ends[i]])

    def spans(self, idx: list[int]) -> tuple[list[int], list[int], list[memoryview]]:
        """The rows ``idx`` that hold bytes: their indices, sizes and bytes (views: no copy)."""
        kept = [i for i in idx if self.ends[i] > self.starts[i]]
        return (
            kept,
            [self.ends[i] - self.starts[i] for i in kept],
            [self.data[self.starts[i] : self.ends[i]] for i in kept],
        )


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
