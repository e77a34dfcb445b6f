"""Rich tables of a study's results (stdout, for `varbench study results --format table`)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def print_tables(result: dict) -> None:
    """Preference, Bradley-Terry, win rates, raters and agreement as rich tables."""
    con = Console(width=None if sys.stdout.isatty() else 160)
    pref = result.get("preference")
    if pref:
        t = Table(title=f"{pref['system']} preferred over {pref['over']} (% of votes, ties half)")
        for c in ("votes", "rate", "Wilson 95 %", "cluster bootstrap 95 %"):
            t.add_column(c, justify="right")
        w, b = pref["wilson"], pref["cluster_bootstrap"]
        t.add_row(str(pref["votes"]), _pct(pref["rate"]), f"[{_pct(w[0])}, {_pct(w[1])}]",
                  f"[{_pct(b[0])}, {_pct(b[1])}]")  # fmt: skip
        con.print(t)
        con.print("Wilson is the paper's kind of number (binomial on votes); the bootstrap also "
                  "resamples raters and images.", markup=False)  # fmt: skip
    if result.get("bradley_terry"):
        t = Table(title="Bradley-Terry (Elo scale, 95 % two-way bootstrap: raters x images)")
        for c in ("system", "elo", "interval", "share won", "votes"):
            t.add_column(c, justify="left" if c == "system" else "right")
        share = {r["system"]: r for r in result["per_system"]}
        for r in result["bradley_terry"]:
            s = share[r["system"]]
            if r["flag"]:
                elo, ci = r["flag"].replace("_", " "), "no finite rating"
            else:
                elo, ci = f"{r['elo']:.0f}", f"[{r['lo']:.0f}, {r['hi']:.0f}]"
            t.add_row(r["system"], elo, ci, _pct(s["human_pref"]), str(s["votes"]))
        con.print(t)
        if result.get("side_effect"):
            se = result["side_effect"]
            con.print(f"Left-side term: {se['left_elo_points']:+.0f} Elo points "
                      f"[{se['lo']:+.0f}, {se['hi']:+.0f}]", markup=False)  # fmt: skip
        names = [r["system"] for r in result["bradley_terry"]]
        t = Table(title="Win rate (row beats column, %)")
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for n in names:
            t.add_row(n, *("" if m == n else _pct(result["win_matrix"][n][m]) for m in names))
        con.print(t)
    rule = result["rule"]
    parts = [f"more than {rule['max_failed_checks']} failed checks"]
    if rule["min_median_ms"]:
        parts.append(f"median under {rule['min_median_ms']} ms")
    if rule["max_side_share"] < 1:
        parts.append(f"one side above {100 * rule['max_side_share']:.0f} % with fair-coin "
                     f"p < {rule['side_alpha']:g}")  # fmt: skip
    t = Table(title=f"Raters (excluded: {', '.join(parts)})")
    for c in ("rater", "external id", "votes", "checks", "failed", "consistency", "left %",
              "median ms", "excluded"):  # fmt: skip
        t.add_column(c, justify="right")
    for r in result["raters"]:
        med = "" if r["median_ms"] is None else f"{r['median_ms']:.0f}"
        t.add_row(str(r["rater"]), r["external_id"] or "", str(r["votes"]), str(r["checks"]),
                  str(r["check_failures"]), _pct(r["consistency"]), _pct(r["left_share"]), med,
                  r["reasons"] or "no")  # fmt: skip
    con.print(t)
    ag = result["agreement"]
    alpha, kappa = ag["krippendorff_alpha_nominal"], ag["fleiss_kappa"]
    left = result.get("left_share")
    con.print(
        f"Agreement over {ag['trials_seen_by_several']} trials seen by several raters: "
        f"Krippendorff's alpha (nominal) {'n/a' if alpha is None else f'{alpha:.3f}'}, "
        f"Fleiss' kappa {'n/a' if kappa is None else f'{kappa:.3f}'}. Left chosen in "
        f"{_pct(left) or 'n/a'} % of main votes.",
        markup=False,
    )
    for w in result.get("warnings", []):
        con.print(f"warning: {w}", markup=False)
