"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class VarbenchError(Exception):
    """Base class for errors whose message tells the user what to fix."""

    exit_code = 2


class UsageError(VarbenchError):
    """A flag, option or name the user gave is wrong."""


class DatasetError(VarbenchError):
    """The dataset on disk does not fit the protocol (all problems found at once)."""

    SHOWN = 40  # problems in the message: a wrong folder can give one per class

    def __init__(self, root: str, problems: list[str], outcome: str = "nothing was generated"):
        self.root = root
        self.problems = list(problems)  # all of them; the message shows the first SHOWN
        lines = "\n".join(f"  - {p}" for p in self.problems[: self.SHOWN])
        if len(self.problems) > self.SHOWN:
            lines += f"\n  ... and {len(self.problems) - self.SHOWN} more"
        super().__init__(f"dataset {root} has {len(self.problems)} problem(s); {outcome}:\n{lines}")


class ManifestMismatchError(VarbenchError):
    """The dataset changed since the run's manifest was written."""


class WeightsUnavailableError(VarbenchError):
    """Model or encoder weights are not on disk and cannot be downloaded."""


class DiskFullError(VarbenchError):
    """No space left while writing; nothing partial was kept, and a re-run resumes."""

    exit_code = 4
