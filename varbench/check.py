"""Regression gate: compare measured result rows with a baseline, metric by metric, direction-aware."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from varbench.errors import UsageError
from varbench.leaderboard import collect
from varbench.results import read_results

# +1: higher is better; -1: lower is better.
DIRECTIONS = {
    "fid": -1,
    "kid": -1,
    "sfid": -1,
    "fd_dinov2": -1,
    "precision": 1,
    "recall": 1,
    "density": 1,
    "coverage": 1,
    "isc": 1,
}
DEFAULT_TOLERANCE = {"fid": 0.0, "kid": 0.0, "precision": 0.0, "recall": 0.0}
KEY = ["model", "protocol", "params"]


@dataclass(frozen=True)
class Finding:
    """One metric of one (model, protocol, params) compared with its baseline."""

    model: str
    protocol: str
    params: str
    metric: str
    baseline: float
    measured: float
    tolerance: float
    ok: bool

    def describe(self) -> str:
        """One human-readable line."""
        verdict = "ok" if self.ok else "REGRESSION"
        return (
            f"{verdict}: {self.model} {self.protocol} {self.params} {self.metric} "
            f"{self.measured:.6g} vs baseline {self.baseline:.6g} (tolerance {self.tolerance:g})"
        )


def parse_tolerances(text: str | None) -> dict[str, float]:
    """``"fid=0.5,recall=0.01"`` -> dict; metric names must have a known direction."""
    if not text:
        return dict(DEFAULT_TOLERANCE)
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DIRECTIONS:
            raise UsageError(
                f"--tolerance {item!r}: expected METRIC=VALUE with METRIC in {', '.join(DIRECTIONS)}"
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise UsageError(f"--tolerance {item!r}: {value!r} is not a number") from None
    return out


def load_rows(path: Path) -> pd.DataFrame:
    """A results.parquet file, or every results.parquet under a folder."""
    path = Path(path)
    if path.is_file():
        return read_results(path)
    if path.is_dir():
        return collect(path, include_published=False)
    raise UsageError(f"{path}: no such results file or runs folder")


def check(
    measured: pd.DataFrame, baseline: pd.DataFrame, tolerances: dict[str, float]
) -> list[Finding]:
    """Every (row, metric) with a baseline: ok when not worse than baseline by more than tolerance."""
    findings = []
    base = {tuple(r[k] for k in KEY): r for r in baseline.to_dict("records")}
    for row in measured.to_dict("records"):
        ref = base.get(tuple(row[k] for k in KEY))
        if ref is None:
            continue
        for metric, tol in tolerances.items():
            b, m = ref.get(metric), row.get(metric)
            if b is None or m is None or (isinstance(b, float) and math.isnan(b)):
                continue
            worse_by = (b - m) * DIRECTIONS[metric]
            ok = not (isinstance(m, float) and math.isnan(m)) and worse_by <= tol
            findings.append(
                Finding(
                    row["model"],
                    row["protocol"],
                    row["params"],
                    metric,
                    float(b),
                    float(m),
                    tol,
                    ok,
                )
            )
    return findings
