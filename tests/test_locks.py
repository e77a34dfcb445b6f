"""Lock files: a stale lock is broken by exactly one contender, never a live one by mistake."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from varbench.core import locks
from varbench.core.locks import FileLock, LockHeldError, read_holder


def plant_stale(path: Path, token: str | None = "old") -> None:
    """A lock of a host that stopped heartbeating an hour ago (``token`` None: an old format)."""
    info = {"host": "elsewhere", "pid": 12345, "started": time.time() - 3600}
    if token is not None:
        info["token"] = token
    path.write_text(json.dumps(info))
    os.utime(path, (time.time() - 3600, time.time() - 3600))


def leftovers(folder: Path) -> list[str]:
    """Files of the lock machinery other than lock files (break claims, renamed files)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_breaker_that_judged_an_old_lock_stale_leaves_the_new_holder_alone(tmp_path, monkeypatch):
    """B judges A0 stale; A breaks A0 and takes the lock; B must not delete A's live lock."""
    path = tmp_path / "point.lock"
    plant_stale(path)
    b_judged, a_holds = threading.Event(), threading.Event()

    def hold_b_back(p: Path) -> None:
        if threading.current_thread().name == "B":
            b_judged.set()
            assert a_holds.wait(30)

    monkeypatch.setattr(locks, "_before_break", hold_b_back)
    outcome: list[BaseException | None] = []

    def b_run() -> None:
        try:
            FileLock(path, "point").acquire(wait=0)
            outcome.append(None)
        except BaseException as exc:  # the test reads it below
            outcome.append(exc)

    b = threading.Thread(target=b_run, name="B")
    b.start()
    assert b_judged.wait(30)
    a = FileLock(path, "point")
    a.acquire(wait=0)  # A breaks the stale lock and holds a new one
    try:
        a_holds.set()
        b.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], LockHeldError), outcome
        assert a.owned() and read_holder(path)["pid"] == os.getpid()
        assert outcome[0].holder["token"] == read_holder(path)["token"]
        assert leftovers(tmp_path) == []
    finally:
        a.release()
    assert not path.exists()


@pytest.mark.parametrize("token", ["old", None])
def test_racing_breakers_never_hold_at_once(tmp_path, monkeypatch, token):
    """Four threads race to break a stale lock, 150 times: each time exactly one holds it."""
    path = tmp_path / "point.lock"
    rng = random.Random(7)
    monkeypatch.setattr(locks, "_before_break", lambda p: time.sleep(rng.random() * 0.002))
    n, rounds = 4, 150
    start, tried, done = (threading.Barrier(n + 1) for _ in range(3))
    held = [[False] * n for _ in range(rounds)]
    owned = [[False] * n for _ in range(rounds)]
    errors: list[BaseException] = []

    def contender(i: int) -> None:
        lock = FileLock(path, "point")
        for r in range(rounds):
            start.wait()
            try:
                lock.acquire(wait=0)
                held[r][i] = True
            except LockHeldError:
                pass
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
            tried.wait()  # every contender has tried while the winner still holds
            owned[r][i] = held[r][i] and lock.owned()
            if held[r][i]:
                lock.release()
            done.wait()

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for r in range(rounds):
        plant_stale(path, token if token is None else f"{token}-{r}")
        start.wait()
        tried.wait()
        done.wait()
        assert not path.exists()  # released by its one holder
    for t in threads:
        t.join(60)
    assert errors == []
    assert [sum(h) for h in held] == [1] * rounds  # one holder each round, never two
    assert owned == held  # and its lock file was never taken from it
    assert leftovers(tmp_path) == []


BREAKER = (
    "import os, sys, time\n"
    f"import {locks.__name__} as locks\n"
    "make = locks._create\n"
    "def create(p, token):\n"
    "    made = make(p, token)\n"
    "    if '.break-' in p.name:  # claimed the stale lock, then dies or hangs\n"
    "        os._exit(7) if sys.argv[2] == 'die' else time.sleep(60)\n"
    "    return made\n"
    "locks._create = create\n"
    "locks.FileLock(sys.argv[1], 'point').acquire()\n"
)


def breaker(path: Path, how: str) -> subprocess.Popen:
    """A process that claims the right to break ``path``, then dies or hangs."""
    root = str(Path(__file__).resolve().parents[1])  # this checkout's varbench
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", BREAKER, str(path), how], env=env)
    deadline = time.monotonic() + 60
    while not [p for p in path.parent.iterdir() if ".break-" in p.name]:
        assert proc.poll() in (None, 7) and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_claim_of_a_breaker_that_died_is_cleared(tmp_path):
    """A breaker killed between claiming and deleting leaves its claim; the next one goes on."""
    path = tmp_path / "point.lock"
    plant_stale(path)
    proc = breaker(path, "die")
    assert proc.wait(60) == 7
    (claim,) = [p for p in tmp_path.iterdir() if ".break-" in p.name]
    assert json.loads(claim.read_text())["pid"] == proc.pid
    assert path.exists()  # the stale lock is still there
    with FileLock(path, "point") as lock:  # the claim's writer is dead on this host: cleared
        assert lock.owned()
        assert leftovers(tmp_path) == []
    assert not path.exists()


def test_claim_of_a_live_breaker_is_respected(tmp_path):
    """While a live process holds the claim, others wait for it and then name it, not break."""
    path = tmp_path / "point.lock"
    plant_stale(path)
    proc = breaker(path, "hang")
    try:
        t0 = time.monotonic()
        with pytest.raises(LockHeldError) as err:
            FileLock(path, "point").acquire(wait=0.5)
        assert 1.5 <= time.monotonic() - t0 < 10  # the wait, then a second for a break to end
        assert err.value.holder["pid"] == proc.pid and ".break-" in err.value.path.name
        assert f"pid {proc.pid}" in str(err.value)
        assert json.loads(path.read_text())["host"] == "elsewhere"  # not broken by this one
    finally:
        proc.kill()
        proc.wait()
