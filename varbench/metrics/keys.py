"""The catalogue of result keys: every registered metric's ``ResultKey``s, read by name.

The one place check, compare, report, leaderboard and plots learn a key's direction, label and
unit (declared by each metric family in ``results``), and whether it has a 95 % interval
(``KEY_lo``/``KEY_hi`` columns, filled by the bootstrap metric).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import pandas as pd

from varbench.core.registry import suggest
from varbench.errors import UsageError
from varbench.metrics import metric_registry
from varbench.metrics.base import HIGHER, LOWER, ResultKey


@lru_cache(maxsize=1)
def _catalogue() -> MappingProxyType:
    return MappingProxyType(
        {k.name: k for name in metric_registry.names() for k in metric_registry.get(name).results}
    )


def result_keys() -> Mapping[str, ResultKey]:
    """Every registered result key by name, in registry order (read-only, built once)."""
    return _catalogue()


def result_key(name: str, what: str = "metric") -> ResultKey:
    """The declared key ``name``; an unknown name is a usage error listing the ranked keys."""
    keys = result_keys()
    if name not in keys:
        ranked = [k for k, v in keys.items() if v.better != 0]
        raise UsageError(
            f"unknown {what} {name!r}.{suggest(name, list(keys))} Result keys with a direction: "
            f"{', '.join(ranked)}"
        )
    return keys[name]


def ranked_keys() -> dict[str, ResultKey]:
    """Keys with a better direction (what a gate or a comparison can call worse)."""
    return {k: v for k, v in result_keys().items() if v.better in (HIGHER, LOWER)}


def has_interval(name: str) -> bool:
    """Whether the results carry ``name``'s 95 % interval as ``name_lo``/``name_hi``."""
    keys = result_keys()
    return f"{name}_lo" in keys and f"{name}_hi" in keys


def caption(name: str) -> str:
    """Axis or column caption: label, unit and direction, e.g. "FID (lower is better)"."""
    key = result_key(name)
    unit = f" [{key.unit}]" if key.unit else ""
    return f"{key.label}{unit}" + (f" ({key.direction_text})" if key.direction_text else "")


RANK_BY = ("fid", "kid")  # the headline ranking of leaderboards and reports: FID, then KID


def sort_best_first(df: pd.DataFrame, groups: tuple[str, ...] = ("protocol",)) -> pd.DataFrame:
    """Rows grouped by ``groups``, best first by ``RANK_BY`` (each key's own direction), stable."""
    ranks = [k for k in RANK_BY if k in df]
    tail = ["model"] if "model" in df else []
    by = [*groups, *ranks, *tail]
    asc = [True] * len(groups) + [result_key(k).better < 0 for k in ranks] + [True] * len(tail)
    return df.sort_values(by, ascending=asc, na_position="last", kind="mergesort")


def rank_value(row: Mapping[str, Any]) -> tuple[float, ...]:
    """Sort key of one row, best first by ``RANK_BY``; missing values last."""
    out = []
    for k in RANK_BY:
        try:
            v = float(row.get(k))
        except (TypeError, ValueError):
            v = float("nan")
        out.append(float("inf") if v != v else -v if result_key(k).better > 0 else v)
    return tuple(out)
