"""Lock files for run points that work on shared (NFS-like) filesystems.

A lock is a file created with O_CREAT|O_EXCL holding the holder's host, pid and start time; a
thread refreshes its mtime (the heartbeat) while it is held. A lock is stale when its heartbeat
is older than ``stale_after`` seconds, or at once when its holder is on this host and the pid is
gone. A stale lock is taken over by deleting it and then creating a fresh one.

Deleting must remove only the file that was judged stale: a contender may judge lock A0 stale,
and before it acts another contender deletes A0 and takes the lock as A1; deleting "the lock"
then would delete A1, a live lock, and both would hold it. So a breaker first claims the right
to break that one lock file by creating ``<lock>.break-<id>`` exclusively, ``<id>`` derived from
what it read (the holder's token and the file's inode); under that claim it reads the lock again
and deletes it only if it is still the same file (same inode and token) and still stale. The
lock file can only change meanwhile by being deleted, for which another breaker of the same file
would need the same claim (or its holder would have to come back after being stale), and a
breaker that reads A1 gets another id. A claim is held for a moment; one left by a breaker that
died is removed once it is stale itself (renamed aside first, and put back if what was renamed
is not the claim judged stale).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varbench.core.files import file_mode, pid_alive
from varbench.errors import VarbenchError

DEFAULT_STALE_AFTER = float(os.environ.get("VARBENCH_LOCK_STALE_S", "600"))
HEARTBEAT_EVERY = float(os.environ.get("VARBENCH_LOCK_HEARTBEAT_S", "20"))


class LockHeldError(VarbenchError):
    """Another live process holds the lock; this one leaves without touching its work."""

    exit_code = 3

    def __init__(self, what: str, holder: dict[str, Any], path: Path):
        self.holder = holder
        self.path = path
        age = time.time() - float(holder.get("started", time.time()))
        super().__init__(
            f"{what} is being worked on by host {holder.get('host', '?')} pid "
            f"{holder.get('pid', '?')} (for {age:.0f} s, lock {path}); this process leaves "
            "without generating anything. Re-run the same command after it finishes (it then "
            "resumes), or delete the lock file if that process is really gone."
        )


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, with ``heartbeat_age`` in seconds (None if no lock)."""
    try:
        st = path.stat()
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}
        try:
            st = path.stat()
        except OSError:
            return None
    if not isinstance(info, dict):
        info = {}
    info["heartbeat_age"] = max(0.0, time.time() - st.st_mtime)
    info["inode"] = st.st_ino
    return info


def is_stale(holder: dict[str, Any], stale_after: float) -> bool:
    """Heartbeat too old, or a dead pid on this very host."""
    if holder.get("heartbeat_age", 0.0) > stale_after:
        return True
    if holder.get("host") == socket.gethostname():
        try:
            return not pid_alive(int(holder.get("pid", -1)))
        except (TypeError, ValueError):
            return True
    return False


@dataclass
class FileLock:
    """An exclusive, heartbeat-refreshed lock file (``with`` it; ``acquire`` may raise)."""

    path: Path
    what: str
    stale_after: float = DEFAULT_STALE_AFTER

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = uuid.uuid4().hex

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex  # one per hold: a lock file taken again is a different file
        if not _create(self.path, token):
            return False
        self._token = token
        return True

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, breaking a stale one; raise ``LockHeldError`` after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            if self._try_create():
                break
            holder = read_holder(self.path)
            if holder is None:
                continue  # released between our attempts
            if is_stale(holder, self.stale_after):
                _before_break(self.path)
                busy = self._break(holder)
                if busy is not None:  # another contender is breaking this very file
                    if time.monotonic() >= deadline + 1.0:  # longer than a break takes
                        raise LockHeldError(self.what, read_holder(busy) or holder, busy)
                    time.sleep(0.01)
                continue
            if time.monotonic() >= deadline:
                raise LockHeldError(self.what, holder, self.path)
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="varbench-lock")
        self._thread.start()

    def _break(self, judged: dict[str, Any]) -> Path | None:
        """Delete the lock file if still the one ``judged`` stale; another breaker's claim, if any."""
        key = f"{judged.get('token')!r} {judged.get('inode')!r}"
        claim = self.path.with_name(
            f"{self.path.name}.break-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        )
        token = uuid.uuid4().hex
        if not _create(claim, token):
            _remove_if_stale(claim, self.stale_after)
            return claim
        try:
            now = read_holder(self.path)
            same = now is not None and (now.get("token"), now.get("inode")) == (
                judged.get("token"), judged.get("inode"))  # fmt: skip
            if same and is_stale(now, self.stale_after):
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            if (read_holder(claim) or {}).get("token") == token:
                os.unlink(claim)
        return None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                os.utime(self.path)
            except OSError:
                return

    def owned(self) -> bool:
        """Whether the lock file on disk is still ours (not broken by someone else)."""
        holder = read_holder(self.path)
        return bool(holder) and holder.get("token") == self._token

    def release(self) -> None:
        """Stop the heartbeat and remove the file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.owned():
            try:
                os.unlink(self.path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _before_break(path: Path) -> None:
    """Called between judging ``path`` stale and breaking it (tests delay contenders here)."""


def _create(path: Path, token: str) -> bool:
    """Create ``path`` exclusively with this host, pid, time and ``token``; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode())
    except FileExistsError:
        return False
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "token": token,
    }
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
    return True


def _remove_if_stale(path: Path, stale_after: float) -> None:
    """Remove ``path`` (a break claim) if stale: renamed aside, put back if not the one judged."""
    judged = read_holder(path)
    if judged is None or not is_stale(judged, stale_after):
        return
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = read_holder(aside) or {}
    if (moved.get("token"), moved.get("inode")) != (judged.get("token"), judged.get("inode")):
        try:
            os.link(aside, path)  # a live claim taken meanwhile: back under its name
        except OSError:
            pass
    os.unlink(aside)


def list_locks(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Lock files under ``folder`` (recursively) with their holders."""
    out = []
    for path in sorted(Path(folder).rglob("*.lock")):
        holder = read_holder(path)
        if holder is not None:
            out.append((path, holder))
    return out
