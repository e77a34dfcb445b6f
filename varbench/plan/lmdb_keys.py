"""Keys of an LMDB's main database, read from its B-tree pages only (no value page is touched).

Why it exists: py-lmdb from 2.1 on bundles a hardened LMDB whose page lookup also reads the first
page of every value it steps over (to check it), so listing the keys of an LSUN category through
a cursor reads about 11 GiB, scattered, for 3 million entries; py-lmdb 1.4 to 2.0 read the tree
pages only. This walks the branch and leaf pages of the on-disk format of LMDB 0.9 (the format of
the LSUN release and of the ``lmdb`` package) with one ``pread`` per page (no map: a mapping
would also count neighbouring cached value pages in the resident set), with random-access advice
so the kernel reads no value page ahead, and yields keys in key order. Anything it does not
expect (another format version, duplicate-sorted or sub-databases, an inconsistent page, a node
or key reaching outside its page, keys out of order) raises ``LmdbLayoutError`` naming the file,
so the caller can fall back to the ``lmdb`` cursor, which is slower but always right.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

MAGIC = 0xBEEFC0DE
PAGE_HEADER = 16  # mp_pgno (8), mp_pad (2), mp_flags (2), mp_lower (2), mp_upper (2)
NODE_HEADER = 8  # mn_lo, mn_hi, mn_flags, mn_ksize (2 each)
P_BRANCH, P_LEAF, P_LEAF2 = 0x01, 0x02, 0x20
F_SUBDATA, F_DUPDATA = 0x02, 0x04
INVALID_PAGE = 2**64 - 1
_META = struct.Struct("<IIQQ")  # magic, version, address, mapsize
_DB = struct.Struct("<IHHQQQQQ")  # pad(psize), flags, depth, branch, leaf, overflow, entries, root
_NODE = struct.Struct("<HHHH")


class LmdbLayoutError(Exception):
    """The file is not laid out as this reader expects (use the ``lmdb`` cursor instead)."""


def _meta(buf: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """(txnid, page size, main db flags, entries, root page) of the meta page at ``offset``."""
    magic, version, _addr, _mapsize = _META.unpack_from(buf, offset + PAGE_HEADER)
    if magic != MAGIC or version != 1:
        raise LmdbLayoutError(f"meta page: magic {magic:#x}, version {version}")
    free = _DB.unpack_from(buf, offset + PAGE_HEADER + _META.size)
    main = _DB.unpack_from(buf, offset + PAGE_HEADER + _META.size + _DB.size)
    (txnid,) = struct.unpack_from("<Q", buf, offset + PAGE_HEADER + _META.size + 2 * _DB.size + 8)
    return txnid, free[0], main[1], main[6], main[7]


def _check_node(pgno: int, offset: int, ksize: int, upper: int, psize: int) -> None:
    """Raise unless the node at ``offset`` and its ``ksize``-byte key lie in the page's node area."""
    if offset < upper or offset + NODE_HEADER + ksize > psize:
        raise LmdbLayoutError(
            f"page {pgno}: node at offset {offset} with key size {ksize} reaches outside the "
            f"page's node area ({upper} to {psize})"
        )


def iter_keys(path: Path) -> Iterator[bytes]:
    """Every key of the main database of ``path``/data.mdb, in key order, from the tree pages."""
    file = Path(path) / "data.mdb"
    try:
        yield from _walk(path)
    except LmdbLayoutError as exc:
        raise LmdbLayoutError(f"{file}: {exc}") from None
    except (struct.error, OSError) as exc:  # a page cut short or unreadable: not our layout
        raise LmdbLayoutError(f"{file}: {type(exc).__name__}: {exc}") from None


def _walk(path: Path) -> Iterator[bytes]:
    fd = os.open(Path(path) / "data.mdb", os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead into value pages
        head = os.pread(fd, 4096, 0)
        if len(head) < PAGE_HEADER + _META.size + 2 * _DB.size + 16:
            raise LmdbLayoutError("file shorter than a meta page")
        first = _meta(head, 0)
        psize = first[1]
        if psize < 512 or psize & (psize - 1):
            raise LmdbLayoutError(f"page size {psize}")
        second = _meta(os.pread(fd, PAGE_HEADER + _META.size + 2 * _DB.size + 16, psize), 0)
        _txnid, _ps, flags, entries, root = max(first, second)
        if flags:
            raise LmdbLayoutError(f"main database flags {flags:#x}")
        if root == INVALID_PAGE:
            return
        n_pages = os.fstat(fd).st_size // psize
        seen = 0
        last: bytes | None = None
        stack = [root]
        while stack:
            pgno = stack.pop()
            if not 2 <= pgno < n_pages:
                raise LmdbLayoutError(f"page {pgno} outside the file")
            page = os.pread(fd, psize, pgno * psize)
            pg, _pad, pflags, lower, upper = struct.unpack_from("<QHHHH", page, 0)
            if pg != pgno or not PAGE_HEADER <= lower <= upper <= psize or pflags & P_LEAF2:
                raise LmdbLayoutError(
                    f"page {pgno}: header {pg}, flags {pflags:#x}, lower {lower}, upper {upper}"
                )
            n = (lower - PAGE_HEADER) >> 1
            ptrs = struct.unpack_from(f"<{n}H", page, PAGE_HEADER)
            if pflags & P_BRANCH:
                children = []
                for p in ptrs:
                    lo, hi, fl, ksize = _NODE.unpack_from(page, p)
                    _check_node(pgno, p, ksize, upper, psize)
                    children.append(lo | hi << 16 | fl << 32)
                stack.extend(reversed(children))  # leftmost child is visited first
            elif pflags & P_LEAF:
                for p in ptrs:
                    _lo, _hi, fl, ksize = _NODE.unpack_from(page, p)
                    if fl & (F_SUBDATA | F_DUPDATA):
                        raise LmdbLayoutError(f"page {pgno}: node flags {fl:#x}")
                    _check_node(pgno, p, ksize, upper, psize)
                    key = page[p + NODE_HEADER : p + NODE_HEADER + ksize]
                    if last is not None and key <= last:  # LMDB's default order is bytes order
                        raise LmdbLayoutError(f"page {pgno}: key at offset {p} out of order")
                    last = key
                    yield key
                seen += n
            else:
                raise LmdbLayoutError(f"page {pgno}: flags {pflags:#x}")
        if seen != entries:
            raise LmdbLayoutError(f"walked {seen} keys, the meta page says {entries}")
    finally:
        os.close(fd)
