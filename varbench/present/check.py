"""Regression gate: compare measured result rows with a baseline, metric by metric, direction-aware."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from varbench.errors import UsageError
from varbench.metrics import metric_registry
from varbench.metrics.keys import ranked_keys, result_key
from varbench.present.leaderboard import collect
from varbench.runs.results import read_run_results

DEFAULT_TOLERANCE: dict[str, float | str] = {
    "fid": 0.0,
    "kid": 0.0,
    "precision": 0.0,
    "recall": 0.0,
}
CI = "ci"  # tolerance value: the baseline row's own interval ({metric}_lo, {metric}_hi)
CI_AUTO = (
    "ci-auto"  # bare --tolerance ci: metrics whose baseline row has no interval are not checked
)
KEY = ["model", "protocol", "params"]


@dataclass(frozen=True)
class Finding:
    """One metric of one (model, protocol, params) compared with its baseline.

    ``status`` is ``ok``, ``regression``, ``no_baseline`` (measured row without a baseline row:
    reported, never failed) or ``no_interval`` (``ci`` asked for, baseline has no interval).
    """

    model: str
    protocol: str
    params: str
    metric: str
    baseline: float | None
    measured: float | None
    tolerance: float | str | None
    ok: bool
    status: str = "ok"
    baseline_lo: float | None = None
    baseline_hi: float | None = None

    def describe(self) -> str:
        """One line for CI logs, naming the metric."""
        where = f"{self.model} {self.protocol} {self.params}"
        if self.status == "no_baseline":
            return f"no baseline: {where} (reported, not checked)"
        if self.status == "no_interval":
            return f"skipped: {where} {self.metric}: baseline row has no {self.metric}_lo/_hi"
        verdict = "ok" if self.ok else "REGRESSION"
        if self.tolerance in (CI, CI_AUTO):
            bound = (
                f"interval [{_g(self.baseline_lo)}, {_g(self.baseline_hi)}]"
                f" ({_bound_side(self.metric)})"
            )
        else:
            bound = f"tolerance {self.tolerance:g}"
        return (
            f"{verdict}: {where} {self.metric} {_g(self.measured)} vs baseline "
            f"{_g(self.baseline)} {bound}"
        )


def _bound_side(metric: str) -> str:
    better = result_key(metric).better
    return "upper bound" if better < 0 else "lower bound" if better > 0 else "both bounds"


def _g(value: float | None) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.6g}"


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _tolerance_keys(name: str, item: str) -> list[str]:
    """The result keys a --tolerance name stands for: a key, or every ranked key of a metric."""
    if name in metric_registry and name not in ranked_keys():
        keys = [k.name for k in metric_registry.get(name).results if k.better]
        if keys:
            return keys
    return [result_key(name, f"--tolerance {item!r}: metric").name]


def parse_tolerances(text: str | None) -> dict[str, float | str]:
    """``"fid=0.5,recall=0.01"`` -> dict; ``"ci"`` -> every ranked key by its interval.

    Names are result keys (``vendi_cond_mean``) or metric names (``vendi``: its ranked keys);
    ``ci`` may be combined with explicit values (``ci,kid=0.001``): explicit values win. Bare
    ``ci`` checks the keys whose baseline row has an interval; ``kid=ci`` reports a missing one.
    Keys without a better direction (``ct_score``) are checked two-sided.
    """
    if not text:
        return dict(DEFAULT_TOLERANCE)
    out: dict[str, float | str] = {}
    explicit: dict[str, float | str] = {}
    for item in text.split(","):
        item = item.strip()
        if item == CI:
            out.update({m: CI_AUTO for m in ranked_keys()})
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(
                f"--tolerance {item!r}: expected 'ci' or KEY=VALUE (e.g. fid=0.5, vendi=0.2, "
                "recall=ci); keys: `varbench list metrics`"
            )
        keys = _tolerance_keys(name.strip(), item)
        if value.strip() == CI:
            explicit.update({k: CI for k in keys})
            continue
        try:
            tol = float(value)
        except ValueError:
            raise UsageError(f"--tolerance {item!r}: {value!r} is not a number or 'ci'") from None
        if not tol >= 0:
            raise UsageError(f"--tolerance {item!r}: a tolerance is a margin >= 0")
        explicit.update({k: tol for k in keys})
    out.update(explicit)
    return out


def load_rows(path: Path) -> pd.DataFrame:
    """A results.parquet file, or every results.parquet under a folder.

    A damaged file falls back to its run's per-point result.json rows; with none, an error
    naming it (a baseline that silently read as empty would pass every check).
    """
    path = Path(path)
    if path.is_file():
        return read_run_results(path, strict=True)
    if path.is_dir():
        return collect(path, include_published=False)
    raise UsageError(f"{path}: no such results file or runs folder")


def _compare(metric: str, tol: float | str, ref: dict, m: float | None) -> tuple[str, bool]:
    """(status, ok) of one metric: ci uses the baseline's own interval, numbers a margin."""
    b = _num(ref.get(metric))
    direction = result_key(metric).better
    if tol in (CI, CI_AUTO):
        lo, hi = _num(ref.get(f"{metric}_lo")), _num(ref.get(f"{metric}_hi"))
        needed = (lo, hi) if direction == 0 else (hi,) if direction < 0 else (lo,)
        if any(v is None for v in needed):
            return ("skip" if tol == CI_AUTO else "no_interval"), True
        if direction == 0:
            ok = m is not None and lo <= m <= hi
        else:
            ok = m is not None and (m <= hi if direction < 0 else m >= lo)
    elif direction == 0:  # no better direction: either way beyond the margin is a change
        ok = m is not None and abs(b - m) <= float(tol)
    else:
        ok = m is not None and (b - m) * direction <= float(tol)
    return ("ok" if ok else "regression"), ok


def check(
    measured: pd.DataFrame, baseline: pd.DataFrame, tolerances: dict[str, float | str]
) -> list[Finding]:
    """Every (row, metric) with a baseline value; rows without a baseline row are reported.

    A metric regresses when the measured value is worse than the baseline by more than its
    tolerance, or with ``ci`` when it lies beyond the baseline's interval in the worse direction
    (above ``_hi`` for lower-is-better metrics, below ``_lo`` for higher-is-better ones); a value
    exactly on the bound passes. A NaN measured value where the baseline has one is a regression.
    """
    findings = []
    base = {tuple(r[k] for k in KEY): r for r in baseline.to_dict("records")}
    for row in measured.to_dict("records"):
        key = tuple(row[k] for k in KEY)
        ref = base.get(key)
        if ref is None:
            findings.append(Finding(*key, metric="", baseline=None, measured=None,
                                    tolerance=None, ok=True, status="no_baseline"))  # fmt: skip
            continue
        for metric, tol in tolerances.items():
            b = _num(ref.get(metric))
            if b is None:
                continue
            m = _num(row.get(metric))
            status, ok = _compare(metric, tol, ref, m)
            if status == "skip":
                continue
            findings.append(
                Finding(
                    *key,
                    metric=metric,
                    baseline=b,
                    measured=m,
                    tolerance=tol,
                    ok=ok,
                    status=status,
                    baseline_lo=_num(ref.get(f"{metric}_lo")),
                    baseline_hi=_num(ref.get(f"{metric}_hi")),
                )
            )
    return findings


def to_junit(findings: list[Finding]) -> str:
    """JUnit XML: one test case per checked metric, a <failure> per regression."""
    from xml.sax.saxutils import quoteattr

    cases = [f for f in findings if f.status != "no_baseline"]
    fails = sum(not f.ok for f in cases)
    skipped = sum(f.status == "no_interval" for f in cases)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="varbench check" tests="{len(cases)}" failures="{fails}" '
        f'skipped="{skipped}">',
    ]
    for f in findings:
        name = quoteattr(f"{f.metric or 'row'} {f.params}")
        klass = quoteattr(f"{f.model}.{f.protocol}")
        out.append(f"  <testcase classname={klass} name={name}>")
        if f.status == "no_baseline" or f.status == "no_interval":
            out.append(f"    <skipped message={quoteattr(f.describe())}/>")
        elif not f.ok:
            out.append(f"    <failure message={quoteattr(f.describe())}/>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"
