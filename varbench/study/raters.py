"""Raters: unguessable tokens and each rater's seeded trial order (repeats after originals)."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import datetime, timezone

import numpy as np

from varbench.errors import UsageError
from varbench.study.db import meta


def trial_order(trials: list[tuple[int, str, int | None]], rater_index: int, seed: int,
                per_rater: int | None) -> list[int]:  # fmt: skip
    """Trial ids in the order one rater sees them.

    ``trials`` holds (id, kind, repeat_of). With ``per_rater``, rater ``r`` (1-based) takes the
    next ``per_rater`` main/check trials of one seeded cycle through all of them, so every trial
    is seen by as many raters as the others (within one); the rater's trials are then shuffled
    by (seed, r), and each kept trial's repeat goes to a random later position.
    """
    base = [t[0] for t in trials if t[1] != "repeat"]
    if per_rater is not None and base:
        cycle = np.random.default_rng(seed).permutation(len(base))
        start = (rater_index - 1) * per_rater
        base = [base[cycle[(start + k) % len(base)]] for k in range(min(per_rater, len(base)))]
    rng = np.random.default_rng([seed, rater_index])
    order = [base[i] for i in rng.permutation(len(base))]
    kept = set(order)
    for tid, _, orig in (t for t in trials if t[1] == "repeat"):
        if orig in kept:
            after = order.index(orig)
            order.insert(int(rng.integers(after + 1, len(order) + 1)), tid)
    return order


def invite(con: sqlite3.Connection, n_raters: int, per_rater: int | None = None) -> list[str]:
    """Add ``n_raters`` raters with fresh tokens and their trial orders; return the tokens."""
    if n_raters < 1:
        raise UsageError(f"--raters {n_raters}: must be >= 1")
    if per_rater is not None and per_rater < 1:
        raise UsageError(f"--per-rater {per_rater}: must be >= 1")
    seed = int(meta(con).get("seed", "0"))
    trials = [(int(a), str(b), c) for a, b, c in
              con.execute("SELECT id, kind, repeat_of FROM trials ORDER BY id")]  # fmt: skip
    tokens = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    con.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(n_raters):
            token = secrets.token_urlsafe(24)
            rid = int(
                con.execute(
                    "INSERT INTO raters (token, created_at) VALUES (?, ?)", (token, now)
                ).lastrowid  # fmt: skip
            )
            order = trial_order(trials, rid, seed, per_rater)
            con.executemany(
                "INSERT INTO assignments (rater_id, pos, trial_id) VALUES (?, ?, ?)",
                [(rid, pos, tid) for pos, tid in enumerate(order)],
            )
            tokens.append(token)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return tokens
