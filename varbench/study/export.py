"""Results a paper and a payment can rest on: raw votes, the rater table, payment lists, and an
anonymised copy of the study file.

Votes: one row per vote, ready for a mixed model (rater and conditioning image as random
effects). Raters: the exclusion rule's verdict and reasons per rater. Payments: the platform
ids to approve (finished slice) and to reject (screened out by the study's rule); ``review``
lists those who finished under an earlier rule that `study rule` has since tightened.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd

from varbench.errors import UsageError
from varbench.study.analysis import chosen, load_votes, rater_table
from varbench.study.db import meta, open_study
from varbench.study.rules import ExclusionRule

VOTE_COLUMNS = ["external_id", "rater", "trial", "kind", "slice", "cond", "class_label",
                "samples", "left_system", "right_system", "choice", "chosen_system",
                "ms_from_images_loaded", "server_time", "rater_excluded"]  # fmt: skip


def _raters_extra(con: sqlite3.Connection) -> pd.DataFrame:
    """Per rater: last slice status, consent, answers and the platform's other ids."""
    return pd.read_sql_query(
        "SELECT r.id AS rater, r.external_id AS ext, r.platform_ids, r.consent, r.answers, "
        "r.revoked, (SELECT status FROM assignments a WHERE a.rater_id = r.id "
        "ORDER BY a.id DESC LIMIT 1) AS slice_status, (SELECT COUNT(*) FROM assignments a "
        "WHERE a.rater_id = r.id AND a.status = 'finished') AS slices_finished "
        "FROM raters r ORDER BY r.id",
        con,
    )


def tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(votes, raters) of the study: raw votes and the rater table under the stored rule."""
    con = open_study(Path(path), check=True)
    try:
        info = meta(con)
        votes = load_votes(con)
        extra = _raters_extra(con)
    finally:
        con.close()
    rule = ExclusionRule.from_json(info.get("rule"))
    raters = rater_table(votes, rule).drop(columns=["external_id"])
    raters = extra.merge(raters, on="rater", how="left")
    raters = raters.rename(columns={"ext": "external_id"})
    raters["votes"] = raters["votes"].fillna(0).astype(int)
    raters["excluded"] = raters["excluded"].astype("boolean").fillna(False).astype(bool)
    raters.loc[raters["consent"] == "no", "reasons"] = "declined consent"
    excluded = set(raters.loc[raters["excluded"], "rater"])
    out = pd.DataFrame({
        "external_id": votes["external_id"], "rater": votes["rater"], "trial": votes["trial"],
        "kind": votes["kind"], "slice": votes["slice_id"], "cond": votes["cond"],
        "class_label": votes["class_label"], "samples": votes["samples"],
        "left_system": votes["left_model"], "right_system": votes["right_model"],
        "choice": votes["choice"], "chosen_system": chosen(votes),
        "ms_from_images_loaded": votes["ms"], "server_time": votes["created_at"],
        "rater_excluded": votes["rater"].isin(excluded),
    }, columns=VOTE_COLUMNS)  # fmt: skip
    return out, raters


def write_tables(path: Path, out_dir: Path, fmt: str) -> dict:
    """Write votes.{csv,parquet} and raters.{csv,parquet} into ``out_dir``."""
    from varbench.core.files import atomic_write_bytes

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: a file; give a folder for votes.{fmt} and raters.{fmt}")
    out_dir.mkdir(parents=True, exist_ok=True)
    votes, raters = tables(path)
    written = {}
    for name, df in (("votes", votes), ("raters", raters)):
        target = out_dir / f"{name}.{fmt}"
        data = df.to_csv(index=False).encode() if fmt == "csv" else df.to_parquet(index=False)
        atomic_write_bytes(target, data)
        written[name] = {"file": str(target), "rows": int(len(df))}
    return written


def payments(path: Path) -> dict:
    """Platform ids to approve and to reject, by the study's recorded rule."""
    _, raters = tables(path)
    public = raters[raters["external_id"].notna()]
    out: dict[str, list] = {"approve": [], "reject": [], "review": [], "no_consent": [],
                            "unfinished": []}  # fmt: skip
    details = []
    for r in public.to_dict("records"):
        ids = json.loads(r["platform_ids"] or "{}")
        if r["consent"] == "no":
            group = "no_consent"
        elif r["slice_status"] == "finished":
            group = "review" if r["excluded"] else "approve"
        elif r["slice_status"] == "screened_out":
            group = "reject"
        else:
            group = "unfinished"
        out[group].append(r["external_id"])
        details.append({"external_id": r["external_id"], "decision": group,
                        "reasons": r["reasons"] if isinstance(r["reasons"], str) else "",
                        **{k: v for k, v in ids.items() if k != "turkSubmitTo"}})  # fmt: skip
    con = open_study(Path(path), check=False)
    try:
        out["rule"] = json.loads(meta(con).get("rule", "{}"))
    finally:
        con.close()
    out["details"] = details
    return out


def anonymise(path: Path, out: Path) -> dict:
    """A copy of the study without tokens, the admin token or external and platform ids."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; pick a new file or delete it")
    src = open_study(Path(path), check=True)
    dst = sqlite3.connect(str(out), isolation_level=None)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")
        dst.execute("UPDATE raters SET token_sha256 = NULL, external_id = NULL, "
                    "platform_ids = '{}'")  # fmt: skip
        dst.execute("DELETE FROM meta WHERE key IN ('admin_sha256', 'admin_token')")
        dst.execute("VACUUM")  # no freed page keeps an old value
        n = dst.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
    finally:
        dst.close()
        src.close()
    return {"anonymised": str(out), "raters": int(n)}
