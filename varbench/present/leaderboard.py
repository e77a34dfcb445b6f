"""Aggregate every run's results.parquet (plus the papers' published numbers) into one table."""

from __future__ import annotations

import csv
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from varbench.metrics.keys import sort_best_first
from varbench.runs.results import published_results, read_run_results, rows_to_table, write_results

DISPLAY_COLUMNS = [
    "model",
    "protocol",
    "params",
    "fid",
    "kid",
    "precision",
    "recall",
    "n_samples",
    "source",
]


def published_rows_from_csv(path: Path | None = None) -> list[dict]:
    """Rows of ``results/published.csv`` (the reviewable source of ``published.parquet``)."""
    if path is None:
        path = Path(str(resources.files("varbench_results").joinpath("published.csv")))
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "model": r["model"],
                    "protocol": r["protocol"],
                    "params": json.dumps(json.loads(r["params"]), sort_keys=True),
                    "fid": float(r["fid"]) if r["fid"] else None,
                    "kid": float(r["kid"]) if r["kid"] else None,
                    "source": r["source"],
                    "notes": r["notes"],
                }
            )
    return rows


def build_published(csv_path: Path, parquet_path: Path) -> None:
    """Regenerate ``published.parquet`` from ``published.csv``."""
    write_results(parquet_path, published_rows_from_csv(csv_path))


def collect(runs_dir: Path, include_published: bool = True) -> pd.DataFrame:
    """All result rows under ``runs_dir`` (recursively), plus published rows.

    A damaged results.parquet is named in a warning and replaced by its run's per-point
    result.json rows (or skipped when there are none).
    """
    if not Path(runs_dir).is_dir():
        from varbench.errors import UsageError

        raise UsageError(
            f"--runs {runs_dir}: no such folder (where `varbench run --out` wrote runs)"
        )
    frames = [read_run_results(p) for p in sorted(Path(runs_dir).rglob("results.parquet"))]
    if include_published:
        frames.append(published_results())
    frames = [f for f in frames if not f.empty]
    if not frames:
        return rows_to_table([]).to_pandas()
    return pd.concat(frames, ignore_index=True)


def select(df: pd.DataFrame, protocol: str | None = None, model: str | None = None) -> pd.DataFrame:
    """Filter by protocol (name or label) and model; sort best first (``keys.RANK_BY``)."""
    if protocol:
        base = df["protocol"].str.split("[", n=1, regex=False).str[0]
        df = df[(df["protocol"] == protocol) | (base == protocol)]
    if model:
        df = df[df["model"] == model]
    return sort_best_first(df).reset_index(drop=True)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_value(value):
    """A cell as a JSON value: numpy scalars unwrapped, missing and non-finite numbers as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):  # e.g. ``vs_best`` (varbench.present.compare)
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value if isinstance(value, (str, int)) else str(value)


def render(df: pd.DataFrame, fmt: str, columns: list[str] | None = None) -> str | None:
    """csv | markdown | json as a string; 'table' prints a rich table and returns None."""
    cols = [c for c in (columns or DISPLAY_COLUMNS) if c in df.columns]
    view = df[cols]
    if fmt == "csv":
        return view.to_csv(index=False)
    if fmt == "json":  # all columns; NaN -> null; floats exact (to_json rounds to 10 digits)
        return json.dumps(
            [{k: _json_value(v) for k, v in r.items()} for r in df.to_dict("records")], indent=2
        )
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += [
            "| " + " | ".join(_fmt(v) for v in row) + " |" for row in view.itertuples(index=False)
        ]
        return "\n".join(lines) + "\n"
    from rich.console import Console
    from rich.table import Table

    table = Table(title="varbench leaderboard (best first)")
    for c in cols:
        table.add_column(
            c, justify="right" if c not in ("model", "protocol", "params", "source") else "left"
        )
    for row in view.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    import sys

    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return None
