"""The server's access to one study file: rater lookup by token digest, slices, votes.

Per-thread SQLite connections; every write takes one process-wide lock and one ``BEGIN
IMMEDIATE`` transaction, so writers queue without SQLite's sleeping busy handler.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from varbench.study import raters, slices
from varbench.study.db import meta, open_study, token_hash, valid_token
from varbench.study.platforms import Exit
from varbench.study.rules import ExclusionRule


@dataclass(frozen=True)
class Rater:
    """What the pages need to know about one rater."""

    id: int
    external_id: str | None
    platform_ids: dict
    consent: str | None
    answered: bool


class StudyDB:
    """Per-thread connections to one study file (SQLite connections are not shared)."""

    def __init__(self, path: Path, slice_timeout_s: float = 3600.0):
        self.path = Path(path)
        con = open_study(self.path, check=True)
        self.info = meta(con)
        con.close()
        self.timeout_s = slice_timeout_s
        self.allow_tie = self.info.get("allow_tie") == "1"
        self.systems = [s["label"] for s in json.loads(self.info.get("systems", "[]"))]
        self.layout = slices.layout_of(self.info)
        self.exit = Exit(**json.loads(self.info.get("exit", "{}")))
        self.consent = self.info.get("consent", "")
        self.questions = json.loads(self.info.get("questions", "[]"))
        self._local = threading.local()
        self._write_lock = threading.Lock()

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection to the study file (opened on first use)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = open_study(self.path, check=False)
            self._local.con = con
        return con

    def _write(self, fn, *args):
        """Run ``fn(con, *args)`` in one immediate transaction under the write lock."""
        con = self.con
        with self._write_lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(con, *args)
                con.execute("COMMIT")
                return out
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # -- lookups ---------------------------------------------------------------------------
    def closed(self) -> bool:
        """True once `varbench study close` closed the study (read per request)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = 'closed'").fetchone()
        return bool(row and row[0] == "1")

    def is_admin(self, token: str) -> bool:
        """True for the current admin token (read per request: `invite` may issue a new one)."""
        if not valid_token(token):
            return False
        row = self.con.execute("SELECT value FROM meta WHERE key = 'admin_sha256'").fetchone()
        return bool(row) and row[0] == token_hash(token)

    def rater(self, token: str) -> Rater | None:
        """The rater holding ``token`` (looked up by its digest), or None."""
        if not valid_token(token):
            return None
        row = self.con.execute(
            "SELECT id, external_id, platform_ids, consent, answers FROM raters "
            "WHERE token_sha256 = ? AND revoked = 0", (token_hash(token),)).fetchone()  # fmt: skip
        if row is None:
            return None
        return Rater(int(row[0]), row[1], json.loads(row[2] or "{}"), row[3], row[4] is not None)

    def practice_left(self, rid: int) -> list[dict]:
        """Practice trials the rater has not answered yet, in order."""
        rows = self.con.execute(
            "SELECT t.id FROM trials t LEFT JOIN votes v ON v.trial_id = t.id AND v.rater_id = ? "
            "WHERE t.kind = 'practice' AND v.id IS NULL ORDER BY t.id", (rid,)).fetchall()  # fmt: skip
        return [self.trial(int(r[0])) for r in rows]

    def practice_count(self) -> int:
        """How many practice trials the study has."""
        return int(self.con.execute(
            "SELECT COUNT(*) FROM trials WHERE kind = 'practice'").fetchone()[0])  # fmt: skip

    def trial(self, trial_id: int) -> dict:
        """One trial as the pages show it (ids of its images, kind, expected side)."""
        row = self.con.execute(
            "SELECT id, class_label, cond_image, left_images, right_images, kind, expected "
            "FROM trials WHERE id = ?", (trial_id,)).fetchone()  # fmt: skip
        return {"id": row[0], "class_label": row[1], "cond_image": row[2],
                "left": json.loads(row[3]), "right": json.loads(row[4]), "kind": row[5],
                "expected": row[6]}  # fmt: skip

    def voted(self, rid: int, trial_id: int) -> str | None:
        """The rater's choice on ``trial_id``, or None."""
        row = self.con.execute("SELECT choice FROM votes WHERE rater_id = ? AND trial_id = ?",
                               (rid, trial_id)).fetchone()  # fmt: skip
        return row[0] if row else None

    def has_votes(self, rid: int) -> bool:
        """True once the rater voted on anything (practice included)."""
        return self.con.execute("SELECT 1 FROM votes WHERE rater_id = ? LIMIT 1",
                                (rid,)).fetchone() is not None  # fmt: skip

    def next_in(self, aid: int, rid: int) -> tuple[dict | None, int, int]:
        """(next unvoted trial of the assignment or None, done, total)."""
        rows = self.con.execute(
            "SELECT at.trial_id, v.id FROM assignment_trials at LEFT JOIN votes v "
            "ON v.trial_id = at.trial_id AND v.rater_id = ? WHERE at.assignment_id = ? "
            "ORDER BY at.pos", (rid, aid)).fetchall()  # fmt: skip
        done = sum(1 for _, v in rows if v is not None)
        nxt = next((int(t) for t, v in rows if v is None), None)
        return (None if nxt is None else self.trial(nxt)), done, len(rows)

    def image(self, image_id: int) -> tuple[bytes, str] | None:
        """One stored image's bytes and MIME type, or None."""
        row = self.con.execute("SELECT data, mime FROM images WHERE id = ?", (image_id,)).fetchone()
        return (bytes(row[0]), str(row[1])) if row else None

    def slice_length(self) -> int:
        """Trials in one slice (main, checks, repeats), for the duration estimate."""
        lay = self.layout
        return int(lay.get("main_per_slice", 0) + lay.get("checks_per_slice", 0)
                   + lay.get("repeats_per_slice", 0))  # fmt: skip

    # -- writes ----------------------------------------------------------------------------
    def join(self, external_id: str, ids: dict[str, str]) -> tuple[str, bool]:
        """(fresh token, revoked) of the platform participant ``external_id``."""
        _, token, revoked = self._write(raters.join, external_id, ids)
        return token, revoked

    def save_consent(self, rid: int, agreed: bool) -> None:
        """Record the rater's consent decision (the first one stands)."""
        self._write(lambda con: con.execute(
            "UPDATE raters SET consent = ? WHERE id = ? AND consent IS NULL",
            ("yes" if agreed else "no", rid)))  # fmt: skip

    def save_answers(self, rid: int, answers: dict) -> None:
        """Record the rater's screening answers (the first ones stand)."""
        self._write(lambda con: con.execute(
            "UPDATE raters SET answers = ? WHERE id = ? AND answers IS NULL",
            (json.dumps(answers), rid)))  # fmt: skip

    def claim(self, rid: int, overflow: bool) -> tuple[str, int | None]:
        """The rater's assignment, claimed on demand (see ``slices.claim``)."""
        seed, gap = int(self.info.get("seed", "0")), int(self.layout.get("repeat_gap", 5))
        return self._write(slices.claim, rid, time.time(), self.timeout_s, seed, gap, overflow)

    def vote(self, rid: int, trial_id: int, choice: str, ms: int) -> str:
        """Store one vote: 'stored', 'duplicate', 'expired' (slice reclaimed) or 'unknown'."""
        return self._write(self._vote, rid, trial_id, choice, ms)

    def _vote(self, con, rid: int, trial_id: int, choice: str, ms: int) -> str:
        """The vote's transaction body: only trials of the rater's active slice (or practice) count."""
        row = con.execute("SELECT kind, left_model, right_model FROM trials WHERE id = ?",
                          (trial_id,)).fetchone()  # fmt: skip
        if row is None:
            return "unknown"
        aid = None
        if row[0] != "practice":
            found = con.execute(
                "SELECT a.id, a.status FROM assignment_trials at JOIN assignments a "
                "ON a.id = at.assignment_id WHERE a.rater_id = ? AND at.trial_id = ? "
                "ORDER BY a.id DESC LIMIT 1", (rid, trial_id)).fetchone()  # fmt: skip
            if found is None:
                return "unknown"
            aid = int(found[0])
            if found[1] != "active":
                duplicate = con.execute("SELECT 1 FROM votes WHERE rater_id = ? AND trial_id = ?",
                                        (rid, trial_id)).fetchone()  # fmt: skip
                return "duplicate" if duplicate else "expired"
        cur = con.execute(
            "INSERT OR IGNORE INTO votes (rater_id, trial_id, assignment_id, choice, left_model, "
            "right_model, ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, trial_id, aid, choice, row[1], row[2], ms, slices.now_iso()),
        )
        if cur.rowcount != 1:
            return "duplicate"
        if aid is not None:
            con.execute("UPDATE assignments SET last_seen = ? WHERE id = ?", (time.time(), aid))
            # the rule as stored now: `varbench study rule` may change it while serving
            rule = con.execute("SELECT value FROM meta WHERE key = 'rule'").fetchone()
            slices.finish_if_complete(con, aid, rid, ExclusionRule.from_json(rule and rule[0]))
        return "stored"

    # -- admin -----------------------------------------------------------------------------
    def admin_rows(self) -> tuple[list[dict], list[tuple], int, list[tuple]]:
        """Per-rater progress, main votes per side pair, total votes and slice coverage."""
        raters_ = []
        for rid, ext, votes, checks, failures, last, status in self.con.execute(
            "SELECT r.id, r.external_id, "
            "(SELECT COUNT(*) FROM votes v WHERE v.rater_id = r.id), "
            "(SELECT COUNT(*) FROM votes v JOIN trials t ON t.id = v.trial_id "
            " WHERE v.rater_id = r.id AND t.kind = 'check'), "
            "(SELECT COUNT(*) FROM votes v JOIN trials t ON t.id = v.trial_id "
            " WHERE v.rater_id = r.id AND t.kind = 'check' AND v.choice != t.expected), "
            "(SELECT MAX(created_at) FROM votes v WHERE v.rater_id = r.id), "
            "(SELECT status FROM assignments a WHERE a.rater_id = r.id ORDER BY a.id DESC "
            " LIMIT 1) FROM raters r ORDER BY r.id"
        ):
            raters_.append({"id": rid, "external_id": ext or "", "votes": votes, "checks": checks,
                            "failures": failures, "last": last, "status": status or ""})  # fmt: skip
        pairs = self.con.execute(
            "SELECT v.left_model, v.right_model, COUNT(*) FROM votes v JOIN trials t "
            "ON t.id = v.trial_id WHERE t.kind = 'main' GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        n = self.con.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        cover = self.con.execute(
            "SELECT s.id, s.planned, SUM(a.status = 'finished'), SUM(a.status = 'active') "
            "FROM slices s LEFT JOIN assignments a ON a.slice_id = s.id GROUP BY s.id ORDER BY s.id"
        ).fetchall()
        return raters_, pairs, int(n), [(a, b, c or 0, d or 0) for a, b, c, d in cover]
