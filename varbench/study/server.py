"""The rater web app (Starlette on uvicorn): token-checked pages, one transaction per vote.

Routes: ``/join`` (the one public entry link: creates or resumes the rater of a platform id),
``/r/{token}`` (consent, questions, instructions, practice, next trial, or the end page),
``POST /r/{token}/{consent,answers,vote}``, ``/img/{token}/{id}`` (images from the database by
integer id, nothing from disk) and ``/admin/{admin_token}``. Tokens live only in links and
form bodies, never in cookies; a token is checked before any body is read, and bodies are
capped before and while reading. Pages send ``same-origin`` referrers, so the browser sends the
real ``Origin`` on their own forms and ``Origin: null`` (refused) from anywhere opaque.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from varbench.errors import UsageError
from varbench.study.platforms import MTURK_PREVIEW, PLATFORMS, external_id
from varbench.study.questions import parse_answers
from varbench.study.service import Rater, StudyDB
from varbench.study.templates import render

log = logging.getLogger(__name__)
MAX_VOTE_BODY = 4096
MAX_FORM_BODY = 16384
MAX_MS = 24 * 3600 * 1000
REDIRECT_DELAY_S = 3


@dataclass(frozen=True)
class ServeOptions:
    """How `varbench study serve` runs: slice timeout and the public address behind a proxy."""

    slice_timeout_min: float = 60.0
    root_path: str = ""  # e.g. /study when a proxy serves the study under that prefix
    public_url: str = ""  # e.g. https://lab.example.org/study: the origin votes must come from

    def validate(self) -> ServeOptions:
        """Self normalised, or a UsageError naming the flag and the fix."""
        if not 0 < self.slice_timeout_min <= 7 * 24 * 60:
            raise UsageError(f"--slice-timeout {self.slice_timeout_min}: minutes, > 0 and at "
                             "most a week")  # fmt: skip
        root = self.root_path.rstrip("/")
        if root and (not root.startswith("/") or any(c in root for c in "?#\"'<> ")):
            raise UsageError(f"--root-path {self.root_path!r}: expected a path such as /study")
        public = self.public_url.rstrip("/")
        if public:
            parts = urlsplit(public)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UsageError(f"--public-url {self.public_url!r}: expected the address "
                                 "raters open, e.g. https://lab.example.org/study")  # fmt: skip
            if not root and parts.path.rstrip("/"):
                root = parts.path.rstrip("/")
        return ServeOptions(self.slice_timeout_min, root, public)

    @property
    def public_origin(self) -> str | None:
        """The origin of ``--public-url`` (the only one votes may come from), or None."""
        if not self.public_url:
            return None
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"


class _TooLarge(Exception):
    """A request body over its cap (or with more fields than any form of ours)."""


async def read_form(request: Request, cap: int) -> dict[str, str]:
    """The urlencoded body as a dict, refused (``_TooLarge``) past ``cap`` bytes.

    Content-Length is checked before reading; chunked bodies are streamed and cut at the cap.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _TooLarge
    text = body.decode("utf-8", "replace")
    try:
        return {k: v[0] for k, v in parse_qs(text, max_num_fields=64).items()}
    except ValueError:  # more fields than any of our forms has
        raise _TooLarge from None


def _same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings, any characters."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


class RootPath:
    """Serve under a prefix whether the proxy strips it or passes it through."""

    def __init__(self, app, root: str):
        self.app, self.root = app, root

    async def __call__(self, scope, receive, send):
        if self.root and scope["type"] == "http":
            path = scope["path"]
            if path == self.root or path.startswith(self.root + "/"):
                scope = {**scope, "path": path[len(self.root) :] or "/"}
        await self.app(scope, receive, send)


def make_app(path: Path, options: ServeOptions | None = None):
    """The ASGI app serving the study file at ``path``."""
    opts = (options or ServeOptions()).validate()
    db = StudyDB(path, opts.slice_timeout_min * 60)
    root = opts.root_path
    question = db.info.get("question", "")
    cols = 2 if int(db.info.get("set_size", "1")) > 1 else 1
    frame = db.exit.frame_origin()
    security = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store"}  # fmt: skip
    if frame is None:
        security["X-Frame-Options"] = "DENY"
    ancestors = frame or "'none'"
    actions = "'self'" + (f" {db.exit.completion_url}" if frame else "")
    spt = float(db.info.get("seconds_per_trial", "6"))

    def page(name: str, status: int = 200, **ctx) -> HTMLResponse:
        """A rendered page with a fresh CSP nonce and the security headers."""
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
               f"script-src 'nonce-{nonce}'; form-action {actions}; base-uri 'none'; "
               f"frame-ancestors {ancestors}")  # fmt: skip
        return HTMLResponse(render(name, nonce=nonce, root=root, **ctx), status_code=status,
                            headers={**security, "Content-Security-Policy": csp})  # fmt: skip

    def plain(text: str, status: int, **extra) -> Response:
        """A short text response with the security headers."""
        return Response(text, status_code=status, headers={**security, **extra})

    def message(title: str, text: str, status: int = 200) -> HTMLResponse:
        """A page with a title and one paragraph."""
        return page("message.html", status, title=title, text=text)

    def not_found() -> HTMLResponse:
        """The one answer to every wrong link: no hint of what exists."""
        return message("Not found", "This link is not valid. Ask the study organiser for your "
                       "link.", 404)  # fmt: skip

    def closed() -> HTMLResponse:
        """The answer of a closed study (410)."""
        return message("Study closed", "This study is closed. Thank you for your interest.", 410)

    def to_rater(token: str, query: str = "", **headers) -> RedirectResponse:
        """303 to the rater's page (under the root path)."""
        return RedirectResponse(f"{root}/r/{token}{query}", status_code=303,
                                headers={**security, **headers})  # fmt: skip

    def origin_ok(request: Request) -> bool:
        """True unless a browser sent a foreign or null Origin."""
        origin = request.headers.get("origin")
        if origin is None:  # not a browser form (browsers send Origin on every POST)
            return True
        if opts.public_origin is not None:
            return origin == opts.public_origin
        host = request.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")

    def end_page(r: Rater, screened: bool, text: str) -> HTMLResponse:
        """The completion or screen-out page: code, redirect or MTurk post."""
        ex = db.exit
        code = ex.screenout_code if screened else ex.completion_code
        url = ex.screenout_url if screened else ex.completion_url
        mturk = None
        if ex.platform == "mturk" and r.external_id is not None:
            mturk = {"url": url, "assignment": r.platform_ids.get("assignmentId", "")}
        redirect = url if url and r.external_id is not None and mturk is None else ""
        return page("done.html", screened=screened, code=code, text=text, mturk=mturk,
                    redirect=redirect, delay=REDIRECT_DELAY_S)  # fmt: skip

    def estimate() -> tuple[int, int, int]:
        """(trials in a slice, practice trials, estimated minutes)."""
        n, practice = db.slice_length(), db.practice_count()
        return n, practice, max(1, math.ceil((n + practice) * spt / 60))

    def rater_state(token: str, query) -> Response:
        """The page a rater sees now: consent, questions, instructions, practice, trial or end."""
        r = db.rater(token)
        if r is None:
            return not_found()
        if db.closed():
            return closed()
        if db.consent and r.consent is None:
            return page("consent.html", consent=db.consent, token=token, error="")
        if r.consent == "no":
            return end_page(r, True, "You chose not to take part, so the study ends here.")
        if db.questions and not r.answered:
            return page("questions.html", questions=db.questions, token=token, error="")
        ctx = dict(token=token, question=question, allow_tie=db.allow_tie)
        fb = query.get("feedback", "")
        if fb.isdigit():
            answer = db.voted(r.id, int(fb))
            t = db.trial(int(fb)) if answer else None
            if t is not None and t["kind"] == "practice":
                return page("feedback.html", correct=answer == t["expected"],
                            expected=t["expected"], token=token)  # fmt: skip
        practice = db.practice_left(r.id)
        if "start" not in query and not db.has_votes(r.id):
            total, n_practice, minutes = estimate()
            return page("start.html", total=total, practice=n_practice, minutes=minutes,
                        preview=False, **ctx)  # fmt: skip
        if practice:
            n = db.practice_count()
            return page("trial.html", trial=practice[0], cols=cols, done=n - len(practice),
                        total=n, **ctx)  # fmt: skip
        status, aid = db.claim(r.id, overflow=r.external_id is None)
        if status == "full":
            return message("No places left", "Every place in this study is taken right now. "
                           "Please return the study on your platform (no penalty).", 200)  # fmt: skip
        if status in ("done", "screened_out"):
            screened = status == "screened_out"
            text = ("Your answers did not pass the study's attention checks, so the study ends "
                    "here." if screened else "You made all the comparisons; your answers are "
                    "saved.")  # fmt: skip
            return end_page(r, screened, text)
        trial, done, total = db.next_in(aid, r.id)
        if trial is None:  # finished by the vote just stored
            return rater_state(token, {})
        return page("trial.html", trial=trial, cols=cols, done=done, total=total, **ctx)

    async def rater_page(request: Request) -> Response:
        """GET /r/{token}."""
        token = request.path_params["token"]
        query = dict(request.query_params)
        return await run_in_threadpool(rater_state, token, query)

    async def post_form(request: Request, cap: int, handle) -> Response:
        """Token first (no body read for a bad one), then origin, then the capped body."""
        token = request.path_params["token"]
        r = await run_in_threadpool(db.rater, token)
        if r is None:
            return not_found()
        if db.closed():
            return closed()
        if not origin_ok(request):
            return plain("cross-site request refused", 403)
        try:
            form = await read_form(request, cap)
        except _TooLarge:
            return plain("request too large", 413, Connection="close")
        if not _same(form.get("token", ""), token):
            return plain("token missing from the form", 403)
        return await run_in_threadpool(handle, r, token, form)

    def handle_vote(r: Rater, token: str, form: dict[str, str]) -> Response:
        """Store a vote; practice votes lead to their feedback."""
        choice = form.get("choice", "")
        if choice not in ("left", "right") and not (choice == "tie" and db.allow_tie):
            return plain("choice must be left or right", 400)
        try:
            trial_id = int(form.get("trial", ""))
            ms = min(max(int(form.get("ms", "")), 0), MAX_MS)
        except ValueError:
            return plain("trial and ms must be integers (ms: time since the images loaded)", 400)
        status = db.vote(r.id, trial_id, choice, ms)
        if status == "unknown":
            return not_found()
        t = db.trial(trial_id)
        query = f"?feedback={trial_id}" if t["kind"] == "practice" and status == "stored" else ""
        return to_rater(token, query, **{"X-Vote": status})

    def handle_consent(r: Rater, token: str, form: dict[str, str]) -> Response:
        """Agree (the box ticked) or decline."""
        if form.get("decision") == "decline":
            db.save_consent(r.id, False)
        elif form.get("agree") == "yes":
            db.save_consent(r.id, True)
        else:
            return page("consent.html", consent=db.consent, token=token,
                        error="Tick the box to agree, or choose 'I do not agree'.")  # fmt: skip
        return to_rater(token)

    def handle_answers(r: Rater, token: str, form: dict[str, str]) -> Response:
        """Store valid screening answers, or show the form again with what is wrong."""
        answers, error = parse_answers(db.questions, form)
        if error:
            return page("questions.html", questions=db.questions, token=token, error=error)
        db.save_answers(r.id, answers)
        return to_rater(token)

    async def vote(request: Request) -> Response:
        """POST /r/{token}/vote."""
        return await post_form(request, MAX_VOTE_BODY, handle_vote)

    async def consent(request: Request) -> Response:
        """POST /r/{token}/consent."""
        return await post_form(request, MAX_FORM_BODY, handle_consent)

    async def answers(request: Request) -> Response:
        """POST /r/{token}/answers."""
        return await post_form(request, MAX_FORM_BODY, handle_answers)

    def do_join(query: dict[str, str]) -> Response:
        """Create or resume the rater of a platform id and send them to their page."""
        if db.closed():
            return closed()
        platform = db.exit.platform
        if platform == "mturk" and query.get("assignmentId") == MTURK_PREVIEW:
            total, n_practice, minutes = estimate()
            return page("start.html", total=total, practice=n_practice, minutes=minutes,
                        preview=True, token="", question=question, allow_tie=db.allow_tie)  # fmt: skip
        found = external_id(platform, query)
        if found is None:
            name = PLATFORMS[platform].id_param
            return message("Participant id missing", f"This link needs your participant id "
                           f"({name}). Open the study from your platform's page.", 400)  # fmt: skip
        token, revoked = db.join(*found)
        if revoked:
            return message("Link withdrawn", "The organiser withdrew this participation.", 403)
        return to_rater(token)

    async def join(request: Request) -> Response:
        """GET /join: the one public entry link."""
        return await run_in_threadpool(do_join, dict(request.query_params))

    def do_image(token: str, image_id: int) -> Response:
        """An image for a rater's or the admin's token; 404 for anything else."""
        if db.rater(token) is None and not db.is_admin(token):
            return plain("not found", 404)
        found = db.image(image_id)
        if found is None:
            return plain("not found", 404)
        headers = {**security, "Cache-Control": "private, max-age=3600"}
        return Response(found[0], media_type=found[1], headers=headers)

    async def image(request: Request) -> Response:
        """GET /img/{token}/{id}."""
        p = request.path_params
        return await run_in_threadpool(do_image, p["token"], p["image_id"])

    def do_admin(token: str) -> Response:
        """The admin page for the current admin token."""
        if not db.is_admin(token):
            return not_found()
        raters, pairs, n, cover = db.admin_rows()
        return page("admin.html", info=db.info, systems=db.systems, raters=raters, pairs=pairs,
                    n_votes=n, cover=cover, closed=db.closed())  # fmt: skip

    async def admin(request: Request) -> Response:
        """GET /admin/{token}."""
        return await run_in_threadpool(do_admin, request.path_params["token"])

    async def root_page(request: Request) -> Response:
        """GET /: nothing to see without a link."""
        return not_found()

    async def favicon(request: Request) -> Response:
        """No icon (and no 404 noise in the browser console)."""
        return Response(status_code=204, headers=security)

    routes = [
        Route("/", root_page),
        Route("/favicon.ico", favicon),
        Route("/join", join, methods=["GET"]),
        Route("/r/{token}", rater_page, methods=["GET"]),
        Route("/r/{token}/vote", vote, methods=["POST"]),
        Route("/r/{token}/consent", consent, methods=["POST"]),
        Route("/r/{token}/answers", answers, methods=["POST"]),
        Route("/img/{token}/{image_id:int}", image, methods=["GET"]),
        Route("/admin/{token}", admin, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    return RootPath(app, root) if root else app


def serve(path: Path, host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions | None = None) -> None:  # fmt: skip
    """Serve the study until interrupted (access log off: request paths carry tokens)."""
    import socket

    import uvicorn

    app = make_app(path, options)
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
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                proxy_headers=False)  # fmt: skip
