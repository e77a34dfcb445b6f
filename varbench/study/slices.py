"""Slices handed out on demand: claim, reclaim after a timeout, finish by the exclusion rule.

A slice's planned raters count its finished assignments plus the ones still active; an active
assignment with no vote for ``timeout_s`` is released back to the pool the next time anyone
claims. A rater who returns keeps their own slice when it is still free, so their earlier votes
stay part of it. All functions run inside the caller's write transaction.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from varbench.study.plan import order_slice
from varbench.study.rules import ExclusionRule, tally


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds (stored with votes)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def release_stale(con: sqlite3.Connection, now: float, timeout_s: float) -> int:
    """Release active assignments with no vote for ``timeout_s``; return how many."""
    cur = con.execute(
        "UPDATE assignments SET status = 'released', ended_at = ? "
        "WHERE status = 'active' AND last_seen < ?",
        (now_iso(), now - timeout_s),
    )
    return cur.rowcount


def _capacity(con: sqlite3.Connection, slice_id: int) -> int:
    """Planned raters of a slice minus those finished or holding it now."""
    planned, taken = con.execute(
        "SELECT s.planned, (SELECT COUNT(*) FROM assignments a WHERE a.slice_id = s.id "
        "AND a.status IN ('active', 'finished')) FROM slices s WHERE s.id = ?",
        (slice_id,),
    ).fetchone()
    return int(planned) - int(taken)


def claim(con: sqlite3.Connection, rater_id: int, now: float, timeout_s: float, seed: int,
          gap: int, overflow: bool) -> tuple[str, int | None]:  # fmt: skip
    """The rater's assignment: ('active', id), ('done', id), ('screened_out', id) or ('full', None).

    ``overflow`` (invited lab raters) hands out the least-covered slice when all are taken.
    """
    rows = con.execute(
        "SELECT id, slice_id, status FROM assignments WHERE rater_id = ? ORDER BY id",
        (rater_id,),
    ).fetchall()
    for aid, _, status in rows:
        if status == "active":
            return "active", int(aid)
        if status in ("finished", "screened_out"):
            return ("done" if status == "finished" else "screened_out"), int(aid)
    release_stale(con, now, timeout_s)
    for aid, sid, _ in reversed(rows):  # a returning rater takes their own slice back
        if _capacity(con, sid) > 0:
            con.execute("UPDATE assignments SET status = 'active', last_seen = ?, ended_at = NULL "
                        "WHERE id = ?", (now, aid))  # fmt: skip
            return "active", int(aid)
    held = {int(r[1]) for r in rows}
    free = con.execute(
        "SELECT s.id, s.planned - (SELECT COUNT(*) FROM assignments a WHERE a.slice_id = s.id "
        "AND a.status IN ('active', 'finished')) AS need FROM slices s ORDER BY need DESC, s.id"
    ).fetchall()
    free = [(int(s), int(n)) for s, n in free if int(s) not in held]
    if not free or (free[0][1] <= 0 and not overflow):
        return "full", None
    slice_id = free[0][0]
    aid = int(con.execute(
        "INSERT INTO assignments (rater_id, slice_id, status, started_at, last_seen) "
        "VALUES (?, ?, 'active', ?, ?)", (rater_id, slice_id, now_iso(), now)).lastrowid)  # fmt: skip
    trials = [(int(a), str(b), c) for a, b, c in con.execute(
        "SELECT id, kind, repeat_of FROM trials WHERE slice_id = ? ORDER BY id", (slice_id,))]  # fmt: skip
    order = order_slice(trials, [seed, aid], gap)
    con.executemany("INSERT INTO assignment_trials (assignment_id, pos, trial_id) VALUES (?,?,?)",
                    [(aid, pos, tid) for pos, tid in enumerate(order)])  # fmt: skip
    return "active", aid


def rater_reasons(con: sqlite3.Connection, rater_id: int, rule: ExclusionRule) -> list[str]:
    """The exclusion rule applied to all of one rater's scored votes (as the analysis does)."""
    rows = con.execute(
        "SELECT t.kind, v.choice, t.expected, v.ms FROM votes v JOIN trials t ON t.id = v.trial_id "
        "WHERE v.rater_id = ? AND t.kind != 'practice'",
        (rater_id,),
    ).fetchall()
    return rule.reasons(*tally(rows))


def finish_if_complete(con: sqlite3.Connection, aid: int, rater_id: int,
                       rule: ExclusionRule) -> str | None:  # fmt: skip
    """End a fully voted assignment as 'finished' or 'screened_out' (by the rule); else None."""
    left = con.execute(
        "SELECT COUNT(*) FROM assignment_trials at LEFT JOIN votes v ON v.trial_id = at.trial_id "
        "AND v.rater_id = ? WHERE at.assignment_id = ? AND v.id IS NULL",
        (rater_id, aid),
    ).fetchone()[0]
    if left:
        return None
    reasons = rater_reasons(con, rater_id, rule)
    status = "screened_out" if reasons else "finished"
    con.execute("UPDATE assignments SET status = ?, ended_at = ? WHERE id = ?",
                (status, now_iso(), aid))  # fmt: skip
    return status


def layout_of(info: dict[str, str]) -> dict:
    """The stored layout (per-slice counts, repeat gap, seed)."""
    return json.loads(info.get("layout", "{}"))
