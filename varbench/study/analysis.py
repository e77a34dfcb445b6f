"""Votes -> the study's tables: preference with intervals, Bradley-Terry, raters, agreement.

Deterministic: votes are ordered by (rater, trial) and every bootstrap is seeded, so the same
votes give the same numbers however and in what order they arrived.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from varbench.study import stats
from varbench.study.db import meta, open_study

PAPER_KIND = (
    "wilson: a binomial interval on votes, the kind of number the Semantica paper reports "
    "(57 % [54, 59] fits ~1,000-2,000 votes; the paper names neither method nor raters); "
    "cluster_bootstrap also resamples raters and conditioning images and is the honest one "
    "when votes share raters or images"
)


@dataclass(frozen=True)
class Options:
    """How `varbench study results` analyses the votes."""

    exclude_failed_checks: bool = False
    n_boot: int = 2000  # cluster bootstrap of preference rates
    n_boot_bt: int = 100  # resamples of battles for Bradley-Terry (FastChat's default)
    seed: int = 0
    level: float = 0.95


def load_votes(con) -> pd.DataFrame:
    """Every vote with its trial, ordered by (rater, trial)."""
    return pd.read_sql_query(
        "SELECT v.rater_id AS rater, v.trial_id AS trial, v.choice, v.left_model, "
        "v.right_model, v.ms, t.kind, t.cond, t.expected, t.repeat_of FROM votes v "
        "JOIN trials t ON t.id = v.trial_id ORDER BY v.rater_id, v.trial_id",
        con,
    )


def chosen(df: pd.DataFrame) -> pd.Series:
    """The system each vote chose, or 'tie'."""
    return pd.Series(
        np.where(
            df["choice"] == "left",
            df["left_model"],
            np.where(df["choice"] == "right", df["right_model"], "tie"),
        ),  # fmt: skip
        index=df.index,
    )


def rater_table(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: votes, attention-check failures, consistency on repeated trials."""
    pick = chosen(votes)
    key = dict(zip(zip(votes["rater"], votes["trial"], strict=True), pick, strict=True))
    rows = []
    for rater, g in votes.groupby("rater", sort=True):
        checks = g[g["kind"] == "check"]
        reps = g[g["kind"] == "repeat"]
        pairs = [(key[(rater, int(o))], key[(rater, int(t))]) for t, o in
                 zip(reps["trial"], reps["repeat_of"], strict=True)
                 if (rater, int(o)) in key]  # fmt: skip
        same = sum(a == b for a, b in pairs)
        rows.append({
            "rater": int(rater),
            "votes": int(len(g)),
            "checks": int(len(checks)),
            "check_failures": int((checks["choice"] != checks["expected"]).sum()),
            "repeat_pairs": len(pairs),
            "consistency": same / len(pairs) if pairs else math.nan,
            "median_ms": float(g["ms"].median()) if g["ms"].notna().any() else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["rater", "votes", "checks", "check_failures",
                                       "repeat_pairs", "consistency", "median_ms"])  # fmt: skip


def _system_shares(main: pd.DataFrame, systems: list[str], opts: Options) -> list[dict]:
    """Each system's share of its battles won (ties half), Wilson and cluster bootstrap."""
    out = []
    pick = chosen(main)
    for s in systems:
        mine = (main["left_model"] == s) | (main["right_model"] == s)
        sub = main[mine]
        y = np.where(pick[mine] == s, 1.0, np.where(pick[mine] == "tie", 0.5, 0.0))
        w = stats.wilson(float(y.sum()), float(len(y)), opts.level)
        b = stats.cluster_bootstrap(y, sub["rater"].to_numpy(), sub["cond"].to_numpy(),
                                    opts.n_boot, opts.level, opts.seed)  # fmt: skip
        out.append({"system": s, "votes": int(len(y)), "human_pref": w.estimate,
                    "wilson_lo": w.lo, "wilson_hi": w.hi,
                    "bootstrap_lo": b.lo, "bootstrap_hi": b.hi})  # fmt: skip
    return out


def analyse(path: Path, opts: Options | None = None) -> dict:
    """All of the study's statistics as one JSON-able dict."""
    opts = opts or Options()
    con = open_study(Path(path), check=True)
    info = meta(con)
    votes = load_votes(con)
    con.close()
    systems_meta = json.loads(info.get("systems", "[]"))
    systems = [s["label"] for s in systems_meta]
    raters = rater_table(votes)
    excluded: list[int] = []
    if opts.exclude_failed_checks:
        excluded = raters.loc[raters["check_failures"] > 0, "rater"].astype(int).tolist()
        votes = votes[~votes["rater"].isin(excluded)]
    main = votes[votes["kind"] == "main"].reset_index(drop=True)
    out: dict = {
        "study": str(path),
        "protocol": info.get("protocol"),
        "manifest_sha256": info.get("manifest_sha256"),
        "systems": systems_meta,
        "n_votes": int(len(votes)),
        "n_main_votes": int(len(main)),
        "n_raters": int(votes["rater"].nunique()),
        "excluded_raters": excluded,
        "options": {"exclude_failed_checks": opts.exclude_failed_checks, "n_boot": opts.n_boot,
                    "n_boot_bt": opts.n_boot_bt, "seed": opts.seed, "level": opts.level},
    }  # fmt: skip
    out["per_system"] = _system_shares(main, systems, opts)
    idx = {s: i for i, s in enumerate(systems)}
    y = main["choice"].map({"left": 1.0, "right": 0.0, "tie": 0.5}).to_numpy(dtype=np.float64)
    a = main["left_model"].map(idx).to_numpy(dtype=np.int64)
    b = main["right_model"].map(idx).to_numpy(dtype=np.int64)
    if len(systems) == 2:
        first, second = systems
        pick = chosen(main)
        ya = np.where(pick == first, 1.0, np.where(pick == "tie", 0.5, 0.0))
        w = stats.wilson(float(ya.sum()), float(len(ya)), opts.level)
        bs = stats.cluster_bootstrap(ya, main["rater"].to_numpy(), main["cond"].to_numpy(),
                                     opts.n_boot, opts.level, opts.seed)  # fmt: skip
        out["preference"] = {
            "system": first, "over": second, "votes": int(len(ya)),
            "ties": int((main["choice"] == "tie").sum()), "rate": w.estimate,
            "wilson": [w.lo, w.hi], "cluster_bootstrap": [bs.lo, bs.hi],
            "paper_kind": PAPER_KIND,
        }  # fmt: skip
    if len(main):
        elo, lo, hi = stats.bt_bootstrap(y, a, b, len(systems), opts.n_boot_bt, opts.level,
                                         opts.seed)  # fmt: skip
        out["bradley_terry"] = sorted(
            [{"system": s, "elo": float(elo[i]), "lo": float(lo[i]), "hi": float(hi[i])}
             for i, s in enumerate(systems)], key=lambda r: -r["elo"])  # fmt: skip
        wm = stats.win_matrix(y, a, b, len(systems))
        out["win_matrix"] = {s: {t: (None if math.isnan(wm[i, j]) else float(wm[i, j]))
                                 for j, t in enumerate(systems) if j != i}
                             for i, s in enumerate(systems)}  # fmt: skip
    units = [list(g) for _, g in chosen(main).groupby(main["trial"]) if len(g) >= 2]
    out["agreement"] = {
        "krippendorff_alpha_nominal": stats.krippendorff_alpha_nominal(units),
        "trials_seen_by_several": len(units),
    }
    out["raters"] = rater_table(votes).to_dict("records")
    return _clean(out)


def _clean(obj):
    """NaN -> None and numpy scalars -> Python, for strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def system_rows(result: dict) -> pd.DataFrame:
    """One row per system: model, sweep point and its human preference (the parquet output)."""
    bt = {r["system"]: r for r in result.get("bradley_terry", [])}
    rows = []
    for sys_meta, share in zip(result["systems"], result["per_system"], strict=True):
        r = bt.get(share["system"], {})
        rows.append({
            "system": share["system"], "model": sys_meta["model"],
            "params": json.dumps(sys_meta.get("params", {}), sort_keys=True),
            "protocol": result["protocol"], "run_id": sys_meta["run_id"],
            "human_pref": share["human_pref"], "human_pref_wilson_lo": share["wilson_lo"],
            "human_pref_wilson_hi": share["wilson_hi"],
            "human_pref_bootstrap_lo": share["bootstrap_lo"],
            "human_pref_bootstrap_hi": share["bootstrap_hi"], "human_votes": share["votes"],
            "human_elo": r.get("elo"), "human_elo_lo": r.get("lo"), "human_elo_hi": r.get("hi"),
            "human_raters": result["n_raters"], "study": result["study"],
        })  # fmt: skip
    return pd.DataFrame(rows)
