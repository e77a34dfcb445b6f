"""Raters: invited lab raters (one link each) and platform participants (one join link).

Tokens are stored as SHA-256 digests only. A participant who joins again with the same
external id is the same rater and gets a fresh token (their older link stops working).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from varbench.errors import UsageError
from varbench.study.db import new_token, set_meta


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def invite(con: sqlite3.Connection, n_raters: int) -> list[str]:
    """Add ``n_raters`` lab raters with fresh tokens; return the tokens (shown once)."""
    if n_raters < 1:
        raise UsageError(f"--raters {n_raters}: must be >= 1")
    tokens = []
    con.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(n_raters):
            token, digest = new_token()
            con.execute("INSERT INTO raters (token_sha256, created_at) VALUES (?, ?)",
                        (digest, _now()))  # fmt: skip
            tokens.append(token)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return tokens


def join(con: sqlite3.Connection, external_id: str, platform_ids: dict[str, str]) -> tuple[
    int, str, bool]:  # fmt: skip
    """(rater id, fresh token, revoked) for ``external_id``, created on first arrival.

    Runs inside the caller's write transaction. A revoked rater gets no token ('').
    """
    row = con.execute("SELECT id, revoked, platform_ids FROM raters WHERE external_id = ?",
                      (external_id,)).fetchone()  # fmt: skip
    if row is not None and row[1]:
        return int(row[0]), "", True
    token, digest = new_token()
    if row is None:
        rid = int(con.execute(
            "INSERT INTO raters (token_sha256, external_id, platform_ids, created_at) "
            "VALUES (?, ?, ?, ?)", (digest, external_id, json.dumps(platform_ids), _now()),
        ).lastrowid)  # fmt: skip
        return rid, token, False
    ids = {**json.loads(row[2] or "{}"), **platform_ids}
    con.execute("UPDATE raters SET token_sha256 = ?, platform_ids = ? WHERE id = ?",
                (digest, json.dumps(ids), row[0]))  # fmt: skip
    return int(row[0]), token, False


def revoke(con: sqlite3.Connection, rater: int | None, external_id: str | None) -> dict:
    """Withdraw one rater's link and release their slice; their votes stay (and are listed)."""
    if (rater is None) == (external_id is None):
        raise UsageError("revoke: give exactly one of --rater ID or --external-id ID")
    where, arg = ("id", rater) if rater is not None else ("external_id", external_id)
    row = con.execute(f"SELECT id FROM raters WHERE {where} = ?", (arg,)).fetchone()
    if row is None:
        flag = "--rater" if rater is not None else "--external-id"
        raise UsageError(f"{flag} {arg}: no such rater in this study (see `study results`)")
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE raters SET revoked = 1, token_sha256 = NULL WHERE id = ?", (row[0],))
    released = con.execute("UPDATE assignments SET status = 'released', ended_at = ? "
                           "WHERE rater_id = ? AND status = 'active'", (_now(), row[0])).rowcount  # fmt: skip
    con.execute("COMMIT")
    return {"rater": int(row[0]), "revoked": True, "slices_released": released}


def set_closed(con: sqlite3.Connection, closed: bool) -> dict:
    """Close the study (no joins, pages or votes) or open it again."""
    con.execute("BEGIN IMMEDIATE")
    set_meta(con, "closed", "1" if closed else "0")
    con.execute("COMMIT")
    return {"closed": closed}
