"""Helpers for the study tests and the load benchmark: a served study and an HTTP rater."""

from __future__ import annotations

import http.client
import os
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
