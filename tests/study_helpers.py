"""Helpers for the study tests and the load benchmark: a served study and an HTTP rater."""

from __future__ import annotations

import html
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

TRIAL_RE = re.compile(r'name="trial" value="(\d+)"')
TOKEN_RE = re.compile(r"/r/([A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`varbench study serve FILE` in a subprocess on 127.0.0.1 (start, kill, restart)."""

    def __init__(self, study: Path, port: int | None = None, args: tuple[str, ...] = ()):
        self.study, self.port = Path(study), port or free_port()
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "varbench.cli", "study", "serve", str(self.study),
             "--port", str(self.port), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}")
            try:
                status, _, _ = request(self.port, "GET", self.root + "/")
                if status == 404:
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("server did not start")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def root(self) -> str:
        return self.args[self.args.index("--root-path") + 1] if "--root-path" in self.args else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.root}"

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def request(port: int, method: str, path: str, body: str | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:  # fmt: skip
    """One raw HTTP request (the path is sent as given, unnormalised)."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        con.request(method, path, body=body, headers=hdrs)
        resp = con.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        con.close()


def page(port: int, token: str, root: str = "") -> str:
    """The rater's page now (after the instructions)."""
    status, _, body = request(port, "GET", f"{root}/r/{token}?start=1")
    if status != 200:
        raise AssertionError(f"GET /r/<token>: {status}")
    return body.decode()


def next_trial(port: int, token: str, root: str = "") -> int | None:
    """The trial the rater's page shows now (None on an end page)."""
    m = TRIAL_RE.search(page(port, token, root))
    return int(m.group(1)) if m else None


def vote(port: int, token: str, trial: int, choice: str, ms: int = 1000, root: str = "") -> str:
    """POST one vote like the page's form; returns the server's X-Vote (stored | duplicate)."""
    status, headers, _ = request(
        port, "POST", f"{root}/r/{token}/vote",
        f"token={token}&trial={trial}&choice={choice}&ms={ms}",
    )  # fmt: skip
    if status != 303:
        raise AssertionError(f"vote: HTTP {status}")
    return headers.get("x-vote", "")


def join(port: int, query: str, root: str = "") -> str:
    """Arrive through the public join link with ``query``; return the rater's token."""
    status, headers, body = request(port, "GET", f"{root}/join?{query}")
    if status != 303:
        raise AssertionError(f"join: HTTP {status}: {body[:200]!r}")
    m = TOKEN_RE.search(headers["location"])
    assert m, headers["location"]
    return m.group(1)


def practice(port: int, token: str, expected: dict[int, str], root: str = "") -> int:
    """Answer the practice trials correctly; return how many there were."""
    n = 0
    while (trial := next_trial(port, token, root)) in expected:
        vote(port, token, trial, expected[trial], root=root)
        n += 1
    return n


CODE_RE = re.compile(r'id="code">([^<]+)<')
REFRESH_RE = re.compile(r'http-equiv="refresh" content="\d+;url=([^"]+)"')


def trial_info(study: Path) -> dict[int, tuple[str, str | None, str]]:
    """trial id -> (kind, expected side, left system), read straight from the file."""
    import sqlite3

    with sqlite3.connect(study) as con:
        rows = con.execute("SELECT id, kind, expected, left_model FROM trials").fetchall()
    return {int(i): (k, e, lm) for i, k, e, lm in rows}


class Crowd:
    """Platform participants arriving through one join link, each in their own thread.

    Kinds: ``good`` (answers checks right, prefers ``favourite`` 70 % of the time), ``left``
    (always clicks left), ``abandon`` (votes ``abandon_after`` times, then closes the tab). A
    participant who finds every place taken retries until ``deadline_s``, as a platform reopens
    places when slices come back.
    """

    def __init__(self, port: int, study: Path, kinds: list[str], root: str = "",
                 favourite: str = "oracle", abandon_after: int = 3, deadline_s: float = 240,
                 query: str = "PROLIFIC_PID={pid}&STUDY_ID=s25&SESSION_ID=x{pid}"):  # fmt: skip
        import threading

        self.port, self.root, self.kinds = port, root, kinds
        self.info = trial_info(study)
        self.favourite, self.abandon_after, self.query = favourite, abandon_after, query
        self.deadline = time.monotonic() + deadline_s
        self.lock = threading.Lock()
        self.sent: list[tuple[str, int]] = []  # (participant id, trial)
        self.acked: list[tuple[str, int]] = []
        self.latency_ms: list[float] = []
        self.outcomes: dict[str, dict] = {}
        self.errors: list[str] = []

    def pid(self, i: int) -> str:
        return f"5f{i:022x}"  # Prolific ids: 24 hex characters

    def _get(self, path: str) -> str:
        status, _, body = request(self.port, "GET", self.root + path)
        if status != 200:
            raise AssertionError(f"GET {path.split('?')[0][:10]}...: HTTP {status}")
        return body.decode()

    def _post(self, token: str, what: str, body: str) -> tuple[int, dict]:
        status, headers, _ = request(self.port, "POST", f"{self.root}/r/{token}/{what}",
                                     f"token={token}&{body}")  # fmt: skip
        return status, headers

    def _choice(self, i: int, kind: str, trial: int) -> str:
        t_kind, expected, left = self.info[trial]
        if kind == "left":
            return "left"
        if t_kind in ("check", "practice"):
            return str(expected)
        rng = random.Random(i * 1_000_003 + trial)
        return "left" if (left == self.favourite) == (rng.random() < 0.7) else "right"

    def participant(self, i: int) -> None:
        kind, pid = self.kinds[i], self.pid(i)
        try:
            token = join(self.port, self.query.format(pid=pid), self.root)
            page_ = self._get(f"/r/{token}")
            if 'id="consent-page"' in page_:
                assert self._post(token, "consent", "agree=yes&decision=agree")[0] == 303
                page_ = self._get(f"/r/{token}")
            if 'id="questions"' in page_:
                assert self._post(token, "answers", "age=31&vision=yes")[0] == 303
            assert 'id="duration"' in self._get(f"/r/{token}")
            votes = 0
            while time.monotonic() < self.deadline:
                page_ = self._get(f"/r/{token}?start=1")
                m = TRIAL_RE.search(page_)
                if m is None:
                    if "No places left" in page_:
                        time.sleep(0.3)
                        continue
                    code = CODE_RE.search(page_)
                    url = REFRESH_RE.search(page_)
                    with self.lock:
                        self.outcomes[pid] = {
                            "kind": kind, "screened": 'id="screenout"' in page_,
                            "code": code.group(1) if code else None,
                            "redirect": html.unescape(url.group(1)) if url else None,
                        }  # fmt: skip
                    return
                trial = int(m.group(1))
                if kind == "abandon" and votes >= self.abandon_after:
                    with self.lock:
                        self.outcomes[pid] = {"kind": kind, "abandoned": True}
                    return
                pick = self._choice(i, kind, trial)
                ms = 800 + (i * 37 + trial * 11) % 1500
                with self.lock:
                    self.sent.append((pid, trial))
                t0 = time.perf_counter()
                status, headers = self._post(token, "vote", f"trial={trial}&choice={pick}&ms={ms}")
                took = (time.perf_counter() - t0) * 1000
                if status != 303:
                    raise AssertionError(f"vote: HTTP {status}")
                with self.lock:
                    if self.info[trial][0] != "practice":
                        self.acked.append((pid, trial))
                        self.latency_ms.append(took)
                if self.info[trial][0] == "practice":
                    assert "feedback=" in headers["location"]
                    self._get(headers["location"][len(self.root) :])
                else:
                    votes += 1
            raise AssertionError("deadline passed")
        except Exception as exc:  # collected, reported by the test
            with self.lock:
                self.errors.append(f"{kind} {pid}: {exc!r}")

    def run(self, workers: int = 12, stagger_s: float = 0.02) -> Crowd:
        """All participants, ``workers`` at a time, arriving ``stagger_s`` apart."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for i in range(len(self.kinds)):
                pool.submit(self.participant, i)
                time.sleep(stagger_s)
        return self


def crowd_kinds(n: int = 60, abandon: float = 0.1, left: float = 0.1, seed: int = 0) -> list[str]:
    """``n`` participant kinds; abandoners come early so their slices must be reclaimed."""
    n_ab, n_left = round(n * abandon), round(n * left)
    rest = ["left"] * n_left + ["good"] * (n - n_ab - n_left)
    random.Random(seed).shuffle(rest)
    return ["abandon"] * n_ab + rest


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m varbench.cli ARGS` cold (about 1 s: the study commands import no torch)."""
    return subprocess.run([sys.executable, "-m", "varbench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ})  # fmt: skip


def demo_runs(tmp_path_factory, name: str, models=("copy", "oracle")) -> Path:
    """Finished demo runs of ``models`` (4 samples per conditioning image), in-process."""
    from varbench.runner import RunConfig, run

    out = tmp_path_factory.mktemp(name) / "runs"
    cache = tmp_path_factory.getbasetemp() / "varbench-cache"
    for model in models:
        run(RunConfig(model=model, protocol="demo_1shot", out=out, cache_dir=cache,
                      sets={"n_per_class": "4"}))  # fmt: skip
    return out


def cli_out(*args: str) -> str:
    """stdout of `varbench ARGS` run in this process (typer's runner: no interpreter start-up)."""
    from typer.testing import CliRunner

    from varbench.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_json(*args: str):
    """`varbench ARGS` in this process, its stdout parsed as JSON."""
    return json.loads(cli_out(*args))
