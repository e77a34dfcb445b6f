"""`varbench baseline`: freeze measured rows (values, intervals, provenance) as a CI baseline."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from varbench.errors import UsageError
from varbench.present.leaderboard import collect, select
from varbench.runs.results import schema, write_results

log = logging.getLogger(__name__)


def baseline_rows(
    runs: Path, protocols: list[str] | None = None, models: list[str] | None = None
) -> pd.DataFrame:
    """Measured rows under ``runs`` (never published ones), optionally filtered."""
    df = collect(runs, include_published=False)
    if protocols:
        df = pd.concat([select(df, p) for p in protocols], ignore_index=True)
    if models:
        df = df[df["model"].isin(models)]
    if df.empty:
        raise UsageError(f"--runs {runs}: no finished run matches (need results.parquet rows)")
    dup = df.duplicated(["model", "protocol", "params"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise UsageError(
            f"--runs {runs}: several runs of {first['model']} {first['protocol']} "
            f"{first['params']} (e.g. other options); give a folder with one run each"
        )
    return df.reset_index(drop=True)


def write_baseline(df: pd.DataFrame, out: Path) -> Path:
    """Write rows with the current schema (columns it lacks are dropped, missing ones null)."""
    names = set(schema().names)
    dropped = sorted(set(df.columns) - names)
    if dropped:
        log.warning("baseline: columns not in this varbench's schema dropped: %s", dropped)
    rows = [{k: v for k, v in r.items() if k in names} for r in df.to_dict("records")]
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and math.isnan(v):
                r[k] = None
    if not any(k.endswith("_lo") and v is not None for r in rows for k, v in r.items()):
        log.warning("baseline: no interval columns (*_lo/*_hi); --tolerance ci will skip them")
    write_results(Path(out), rows)
    return Path(out)
