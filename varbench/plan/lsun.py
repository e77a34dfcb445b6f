"""LSUN (one class per protocol): the official LMDB release, or an exported image folder.

Bedroom's train LMDB holds about 3 million images, so listing reads keys only, never a value.
The keys are ranked with the manifest's own ranking and only the entries a run can use are
extracted: the top ``n_per_class`` (the references) and the next ``n_per_class`` (held out, for
the oracle baseline and the memorisation reference curve). Because the extract is a prefix of
the full ranking, ``build_manifest`` selects from it exactly what it would select from every key,
and validates (decodes) only those files. Values are WebP or JPEG whatever the release's README
says: the format is sniffed from the bytes, which are kept exactly as stored.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_from_bytes

from varbench.core.files import disk_full, is_disk_full
from varbench.core.progress import progress_bar
from varbench.errors import DatasetError
from varbench.plan.datasets import IMAGE_EXTENSIONS, ClassSource, DatasetListing
from varbench.plan.lmdb_keys import LmdbLayoutError, iter_keys
from varbench.plan.manifest import _rank
from varbench.plan.protocol import ProtocolSpec

log = logging.getLogger(__name__)
LSUN_FIX = (
    "fix: unpack the LSUN release again (e.g. `unzip bedroom_train_lmdb.zip -d DATA`) "
    "or point --data at an exported image folder"
)
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))
_PROGRESS_EVERY = 1 << 16
_BATCH = 256  # values held in memory at once while extracting
_PLAIN = re.compile(rb"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*\Z")


def key_name(key: bytes) -> str:
    """The file-safe, reversible name of an LMDB key (LSUN's 40-hex keys stay as they are)."""
    if _PLAIN.match(key):  # the common case, checked first: listing calls this once per key
        return key.decode("ascii")
    name = quote_from_bytes(key, safe="-_.~")
    return "%2E" + name[1:] if name.startswith(".") else name


def sniff(data: bytes) -> str | None:
    """File extension of WebP, JPEG or PNG bytes, by content; None for anything else."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)


def n_extract(spec: ProtocolSpec) -> int:
    """Entries a run can use: the references and as many held-out images (oracle, memorisation)."""
    return 2 * spec.n_per_class


def _top(names: Iterator[tuple[str, bytes]], spec: ProtocolSpec, m: int):
    """The ``m`` best-ranked (rank, name, key) of ``names``, best first, without a full sort."""
    cls = spec.category or ""
    ranked = ((_rank(spec.seed, "reference", cls, n), n, k) for n, k in names)
    return heapq.nsmallest(m, ranked)


def find_lmdb(data: Path, category: str) -> Path | None:
    """``<data>/<category>_train_lmdb`` as the release unpacks, or ``<data>`` itself if it is one."""
    if (data / "data.mdb").exists():
        return data
    sub = data / f"{category}_train_lmdb"
    return sub if sub.is_dir() else None


def _open(path: Path):
    """Open an LMDB read-only without locking (a shared read-only copy works); check its size."""
    import lmdb

    mdb = path / "data.mdb"
    if not mdb.is_file():
        raise DatasetError(str(path), [f"missing {mdb} (an LSUN LMDB holds data.mdb); {LSUN_FIX}"])
    try:
        env = lmdb.open(
            str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=8
        )
    except lmdb.Error as exc:
        raise DatasetError(
            str(path), [f"{mdb} is not a readable LMDB database ({exc}); {LSUN_FIX}"]
        ) from None
    # A truncated data.mdb would fault (SIGBUS) on the first page past its end: refuse it here.
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = mdb.stat().st_size
    if size < need:
        env.close()
        raise DatasetError(
            str(path),
            [f"{mdb} is truncated: {size:,} bytes, the database needs {need:,}; {LSUN_FIX}"],
        )
    if env.stat()["entries"] == 0:
        env.close()
        raise DatasetError(str(path), [f"{mdb} is an empty database (0 entries); {LSUN_FIX}"])
    return env


def _named(keys: Iterator[bytes], total: int, digest) -> Iterator[tuple[str, bytes]]:
    """(name, key) of every key in key order, feeding ``digest``, with progress on stderr."""
    with progress_bar("listing LMDB keys", total) as advance:
        for i, key in enumerate(keys, 1):
            digest.update(len(key).to_bytes(2, "big") + key)
            if i % _PROGRESS_EVERY == 0:
                advance(_PROGRESS_EVERY)
            yield key_name(key), key
        advance(total % _PROGRESS_EVERY)


def rank_keys(path: Path, txn, spec: ProtocolSpec, total: int) -> tuple[list, str]:
    """The best-ranked (rank, name, key) entries of the LMDB and the hash of all its keys.

    Keys come from the B-tree pages (``varbench.plan.lmdb_keys``); a layout that reader does not know
    falls back to the ``lmdb`` cursor, which is right but reads every value page on the way.
    """
    try:
        digest = hashlib.sha256()
        top = _top(_named(iter_keys(path), total, digest), spec, n_extract(spec))
        return top, digest.hexdigest()
    except LmdbLayoutError as exc:
        log.warning("%s: %s; listing its keys through the lmdb cursor (slower)", path, exc)
    digest = hashlib.sha256()
    keys = txn.cursor().iternext(keys=True, values=False)
    top = _top(_named(keys, total, digest), spec, n_extract(spec))
    return top, digest.hexdigest()


def _store(data: bytes, name: str, ext: str, cache_dir: Path, made: set[Path]) -> Path:
    """Keep a value's bytes exactly, under their sha256 (content-addressed), named by the key too.

    Written to a temporary file of this process and renamed, so readers (other shards) never see
    a part; not fsynced (20,000 fsyncs would dominate the listing): a file cut by a crash fails
    the size check below, or validation, which names it by its key; deleting it recovers.
    """
    digest = hashlib.sha256(data).hexdigest()
    stem = name if len(name) <= 160 else hashlib.sha256(name.encode()).hexdigest()
    folder = Path(cache_dir) / "lsun" / digest[:2]
    path = folder / f"{digest[:32]}.{stem}{ext}"
    try:
        if path.stat().st_size == len(data):
            return path
    except OSError:
        pass
    tmp = folder / f".{path.name}.{os.getpid()}.part"
    try:
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise
    return path


def list_lmdb(path: Path, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """Rank every key of an LSUN LMDB and extract only the entries a run can use."""
    import lmdb

    env = _open(path)
    cls = spec.category or ""
    files: dict[str, Path] = {}
    problems: list[str] = []
    made: set[Path] = set()
    try:
        total = env.stat()["entries"]
        with env.begin(buffers=False) as txn:
            top, keys_sha256 = rank_keys(path, txn, spec, total)
            # in key order, which is the file's order for values written in key order: a cold
            # disk reads forward instead of seeking at random; file writes overlap in threads
            chosen = sorted((key, name) for _rank_hex, name, key in top)
            with (
                progress_bar("extracting chosen entries", len(chosen)) as advance,
                ThreadPoolExecutor(max_workers=4) as pool,
            ):
                for start in range(0, len(chosen), _BATCH):
                    batch = []
                    for key, name in chosen[start : start + _BATCH]:
                        data = txn.get(key) or b""
                        ext = sniff(data)
                        if ext is None:
                            problems.append(
                                f"entry {name!r} of {path} is not a WebP, JPEG or PNG image (starts"
                                f" with {data[:8]!r}); fix: repair the database or re-download it"
                            )
                        else:
                            batch.append((data, name, ext))
                    stored = pool.map(lambda b: _store(*b, cache_dir, made), batch)
                    for (_data, name, _ext), file in zip(batch, stored, strict=True):
                        files[name] = file
                    advance(len(chosen[start : start + _BATCH]))
    except lmdb.Error as exc:
        raise DatasetError(
            str(path), [f"{path / 'data.mdb'} is corrupted ({exc}); {LSUN_FIX}"]
        ) from None
    finally:
        env.close()
    return DatasetListing(
        root=path,
        layout="lsun",
        classes={cls: tuple(sorted(files))},
        labels={cls: cls.replace("_", " ")},
        problems=tuple(problems),
        files=files,
        sources={cls: ClassSource(n_files=total, listing_sha256=keys_sha256)},
    )


def list_exported(folder: Path, spec: ProtocolSpec) -> DatasetListing:
    """``<folder>/*.{webp,jpg,png}``: rank the file names, keep the entries a run can use."""
    cls = spec.category or ""
    with os.scandir(folder) as it:
        names = sorted(
            e.name
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and not e.is_dir()
        )
    top = _top(((n, b"") for n in names), spec, n_extract(spec))
    digest = hashlib.sha256()
    for n in names:
        data = n.encode()
        digest.update(len(data).to_bytes(2, "big") + data)
    return DatasetListing(
        root=folder,
        layout="lsun",
        classes={cls: tuple(sorted(n for _r, n, _k in top))},
        labels={cls: cls.replace("_", " ")},
        sources={cls: ClassSource(n_files=len(names), listing_sha256=digest.hexdigest())},
    )


def list_lsun(data: Path, spec: ProtocolSpec, cache_dir: Path) -> DatasetListing:
    """The LSUN listing of ``--data``: an LMDB as the release unpacks, or an exported folder."""
    data = Path(data).expanduser().resolve()
    category = spec.category or ""
    if not data.is_dir():
        raise DatasetError(str(data), [f"missing folder: --data {data} does not exist"])
    path = find_lmdb(data, category)
    if path is not None:
        return list_lmdb(path, spec, cache_dir)
    try:
        listing = list_exported(data, spec)
    except OSError as exc:
        raise DatasetError(
            str(data), [f"cannot list folder {data}: {exc.strerror or exc}"]
        ) from None
    if not listing.classes[category]:
        others = sorted(p.name for p in data.glob("*_lmdb") if p.is_dir())
        hint = f" (found {', '.join(others)}: another category?)" if others else ""
        raise DatasetError(
            str(data),
            [
                f"no LSUN data in {data}{hint}: expected {data}/{category}_train_lmdb/ "
                "(data.mdb, lock.mdb) as the LSUN release unpacks, or exported images "
                f"{data}/*.webp|jpg|png; {LSUN_FIX}"
            ],
        )
    return listing
