"""Atomic file writes (temp file + rename) and image reading."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from varbench.errors import DiskFullError

log = logging.getLogger(__name__)

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode a plain ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or the user's quota) running out of space."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: str | os.PathLike, exc: OSError) -> DiskFullError:
    """One clear error naming the folder that ran out of space."""
    folder = Path(path).parent
    return DiskFullError(
        f"no space left on the device holding {folder} while writing {Path(path).name}; "
        "nothing partial was kept. Free space (or use another --out / --cache-dir) and re-run "
        "the same command: finished work is resumed, not redone.",
    )


def _host_tag() -> str:
    """This host's name as temp files carry it (no dots: their names split on them)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def writer_tag() -> str:
    """``HOST-PID`` of this process, as its temp files carry it."""
    return f"{_host_tag()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_writers_temps(folder: str | os.PathLike) -> int:
    """Delete ``folder``'s temp files (``.NAME.HOST-PID.XXXX.tmp``) whose writer ran on this host
    and is gone: what a killed ``atomic_write_bytes`` leaves. Live writers' and other hosts'
    files are kept (a shared run folder may have writers elsewhere). Returns the count."""
    host = _host_tag()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")) or name.count(".") < 4:
            continue
        tag_host, _, pid = name.rsplit(".", 3)[1].rpartition("-")
        if tag_host == host and pid.isdigit() and not pid_alive(int(pid)):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes | Sequence[bytes], sync: bool = True
) -> None:
    """Write ``data`` (or its chunks, in order) to ``path`` so readers see the old file or the
    whole new one, never a part.

    The file gets the mode the umask gives ordinary files (mkstemp alone would leave 0600, which
    makes a team's shared runs folder unreadable), and a full disk raises ``DiskFullError``. The
    temp file's name carries ``writer_tag()``, so a resume can tell a killed writer's leftover
    (``remove_dead_writers_temps``) from a live one's. ``sync=False`` skips the fsync, for caches
    of many files copied from a dataset (thousands of fsyncs would dominate): a file a crash cut
    short must then be caught by its reader (size check, or decoding).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                f.write(chunk)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic UTF-8 text write."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, human-readable JSON write."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 array as a lossless PNG."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def keep_bytes(folder: str | os.PathLike, data: bytes, suffix: str, sync: bool = True) -> Path:
    """``data`` stored under its sha256 in ``folder`` (``ab/<32 hex digits><suffix>``), written
    only if absent: a content-addressed cache of container entries."""
    digest = hashlib.sha256(data).hexdigest()
    path = Path(folder) / digest[:2] / (digest[:32] + suffix)
    if not path.is_file():
        atomic_write_bytes(path, data, sync=sync)
    return path


def atomic_write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an HxWx3 uint8 image as PNG atomically."""
    atomic_write_bytes(path, png_bytes(image))


@dataclass(frozen=True, eq=False)
class Blob:
    """An image stored inside a container (a tar member, a parquet row), read in place on demand.

    ``name`` names it in every message (``<container>::<member>``); ``stamp`` identifies its
    bytes for caches the way (size, mtime) identifies a file's, and sorts in storage order
    (container fingerprint, then position), so reads sorted by it go through each container once.
    """

    name: str
    read: Callable[[], bytes]
    stamp: tuple = ()

    def __str__(self) -> str:
        return self.name


ImageSource = str | os.PathLike | Blob


def open_image(src: ImageSource) -> Image.Image:
    """``Image.open`` of a file, or of a container entry's bytes (decoded identically)."""
    if isinstance(src, Blob):
        return Image.open(io.BytesIO(src.read()))
    return Image.open(src)


def read_rgb(path: ImageSource) -> np.ndarray:
    """Decode an image file fully into an HxWx3 uint8 RGB array (raises on truncation)."""
    with open_image(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_json_or(path: str | os.PathLike, default: Any) -> Any:
    """A JSON side file's content; ``default`` when absent, and with a warning when damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    except OSError as exc:
        log.warning("cannot read %s (%s); it is rebuilt", path, exc)
        return default
    try:
        value = json.loads(data)
    except ValueError:
        log.warning("damaged %s (not JSON); it is rebuilt from the files it describes", path)
        return default
    if not isinstance(value, type(default)):
        log.warning("damaged %s (unexpected content); it is rebuilt", path)
        return default
    return value
