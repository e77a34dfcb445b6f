"""A tar read in place: member offsets indexed once (cached), entries read with ``os.pread``.

The index is keyed by the tar's size, mtime and a hash of its first and last MiB, so a replaced
or re-downloaded archive is indexed again while a copy of the same file reuses its index only if
it is identical at both ends and in size. Indexing reads the 512-byte headers only (a seek past
every member's data), never the data itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from varbench.core.files import Blob, atomic_write_json
from varbench.core.progress import progress_bar
from varbench.errors import DatasetError

INDEX_FORMAT = 2  # 2: links indexed at their targets
_MIB = 1 << 20
_FIX = "fix: download the archive again (compare its size and checksum with the release's)"


@dataclass(frozen=True)
class TarIndex:
    """Every regular member of one tar: name -> (data offset, size)."""

    path: Path
    fingerprint: str
    members: dict[str, tuple[int, int]]

    def blob(self, member: str) -> Blob:
        """The member's bytes, read in place with one ``pread``."""
        offset, size = self.members[member]
        return Blob(
            name=f"{self.path}::{member}",
            read=lambda: _pread(self.path, offset, size),
            stamp=(self.fingerprint, offset, size),
        )


_fds: dict[Path, int] = {}
_fds_lock = threading.Lock()


def _pread(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``; one descriptor per tar, shared by threads (pread is atomic)."""
    with _fds_lock:
        fd = _fds.get(path)
        if fd is None:
            fd = _fds[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes at offset {offset} (truncated?)")
    return data


def fingerprint(path: Path) -> str:
    """sha256 of (size, mtime, first MiB, last MiB): cheap, and changes with any re-download."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if st.st_size > _MIB:
            f.seek(max(_MIB, st.st_size - _MIB))
            h.update(f.read(_MIB))
    return h.hexdigest()


def _scan(path: Path) -> dict[str, tuple[int, int]]:
    """Headers only: (offset, size) of every regular file member, checked against the file size.

    A hard or symbolic link to a regular member (GNU tar stores a second copy of an inode as a
    hard link) is indexed at its target's bytes.
    """
    size = path.stat().st_size
    members: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}  # link member -> the member it names
    duplicates: list[str] = []
    try:
        with (
            tarfile.open(path, mode="r:") as tf,
            progress_bar(f"indexing {path.name}", size) as advance,
        ):
            done = 0
            while True:
                info = tf.next()
                if info is None:
                    break
                tf.members.clear()  # keep memory flat: the index is ours, not tarfile's list
                if info.islnk() or info.issym():
                    name = info.name.removeprefix("./")
                    target = info.linkname.removeprefix("./")
                    if info.issym():  # relative to the link's folder
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                    links[name] = target
                    continue
                if not info.isfile():
                    continue
                end = info.offset_data + info.size
                if end > size:
                    raise DatasetError(str(path), [
                        f"{path} is truncated: member {info.name!r} needs bytes up to {end:,}, the "
                        f"file has {size:,}; {_FIX}"
                    ])  # fmt: skip
                name = info.name.removeprefix("./")
                if name in members:
                    duplicates.append(name)
                members[name] = (info.offset_data, info.size)
                advance(end - done)
                done = end
            end_at = tf.offset
    except tarfile.TarError as exc:
        raise DatasetError(str(path), [f"{path} is not a readable tar ({exc}); {_FIX}"]) from None
    _check_end(path, end_at, size)
    for name, target in links.items():
        for _hop in range(8):  # a link to a link (bounded: a cycle names nothing)
            if target not in links:
                break
            target = links[target]
        if target in members:
            if name in members:
                duplicates.append(name)
            members[name] = members[target]
    if duplicates:
        raise DatasetError(str(path), [
            f"{path} holds {len(duplicates)} member name(s) twice (e.g. {duplicates[0]!r}); which "
            "copy is meant is ambiguous; fix: rebuild the archive without duplicates"
        ])  # fmt: skip
    return members


def _check_end(path: Path, end_at: int, size: int) -> None:
    """tarfile stops quietly at a damaged header after the first one: a tar must end in zero
    blocks where the members stop, or the rest of the archive was lost (a truncated download, or
    bytes overwritten in the middle)."""
    with open(path, "rb") as f:
        f.seek(end_at)
        block = f.read(512)
    if len(block) < 512:
        raise DatasetError(str(path), [
            f"{path} is truncated: it stops at byte {size:,} with no end-of-archive marker after "
            f"its last member; {_FIX}"
        ])  # fmt: skip
    if block.strip(b"\0"):
        raise DatasetError(str(path), [
            f"{path} is corrupt: the member header at byte {end_at:,} is not a tar header (the "
            f"members after it, up to byte {size:,}, cannot be listed); {_FIX}"
        ])  # fmt: skip


def tar_index(path: Path, cache_dir: Path | None) -> TarIndex:
    """The tar's member index, from the cache when the tar is unchanged."""
    path = Path(path).resolve()
    try:
        fp = fingerprint(path)
    except OSError as exc:
        raise DatasetError(str(path), [f"cannot read {path}: {exc.strerror or exc}"]) from None
    cached = Path(cache_dir) / "tarindex" / f"{fp}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            data = json.loads(cached.read_text())
            if data.get("format") == INDEX_FORMAT:
                members = {n: (o, s) for n, o, s in data["members"]}
                return TarIndex(path, fp, members)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged: rebuilt below
    members = _scan(path)
    if cached is not None:
        atomic_write_json(
            cached,
            {
                "format": INDEX_FORMAT,
                "tar": str(path),
                "members": [[n, o, s] for n, (o, s) in members.items()],
            },
        )
    return TarIndex(path, fp, members)
