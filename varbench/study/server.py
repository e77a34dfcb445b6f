"""The rater web app (Starlette on uvicorn): token-checked pages, one transaction per vote.

Routes: ``/r/{token}`` (instructions, next trial, or thank-you), ``POST /r/{token}/vote``,
``/img/{token}/{id}`` (thumbnails from the database by integer id, nothing from disk) and
``/admin/{admin_token}``. Tokens live only in the rater's link and the vote form's body, never
in cookies, so another site cannot vote on a rater's behalf; pages send no referrer.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from varbench.study.db import meta, open_study
from varbench.study.templates import render

log = logging.getLogger(__name__)
MAX_BODY = 4096
MAX_MS = 24 * 3600 * 1000


class StudyDB:
    """Per-thread connections to one study file (SQLite connections are not shared)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        con = open_study(self.path, check=True)
        self.info = meta(con)
        con.close()
        self.admin_token = self.info["admin_token"]
        self.allow_tie = self.info.get("allow_tie") == "1"
        self.systems = [s["label"] for s in json.loads(self.info.get("systems", "[]"))]
        self._local = threading.local()
        # Writers queue here, woken the moment the previous commit ends, rather than in
        # SQLite's busy handler, which sleeps in growing steps (tail latency under load).
        self._write_lock = threading.Lock()

    @property
    def con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = open_study(self.path, check=False)
            self._local.con = con
        return con

    def rater(self, token: str) -> int | None:
        """The rater id of ``token``, or None."""
        if not token or len(token) > 200:
            return None
        row = self.con.execute("SELECT id, token FROM raters WHERE token = ?", (token,)).fetchone()
        if row is None or not hmac.compare_digest(row[1], token):
            return None
        return int(row[0])

    def progress(self, rid: int) -> tuple[int, int]:
        done = self.con.execute("SELECT COUNT(*) FROM votes WHERE rater_id = ?", (rid,)).fetchone()
        total = self.con.execute(
            "SELECT COUNT(*) FROM assignments WHERE rater_id = ?", (rid,)
        ).fetchone()
        return int(done[0]), int(total[0])

    def next_trial(self, rid: int) -> dict | None:
        row = self.con.execute(
            "SELECT t.id, t.class_label, t.cond_image, t.left_images, t.right_images "
            "FROM assignments a JOIN trials t ON t.id = a.trial_id "
            "LEFT JOIN votes v ON v.rater_id = a.rater_id AND v.trial_id = a.trial_id "
            "WHERE a.rater_id = ? AND v.id IS NULL ORDER BY a.pos LIMIT 1",
            (rid,),
        ).fetchone()
        if row is None:
            return None
        return {"id": row[0], "class_label": row[1], "cond_image": row[2],
                "left": json.loads(row[3]), "right": json.loads(row[4])}  # fmt: skip

    def vote(self, rid: int, trial_id: int, choice: str, ms: int | None) -> str:
        """Store one vote in its own transaction: 'stored', 'duplicate' or 'unknown'."""
        con = self.con
        with self._write_lock:
            return self._vote(con, rid, trial_id, choice, ms)

    def _vote(self, con, rid: int, trial_id: int, choice: str, ms: int | None) -> str:
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute(
                "SELECT t.left_model, t.right_model FROM assignments a "
                "JOIN trials t ON t.id = a.trial_id WHERE a.rater_id = ? AND a.trial_id = ?",
                (rid, trial_id),
            ).fetchone()
            if row is None:
                con.execute("ROLLBACK")
                return "unknown"
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            cur = con.execute(
                "INSERT OR IGNORE INTO votes (rater_id, trial_id, choice, left_model, "
                "right_model, ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rid, trial_id, choice, row[0], row[1], ms, now),
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return "stored" if cur.rowcount == 1 else "duplicate"

    def image(self, image_id: int) -> tuple[bytes, str] | None:
        row = self.con.execute("SELECT data, mime FROM images WHERE id = ?", (image_id,)).fetchone()
        return (bytes(row[0]), str(row[1])) if row else None

    def admin_rows(self) -> tuple[list[dict], list[tuple], int]:
        raters = []
        for rid, votes, assigned, checks, failures, last in self.con.execute(
            "SELECT r.id, "
            "(SELECT COUNT(*) FROM votes v WHERE v.rater_id = r.id), "
            "(SELECT COUNT(*) FROM assignments a WHERE a.rater_id = r.id), "
            "(SELECT COUNT(*) FROM votes v JOIN trials t ON t.id = v.trial_id "
            " WHERE v.rater_id = r.id AND t.kind = 'check'), "
            "(SELECT COUNT(*) FROM votes v JOIN trials t ON t.id = v.trial_id "
            " WHERE v.rater_id = r.id AND t.kind = 'check' AND v.choice != t.expected), "
            "(SELECT MAX(created_at) FROM votes v WHERE v.rater_id = r.id) "
            "FROM raters r ORDER BY r.id"
        ):
            raters.append({"id": rid, "votes": votes, "assigned": assigned, "checks": checks,
                           "failures": failures, "last": last})  # fmt: skip
        pairs = self.con.execute(
            "SELECT left_model, right_model, COUNT(*) FROM votes GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        n = self.con.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        return raters, pairs, int(n)


SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _page(name: str, status: int = 200, **ctx) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
        f"script-src 'nonce-{nonce}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(
        render(name, nonce=nonce, **ctx),
        status_code=status,
        headers={**SECURITY, "Content-Security-Policy": csp},
    )


def _not_found() -> HTMLResponse:
    return _page("message.html", 404, title="Not found",
                 text="This link is not valid. Ask the study organiser for your link.")  # fmt: skip


def make_app(path: Path) -> Starlette:
    """The ASGI app serving the study file at ``path``."""
    db = StudyDB(path)
    question = db.info.get("question", "")
    cols = 2 if int(db.info.get("set_size", "1")) > 1 else 1

    async def rater_page(request: Request) -> Response:
        token = request.path_params["token"]

        def work():
            rid = db.rater(token)
            if rid is None:
                return _not_found()
            done, total = db.progress(rid)
            trial = db.next_trial(rid)
            if trial is None:
                return _page("done.html", total=total)
            ctx = dict(token=token, question=question, total=total, done=done,
                       allow_tie=db.allow_tie)  # fmt: skip
            if done == 0 and "start" not in request.query_params:
                return _page("start.html", **ctx)
            return _page("trial.html", trial=trial, cols=cols, **ctx)

        return await run_in_threadpool(work)

    async def vote(request: Request) -> Response:
        token = request.path_params["token"]
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        # "null": our own pages send no referrer, so Chromium sends Origin: null on their
        # forms; the token in the body is what keeps other sites out.
        if origin and origin not in (f"http://{host}", f"https://{host}", "null"):
            return Response("cross-site vote refused", status_code=403, headers=SECURITY)
        body = await request.body()
        if len(body) > MAX_BODY:
            return Response("request too large", status_code=413, headers=SECURITY)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("token", ""), token):
            return Response("token missing from the vote", status_code=403, headers=SECURITY)
        choice = form.get("choice", "")
        if choice not in ("left", "right") and not (choice == "tie" and db.allow_tie):
            return Response("choice must be left or right", status_code=400, headers=SECURITY)
        try:
            trial_id = int(form.get("trial", ""))
            ms = min(max(int(form["ms"]), 0), MAX_MS) if form.get("ms") else None
        except ValueError:
            return Response("trial and ms must be integers", status_code=400, headers=SECURITY)

        def work():
            rid = db.rater(token)
            if rid is None:
                return _not_found()
            status = db.vote(rid, trial_id, choice, ms)
            if status == "unknown":
                return _not_found()
            return RedirectResponse(
                f"/r/{token}", status_code=303, headers={**SECURITY, "X-Vote": status}
            )

        return await run_in_threadpool(work)

    async def image(request: Request) -> Response:
        token = request.path_params["token"]
        image_id = request.path_params["image_id"]

        def work():
            if db.rater(token) is None and not hmac.compare_digest(token, db.admin_token):
                return Response("not found", status_code=404, headers=SECURITY)
            found = db.image(image_id)
            if found is None:
                return Response("not found", status_code=404, headers=SECURITY)
            headers = {**SECURITY, "Cache-Control": "private, max-age=3600"}
            return Response(found[0], media_type=found[1], headers=headers)

        return await run_in_threadpool(work)

    async def admin(request: Request) -> Response:
        if not hmac.compare_digest(request.path_params["token"], db.admin_token):
            return _not_found()
        raters, pairs, n = await run_in_threadpool(db.admin_rows)
        return _page("admin.html", info=db.info, systems=db.systems, raters=raters,
                     pairs=pairs, n_votes=n)  # fmt: skip

    async def root(request: Request) -> Response:
        return _not_found()

    async def favicon(request: Request) -> Response:
        return Response(status_code=204, headers=SECURITY)

    routes = [
        Route("/", root),
        Route("/favicon.ico", favicon),
        Route("/r/{token}", rater_page, methods=["GET"]),
        Route("/r/{token}/vote", vote, methods=["POST"]),
        Route("/img/{token}/{image_id:int}", image, methods=["GET"]),
        Route("/admin/{token}", admin, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def serve(path: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the study until interrupted (access log off: request paths carry tokens)."""
    import socket

    import uvicorn

    from varbench.errors import UsageError

    app = make_app(path)
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
            "pick another --port"
        ) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can open the links "
                    "(plain HTTP; put it behind HTTPS to share it)", host)  # fmt: skip
    log.info("serving %s on http://%s:%d (links: `varbench study invite`)", path, host, port)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
