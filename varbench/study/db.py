"""The study file: one SQLite database (schema, version check, connections tuned for votes).

Votes are written in WAL mode with ``synchronous=FULL`` and one transaction each, so a vote
the server acknowledged survives SIGKILL; ``UNIQUE(rater_id, trial_id)`` makes double clicks,
resent requests and two tabs count once. Tokens are stored only as SHA-256 digests, so a copy
of the file carries no working link.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from pathlib import Path

from varbench.errors import UsageError

APPLICATION = "varbench-study"
FORMAT_VERSION = 2  # PRAGMA user_version; bump on any schema change
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
  id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, mime TEXT NOT NULL, data BLOB NOT NULL
);
CREATE TABLE slices (id INTEGER PRIMARY KEY, planned INTEGER NOT NULL);
CREATE TABLE trials (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('main', 'check', 'repeat', 'practice')),
  slice_id INTEGER REFERENCES slices(id),  -- NULL for practice trials
  class_label TEXT NOT NULL, cond TEXT NOT NULL, sample_index INTEGER NOT NULL,
  samples TEXT NOT NULL,  -- JSON list of the sample indices shown on each side
  cond_image INTEGER NOT NULL REFERENCES images(id),
  left_model TEXT NOT NULL, right_model TEXT NOT NULL,
  left_images TEXT NOT NULL, right_images TEXT NOT NULL,  -- JSON lists of image ids
  expected TEXT CHECK (expected IN ('left', 'right')),  -- attention checks and practice
  repeat_of INTEGER REFERENCES trials(id)
);
CREATE TABLE raters (
  id INTEGER PRIMARY KEY,
  token_sha256 TEXT UNIQUE,  -- NULL once revoked or anonymised
  external_id TEXT UNIQUE,  -- the platform's participant id (public entry), else NULL
  platform_ids TEXT NOT NULL DEFAULT '{}',  -- JSON: study/session or assignment/HIT ids
  created_at TEXT NOT NULL,
  consent TEXT CHECK (consent IN ('yes', 'no')),
  answers TEXT,  -- JSON of the screening questions' answers
  revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE assignments (
  id INTEGER PRIMARY KEY,
  rater_id INTEGER NOT NULL REFERENCES raters(id),
  slice_id INTEGER NOT NULL REFERENCES slices(id),
  status TEXT NOT NULL CHECK (status IN ('active', 'finished', 'screened_out', 'released')),
  started_at TEXT NOT NULL, last_seen REAL NOT NULL, ended_at TEXT
);
CREATE INDEX assignments_by_slice ON assignments (slice_id, status);
CREATE INDEX assignments_by_rater ON assignments (rater_id, status);
CREATE TABLE assignment_trials (
  assignment_id INTEGER NOT NULL REFERENCES assignments(id), pos INTEGER NOT NULL,
  trial_id INTEGER NOT NULL REFERENCES trials(id),
  PRIMARY KEY (assignment_id, pos), UNIQUE (assignment_id, trial_id)
);
CREATE TABLE votes (
  id INTEGER PRIMARY KEY,
  rater_id INTEGER NOT NULL REFERENCES raters(id),
  trial_id INTEGER NOT NULL REFERENCES trials(id),
  assignment_id INTEGER REFERENCES assignments(id),  -- NULL for practice votes
  choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
  left_model TEXT NOT NULL, right_model TEXT NOT NULL,
  ms INTEGER, created_at TEXT NOT NULL,
  UNIQUE (rater_id, trial_id)
);
CREATE INDEX votes_by_assignment ON votes (assignment_id);
"""


class StudyFileError(UsageError):
    """A study file that is missing, damaged or from another varbench version."""


def token_hash(token: str) -> str:
    """SHA-256 hex digest of a token (what the file stores and looks up)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def valid_token(token: str) -> bool:
    """True when ``token`` has the shape of one we issue (ASCII URL-safe, 16-64 chars)."""
    return bool(TOKEN_RE.match(token or ""))


def new_token() -> tuple[str, str]:
    """A fresh unguessable token and its digest."""
    token = secrets.token_urlsafe(24)
    return token, token_hash(token)


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 30000")
    con.execute("PRAGMA foreign_keys = ON")
    return con


def create_db(path: Path) -> sqlite3.Connection:
    """A new, empty study database at ``path`` (which must not exist)."""
    path = Path(path)
    if path.exists():
        raise StudyFileError(f"--out {path}: already exists; pick a new file or delete it")
    con = _connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.executescript(SCHEMA)
    con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    con.execute("INSERT INTO meta VALUES ('application', ?)", (APPLICATION,))
    return con


def open_study(path: Path, check: bool = True) -> sqlite3.Connection:
    """Open a study file for reading and voting; one clear error if it is not a usable one."""
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"{path}: no such study file (make one with `varbench study create`)")
    fix = f"{path} is damaged or not a varbench study file; rebuild it with `varbench study create`"
    try:
        con = _connect(path)
        version = con.execute("PRAGMA user_version").fetchone()[0]
        app = con.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
        if check:
            status = con.execute("PRAGMA quick_check").fetchone()[0]
            if status != "ok":
                raise StudyFileError(f"{fix} (integrity check: {status})")
    except sqlite3.DatabaseError as exc:
        raise StudyFileError(f"{fix} ({exc})") from None
    if not app or app[0] != APPLICATION:
        con.close()
        raise StudyFileError(f"{fix} (no varbench study metadata)")
    if version != FORMAT_VERSION:
        con.close()
        raise StudyFileError(
            f"{path}: study format {version}, this varbench reads format {FORMAT_VERSION}; "
            "open it with the varbench version that made it, or rebuild it with "
            "`varbench study create`"
        )
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    return con


def meta(con: sqlite3.Connection) -> dict[str, str]:
    """The study's key/value metadata."""
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


def set_meta(con: sqlite3.Connection, key: str, value: str) -> None:
    """Insert or replace one metadata value (the caller holds the transaction, if any)."""
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def new_admin_token(con: sqlite3.Connection) -> str:
    """Issue a fresh admin token (the previous admin link stops working); return it."""
    token, digest = new_token()
    set_meta(con, "admin_sha256", digest)
    return token
