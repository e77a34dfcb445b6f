"""Human preference beside the metric rows: leaderboard columns and the report's section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from varbench.study.analysis import analyse, system_rows

HUMAN_COLUMNS = [
    "human_pref", "human_pref_wilson_lo", "human_pref_wilson_hi", "human_pref_bootstrap_lo",
    "human_pref_bootstrap_hi", "human_elo", "human_elo_lo", "human_elo_hi", "human_elo_flag",
    "human_votes", "human_raters", "study",
]  # fmt: skip


def study_rows(studies: list[Path]) -> pd.DataFrame:
    """One row per (study, system): the run and sweep point it came from and its preference.

    Each study is analysed under its own stored exclusion rule, so these are exactly the
    numbers `varbench study results` prints.
    """
    frames = [system_rows(analyse(Path(s))) for s in studies]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attach(df: pd.DataFrame, studies: list[Path]) -> pd.DataFrame:
    """``df`` (leaderboard rows) with the human columns filled for the runs in ``studies``.

    Rows match on the run and sweep point (``run_id``, ``params``), so a study built from one
    sweep point never lends its number to another. Later studies win for the same run/point.
    """
    if not studies:
        return df
    rows = study_rows(studies).drop_duplicates(["run_id", "params"], keep="last")
    keep = ["run_id", "params", *HUMAN_COLUMNS]
    out = df.merge(rows[keep], on=["run_id", "params"], how="left")
    return out


def preference_figure(rows: pd.DataFrame):
    """Each system's share of its comparisons won, with Wilson and cluster-bootstrap bars."""
    import matplotlib.pyplot as plt

    from varbench.present.plots import plain

    if rows.empty:
        return None
    labels = [plain(f"{s}  ({p})" if p != "{}" else s)
              for s, p in zip(rows["system"], rows["params"], strict=True)]  # fmt: skip
    y = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(rows)))
    est = rows["human_pref"].to_numpy(float)
    for lo_col, hi_col, off, colour, name in (
        ("human_pref_wilson_lo", "human_pref_wilson_hi", 0.1, "#2563eb", "Wilson 95 % (votes)"),
        ("human_pref_bootstrap_lo", "human_pref_bootstrap_hi", -0.1, "#dc2626",
         "bootstrap 95 % (raters x images)"),
    ):  # fmt: skip
        lo, hi = rows[lo_col].to_numpy(float), rows[hi_col].to_numpy(float)
        ax.errorbar(est, [v + off for v in y], xerr=[est - lo, hi - est], fmt="o", ms=4,
                    color=colour, capsize=3, label=name)  # fmt: skip
    ax.axvline(0.5, color="#888", lw=0.8, ls="--")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("share of comparisons preferred (ties half)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def _num(v, fmt: str = "{:.3g}") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if f != f else fmt.format(f)


def study_section(studies: list[Path], measured: pd.DataFrame) -> dict[str, Any] | None:
    """The report's "Human preference" section (templates/study.html): rows beside FID/recall."""
    from varbench.present.report_templates import figure

    rows = study_rows(studies)
    if rows.empty:
        return None
    metrics = [c for c in ("fid", "recall") if c in measured]
    if not measured.empty and metrics:
        rows = rows.merge(measured[["run_id", "params", *metrics]], on=["run_id", "params"],
                          how="left")  # fmt: skip
    head = ["system", "params", "preferred %", "Wilson 95 %", "bootstrap 95 %", "Elo",
            "votes", "raters", *metrics]  # fmt: skip
    pct = "{:.1f}"
    cells = [
        [
            str(r["system"]),
            str(r["params"]),
            _num(100 * r["human_pref"], pct),
            f"[{_num(100 * r['human_pref_wilson_lo'], pct)}, {_num(100 * r['human_pref_wilson_hi'], pct)}]",
            f"[{_num(100 * r['human_pref_bootstrap_lo'], pct)}, {_num(100 * r['human_pref_bootstrap_hi'], pct)}]",
            (
                f"{_num(r['human_elo'], '{:.0f}')} [{_num(r['human_elo_lo'], '{:.0f}')}, "
                f"{_num(r['human_elo_hi'], '{:.0f}')}]"
            )
            if not r.get("human_elo_flag")
            else str(r["human_elo_flag"]).replace("_", " "),
            str(r["human_votes"]),
            str(r["human_raters"]),
            *(_num(r.get(m)) for m in metrics),
        ]  # fmt: skip
        for r in rows.to_dict("records")
    ]
    caption = "Human preference with its 95 % intervals; dashed: no preference."
    fig = figure(preference_figure(rows), caption, "human preference")
    return {"head": head, "rows": cells, "figure": fig}
