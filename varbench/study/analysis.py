"""Votes -> the study's tables: preference with intervals, Bradley-Terry, raters, agreement.

The study's stored exclusion rule (``rules.ExclusionRule``) decides which raters count, here
and therefore in the leaderboard and report, which call ``analyse`` too. Deterministic: votes
are ordered by (rater, trial) and every bootstrap is seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from varbench.study import stats
from varbench.study.db import meta, open_study
from varbench.study.rules import ExclusionRule, tally

PAPER_KIND = (
    "wilson: a binomial interval on votes, the kind of number the Semantica paper reports "
    "(57 % [54, 59] fits ~1,000-2,000 votes; the paper names neither method nor raters); "
    "cluster_bootstrap also resamples raters and conditioning images and is the honest one "
    "when votes share raters or images"
)
MIN_CLUSTERS = 20


@dataclass(frozen=True)
class Options:
    """How `varbench study results` analyses the votes (the exclusion rule is the study's)."""

    n_boot: int = 1000  # two-way (rater x image) bootstrap: preference and Bradley-Terry
    seed: int = 0
    level: float = 0.95
    side_effect: bool = False  # Bradley-Terry with a left-side term


def load_votes(con) -> pd.DataFrame:
    """Every scored vote (practice left out) with its trial and rater, by (rater, trial)."""
    return pd.read_sql_query(
        "SELECT v.rater_id AS rater, r.external_id, v.trial_id AS trial, v.choice, "
        "v.left_model, v.right_model, v.ms, v.created_at, v.assignment_id, t.kind, t.cond, "
        "t.class_label, t.samples, t.expected, t.repeat_of, t.slice_id FROM votes v "
        "JOIN trials t ON t.id = v.trial_id JOIN raters r ON r.id = v.rater_id "
        "WHERE t.kind != 'practice' ORDER BY v.rater_id, v.trial_id",
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


RATER_COLUMNS = ["rater", "external_id", "votes", "checks", "check_failures", "repeat_pairs",
                 "consistency", "median_ms", "left", "right", "left_share", "excluded",
                 "reasons"]  # fmt: skip


def rater_table(votes: pd.DataFrame, rule: ExclusionRule) -> pd.DataFrame:
    """Per rater: votes, check failures, repeat consistency, side share, the rule's verdict."""
    pick = chosen(votes)
    key = dict(zip(zip(votes["rater"], votes["trial"], strict=True), pick, strict=True))
    rows = []
    for rater, g in votes.groupby("rater", sort=True):
        checks = g[g["kind"] == "check"]
        reps = g[g["kind"] == "repeat"]
        pairs = [(key[(rater, int(o))], key[(rater, int(t))]) for t, o in
                 zip(reps["trial"], reps["repeat_of"], strict=True)
                 if (rater, int(o)) in key]  # fmt: skip
        ms = [None if pd.isna(m) else m for m in g["ms"]]
        failed, median, left, right = tally(
            list(zip(g["kind"], g["choice"], g["expected"], ms, strict=True)))  # fmt: skip
        reasons = rule.reasons(failed, median, left, right)
        ext = g["external_id"].iloc[0]
        rows.append({
            "rater": int(rater), "external_id": None if pd.isna(ext) else str(ext),
            "votes": int(len(g)), "checks": int(len(checks)), "check_failures": failed,
            "repeat_pairs": len(pairs),
            "consistency": sum(a == b for a, b in pairs) / len(pairs) if pairs else math.nan,
            "median_ms": median, "left": left, "right": right,
            "left_share": left / (left + right) if left + right else math.nan,
            "excluded": bool(reasons), "reasons": "; ".join(reasons),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=RATER_COLUMNS)


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


def _bradley_terry(main: pd.DataFrame, systems: list[str], opts: Options) -> dict:
    """Elo with two-way bootstrap intervals; systems that never lose (or win) are flagged."""
    flagged: dict[str, str] = {}
    keep = list(systems)
    while True:  # an undefeated system has no finite rating: flag it, fit the others
        idx = {s: i for i, s in enumerate(keep)}
        sub = main[main["left_model"].isin(keep) & main["right_model"].isin(keep)]
        y = sub["choice"].map({"left": 1.0, "right": 0.0, "tie": 0.5}).to_numpy(np.float64)
        a = sub["left_model"].map(idx).to_numpy(np.int64)
        b = sub["right_model"].map(idx).to_numpy(np.int64)
        never_lost, never_won = stats.undefeated(y, a, b, len(keep))
        if not never_lost and not never_won:
            break
        for i in never_lost:
            flagged[keep[i]] = "never_loses"
        for i in never_won:
            flagged.setdefault(keep[i], "never_wins")
        keep = [s for s in keep if s not in flagged]
    rows = [{"system": s, "elo": None, "lo": None, "hi": None, "flag": f}
            for s, f in flagged.items()]  # fmt: skip
    out: dict = {}
    if len(keep) >= 2 and len(sub):
        est, lo, hi = stats.bt_bootstrap(y, a, b, len(keep), sub["rater"].to_numpy(),
                                         sub["cond"].to_numpy(), opts.n_boot, opts.level,
                                         opts.seed, side=opts.side_effect)  # fmt: skip
        elo, elo_lo, elo_hi = stats.to_elo(est), stats.to_elo(lo), stats.to_elo(hi)
        rows += [{"system": s, "elo": float(elo[i]), "lo": float(elo_lo[i]),
                  "hi": float(elo_hi[i]), "flag": None} for i, s in enumerate(keep)]  # fmt: skip
        if opts.side_effect:
            g, glo, ghi = est[-1], lo[-1], hi[-1]
            out["side_effect"] = {
                "left_elo_points": stats.elo_points(g), "lo": stats.elo_points(glo),
                "hi": stats.elo_points(ghi), "left_win_prob_even": 1 / (1 + math.exp(-g)),
            }  # fmt: skip
    else:
        rows += [{"system": s, "elo": None, "lo": None, "hi": None, "flag": "too_few_systems"}
                 for s in keep]  # fmt: skip
    out["bradley_terry"] = sorted(rows, key=lambda r: (
        {"never_loses": 0, None: 1, "too_few_systems": 1, "never_wins": 2}[r["flag"]],
        -(r["elo"] or 0)))  # fmt: skip
    return out


def analyse(path: Path, opts: Options | None = None) -> dict:
    """All of the study's statistics as one JSON-able dict, under the study's exclusion rule."""
    opts = opts or Options()
    con = open_study(Path(path), check=True)
    info = meta(con)
    votes = load_votes(con)
    con.close()
    rule = ExclusionRule.from_json(info.get("rule"))
    systems_meta = json.loads(info.get("systems", "[]"))
    systems = [s["label"] for s in systems_meta]
    raters = rater_table(votes, rule)
    excluded = raters.loc[raters["excluded"], "rater"].astype(int).tolist()
    kept = votes[~votes["rater"].isin(excluded)]
    main = kept[kept["kind"] == "main"].reset_index(drop=True)
    n_clusters = int(main["rater"].nunique())
    warnings = []
    if 0 < n_clusters < MIN_CLUSTERS:
        warnings.append(f"only {n_clusters} raters: with fewer than {MIN_CLUSTERS} rater "
                        "clusters the percentile bootstrap under-covers; read its intervals "
                        "as too narrow")  # fmt: skip
    side_votes = main[main["choice"] != "tie"]
    out: dict = {
        "study": str(path),
        "protocol": info.get("protocol"),
        "manifest_sha256": info.get("manifest_sha256"),
        "systems": systems_meta,
        "rule": asdict(rule),
        "n_votes": int(len(kept)),
        "n_main_votes": int(len(main)),
        "n_raters": int(kept["rater"].nunique()),
        "excluded_raters": excluded,
        "left_share": float((side_votes["choice"] == "left").mean()) if len(side_votes) else None,
        "warnings": warnings,
        "options": asdict(opts),
    }  # fmt: skip
    out["per_system"] = _system_shares(main, systems, opts)
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
        out.update(_bradley_terry(main, systems, opts))
        idx = {s: i for i, s in enumerate(systems)}
        y = main["choice"].map({"left": 1.0, "right": 0.0, "tie": 0.5}).to_numpy(np.float64)
        wm = stats.win_matrix(y, main["left_model"].map(idx).to_numpy(np.int64),
                              main["right_model"].map(idx).to_numpy(np.int64), len(systems))  # fmt: skip
        out["win_matrix"] = {s: {t: (None if math.isnan(wm[i, j]) else float(wm[i, j]))
                                 for j, t in enumerate(systems) if j != i}
                             for i, s in enumerate(systems)}  # fmt: skip
    units = [list(g) for _, g in chosen(main).groupby(main["trial"]) if len(g) >= 2]
    out["agreement"] = {
        "krippendorff_alpha_nominal": stats.krippendorff_alpha_nominal(units),
        "fleiss_kappa": stats.fleiss_kappa(units),
        "trials_seen_by_several": len(units),
    }
    out["raters"] = raters.to_dict("records")
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
    """One row per system: model, sweep point and its human preference (leaderboard columns)."""
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
            "human_elo_flag": r.get("flag"),
            "human_raters": result["n_raters"], "study": result["study"],
        })  # fmt: skip
    return pd.DataFrame(rows)
