"""The study's one exclusion rule: stored with the study, applied by the server and analysis.

A rater is excluded (screened out at the end of their slice, left out of every number and
listed to reject in ``study results --payments``) when any part of the rule fails: more failed
attention checks than ``max_failed_checks``, a median vote time under ``min_median_ms``, or one
side chosen in more than ``max_side_share`` of the main and repeat votes *and* more often than a
fair coin gives with two-sided probability ``side_alpha``. Sides are counterbalanced exactly, so
an honest rater's left share is a fair coin whatever they prefer; the probability bound keeps
honest raters from being excluded by chance (at most ``side_alpha`` each), while an always-left
clicker is caught from 15 votes on (2 / 2**15 < 1e-4).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from varbench.errors import UsageError


@dataclass(frozen=True)
class ExclusionRule:
    """When a rater's votes are left out (and their submission gets the screen-out code)."""

    max_failed_checks: int = 1  # Prolific allows rejecting on two failed checks, not one
    min_median_ms: int = 0  # 0: no speed limit
    max_side_share: float = 0.9  # always-left / always-right clickers
    side_alpha: float = 1e-4  # ... and less likely than this under a fair coin

    def validate(self) -> ExclusionRule:
        """Self, or a UsageError naming the flag and the fix."""
        if self.max_failed_checks < 0:
            raise UsageError(f"--max-failed-checks {self.max_failed_checks}: must be >= 0")
        if self.min_median_ms < 0:
            raise UsageError(f"--min-median-ms {self.min_median_ms}: must be >= 0 (0: off)")
        if not 0.5 < self.max_side_share <= 1:
            raise UsageError(
                f"--max-side-share {self.max_side_share}: must be above 0.5 and at most 1 (1: off)"
            )
        if not 0 < self.side_alpha < 1:
            raise UsageError(f"--side-alpha {self.side_alpha}: must be between 0 and 1")
        return self

    def to_json(self) -> str:
        """The rule as stored in the study's metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ExclusionRule:
        """The stored rule (the defaults when a study has none)."""
        return cls(**json.loads(text)) if text else cls()

    def reasons(self, checks_failed: int, median_ms: float, left: int, right: int) -> list[str]:
        """Why a rater with these counts is excluded (empty: kept)."""
        out = []
        if checks_failed > self.max_failed_checks:
            out.append(f"failed {checks_failed} attention checks (max {self.max_failed_checks})")
        if self.min_median_ms and not math.isnan(median_ms) and median_ms < self.min_median_ms:
            out.append(f"median vote time {median_ms:.0f} ms (min {self.min_median_ms})")
        n = left + right
        if n and self.max_side_share < 1:
            share, p = max(left, right) / n, fair_coin_p(left, right)
            if share > self.max_side_share and p < self.side_alpha:
                side = "left" if left >= right else "right"
                out.append(f"chose {side} in {100 * share:.0f} % of {n} votes "
                           f"(max {100 * self.max_side_share:.0f} %, fair-coin p = {p:.1g})")  # fmt: skip
        return out

    def catches_one_side_clicker(self, checks: int, side_votes: int) -> bool:
        """True when a rater clicking one side throughout a slice fails this rule."""
        by_checks = checks // 2 > self.max_failed_checks  # half the checks expect each side
        by_side = self.max_side_share < 1 and fair_coin_p(side_votes, 0) < self.side_alpha
        return by_checks or by_side


def fair_coin_p(left: int, right: int) -> float:
    """Two-sided exact binomial probability of a split at least this uneven under p = 1/2."""
    n, k = left + right, max(left, right)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n
    return min(1.0, 2 * tail)


def tally(rows) -> tuple[int, float, int, int]:
    """(failed checks, median ms, left, right) of one rater's (kind, choice, expected, ms) rows.

    Left and right count main and repeat votes; the median is over every scored vote's time.
    """
    failed = sum(1 for k, c, e, _ in rows if k == "check" and c != e)
    times = sorted(float(ms) for _, _, _, ms in rows if ms is not None)
    if times:
        mid = len(times) // 2
        median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    else:
        median = math.nan
    left = sum(1 for k, c, _, _ in rows if k in ("main", "repeat") and c == "left")
    right = sum(1 for k, c, _, _ in rows if k in ("main", "repeat") and c == "right")
    return failed, median, left, right
