"""SIGINT/SIGTERM during a run: stop at once, keep every finished file, say how to resume.

Typer/click turn KeyboardInterrupt into a silent "Aborted!" exit, and SLURM preemption sends
SIGTERM, which Python does not handle at all. While a run is active both signals raise
``Interrupted`` (a BaseException, so no ``except Exception`` swallows it) in the main thread;
atomic writes remove their temp file on the way out and locks are released by their context
managers, so nothing partial is left and a re-run resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """The run was stopped by a signal; finished samples, features and results are kept."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        """Shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
