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
        t = Table(title="Bradley-Terry (Elo scale, 95 % bootstrap over battles)")
        for c in ("system", "elo", "interval", "share won", "votes"):
            t.add_column(c, justify="left" if c == "system" else "right")
        share = {r["system"]: r for r in result["per_system"]}
        for r in result["bradley_terry"]:
            s = share[r["system"]]
            t.add_row(r["system"], f"{r['elo']:.0f}", f"[{r['lo']:.0f}, {r['hi']:.0f}]",
                      _pct(s["human_pref"]), str(s["votes"]), )  # fmt: skip
        con.print(t)
        names = [r["system"] for r in result["bradley_terry"]]
        t = Table(title="Win rate (row beats column, %)")
        t.add_column("")
        for n in names:
            t.add_column(n, justify="right")
        for n in names:
            t.add_row(n, *("" if m == n else _pct(result["win_matrix"][n][m]) for m in names))
        con.print(t)
    t = Table(title="Raters")
    for c in ("rater", "votes", "checks", "check failures", "repeat pairs", "consistency"):
        t.add_column(c, justify="right")
    for r in result["raters"]:
        t.add_row(str(r["rater"]), str(r["votes"]), str(r["checks"]), str(r["check_failures"]),
                  str(r["repeat_pairs"]), _pct(r["consistency"]))  # fmt: skip
    con.print(t)
    ag = result["agreement"]
    alpha = ag["krippendorff_alpha_nominal"]
    con.print(
        f"Krippendorff's alpha (nominal) over {ag['trials_seen_by_several']} trials seen by "
        f"several raters: {'n/a' if alpha is None else f'{alpha:.3f}'}",
        markup=False,
    )
