"""The study on the open internet: capped bodies, hashed tokens, revoke, close, anonymised copies.

The server runs as a subprocess on 127.0.0.1; its memory is read from /proc while a 2 GB
declared body and an endless chunked body are sent at it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from study_helpers import Server, cli, cli_json, demo_runs, join, next_trial, request, vote

GROWTH_LIMIT = 100 * 2**20


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return demo_runs(tmp_path_factory, "sec_runs")


@pytest.fixture(scope="module")
def study(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sec") / "s.sqlite"
    cli_json("study", "create", "--runs", str(runs), "-p", "demo_1shot", "--models",
             "copy,oracle", "--trials", "8", "--practice", "0", "--repeat-gap", "2",
             "--out", str(out))  # fmt: skip
    return out


def _copy(study: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copy(study, dst)
    return dst


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _flood(port: int, head: bytes, chunk: bytes, limit_bytes: int, seconds: float) -> bytes:
    """Send ``head`` then ``chunk`` repeatedly until the server answers/closes or limits hit."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    sent, t0, reply = 0, time.monotonic(), b""
    sock.setblocking(False)
    try:
        while sent < limit_bytes and time.monotonic() - t0 < seconds:
            try:
                reply += sock.recv(65536)
                if reply:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:  # the server closed the connection: refused
                break
        sock.setblocking(True)
        sock.settimeout(10)
        while b"\r\n" not in reply:
            part = sock.recv(65536)
            if not part:
                break
            reply += part
    except OSError:
        pass
    finally:
        sock.close()
    return reply


def test_huge_and_endless_bodies_are_refused_without_memory_growth(study, tmp_path):
    s = _copy(study, tmp_path, "big.sqlite")
    tokens = _invite(s, 1)
    token = tokens[0]
    with Server(s) as srv:
        p = srv.port
        next_trial(p, token)
        before = _rss(srv.pid)
        head = (f"POST /r/{token}/vote HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {2 * 2**30}\r\n\r\n").encode()  # fmt: skip
        reply = _flood(p, head, b"a" * 2**20, 300 * 2**20, 20)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
        forged = head.replace(token.encode(), b"A" * len(token))
        reply = _flood(p, forged, b"a" * 2**20, 300 * 2**20, 20)
        assert reply.startswith(b"HTTP/1.1 404"), reply[:80]  # token checked before the body
        chunked = (f"POST /r/{token}/vote HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n"
                   "Content-Type: application/x-www-form-urlencoded\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode()  # fmt: skip
        piece = b"10000\r\n" + b"b" * 0x10000 + b"\r\n"
        reply = _flood(p, chunked, piece, 300 * 2**20, 20)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
        after = _rss(srv.pid)
        assert after - before < GROWTH_LIMIT, (before, after)
        assert request(p, "GET", f"/r/{token}?start=1")[0] == 200  # still serving


def _invite(study: Path, n: int) -> list[str]:
    from varbench.study.db import open_study
    from varbench.study.raters import invite

    con = open_study(study)
    try:
        return invite(con, n)
    finally:
        con.close()


def test_tokens_are_stored_hashed_and_odd_tokens_are_404(study, tmp_path):
    s = _copy(study, tmp_path, "tok.sqlite")
    (token,) = _invite(s, 1)
    out = cli_json("study", "invite", str(s), "--raters", "1")
    admin = out["admin"].rsplit("/", 1)[1]
    with sqlite3.connect(s) as con:
        digests = {r[0] for r in con.execute("SELECT token_sha256 FROM raters")}
        admin_digest = con.execute("SELECT value FROM meta WHERE key = 'admin_sha256'").fetchone()
    assert hashlib.sha256(token.encode()).hexdigest() in digests
    assert admin_digest[0] == hashlib.sha256(admin.encode()).hexdigest()
    for path in (s, Path(f"{s}-wal")):
        if path.exists():
            raw = path.read_bytes()
            assert token.encode() not in raw and admin.encode() not in raw
    with Server(s) as srv:
        p = srv.port
        for path in ("/r/%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9",
                     f"/r/{token[:-2]}%C3%A9", "/admin/%E2%9C%93" + "x" * 20,
                     f"/img/{token[:-1]}%C3%A9/1", "/r/" + "A" * 5000,
                     f"/r/{token}%00", "/join?PROLIFIC_PID=%C3%A9"):  # fmt: skip
            status = request(p, "GET", path)[0]
            assert status in (400, 404), (path, status)
        raw = socket.create_connection(("127.0.0.1", p), timeout=10)  # raw UTF-8 in the path
        raw.sendall(f"GET /r/{token[:-1]}é HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert raw.recv(100).split(b" ")[1] in (b"400", b"404")
        raw.close()
        trial = next_trial(p, token)
        body = f"token={token[:-1]}%C3%A9&trial={trial}&choice=left&ms=9"
        assert request(p, "POST", f"/r/{token}/vote", body)[0] == 403  # never 500
        many = "&".join(f"f{i}=1" for i in range(100))
        assert request(p, "POST", f"/r/{token}/vote", f"token={token}&{many}")[0] == 413
        assert request(p, "GET", f"/admin/{admin}")[0] == 200


def test_revoke_and_close_work_while_serving(study, tmp_path):
    s = _copy(study, tmp_path, "rev.sqlite")
    with sqlite3.connect(s) as con:
        con.execute("UPDATE slices SET planned = 3")
    with Server(s) as srv:
        p = srv.port
        a = join(p, "participant=alice")
        b = join(p, "participant=bob")
        t = next_trial(p, a)
        assert vote(p, a, t, "left") == "stored"
        out = cli_json("study", "revoke", str(s), "--external-id", "alice")
        assert out["slices_released"] == 1
        assert request(p, "GET", f"/r/{a}")[0] == 404
        body = f"token={a}&trial={next_trial(p, b)}&choice=left&ms=5"
        assert request(p, "POST", f"/r/{a}/vote", body)[0] == 404
        assert request(p, "GET", "/join?participant=alice")[0] == 403  # no new token either
        cli_json("study", "close", str(s))
        assert request(p, "GET", f"/r/{b}")[0] == 410
        assert request(p, "GET", "/join?participant=carol")[0] == 410
        tb = f"token={b}&trial=1&choice=left&ms=5"
        assert request(p, "POST", f"/r/{b}/vote", tb)[0] == 410
        cli_json("study", "close", str(s), "--reopen")
        assert request(p, "GET", f"/r/{b}?start=1")[0] == 200
    proc = cli("study", "revoke", str(s), "--rater", "99")
    assert proc.returncode == 2 and "--rater 99" in proc.stderr


def test_anonymised_export_keeps_votes_and_drops_every_id(study, tmp_path):
    s = _copy(study, tmp_path, "anon.sqlite")
    with sqlite3.connect(s) as con:
        con.execute("UPDATE slices SET planned = 3")
    with Server(s) as srv:
        p = srv.port
        tokens = [join(p, f"participant=PARTICIPANT{i}") for i in range(3)]
        for i, tok in enumerate(tokens):
            while (t := next_trial(p, tok)) is not None:
                vote(p, tok, t, ("left", "right")[(t + i) % 2])
    out = tmp_path / "shared.sqlite"
    cli_json("study", "export", str(s), "--anonymise", "--out", str(out))
    raw = out.read_bytes()
    with sqlite3.connect(s) as con:
        digests = [r[0] for r in con.execute("SELECT token_sha256 FROM raters")]
        admin = con.execute("SELECT value FROM meta WHERE key = 'admin_sha256'").fetchone()
    assert b"PARTICIPANT" not in raw
    assert not any(d.encode() in raw for d in digests if d)
    assert admin is None or admin[0].encode() not in raw
    a = cli_json("study", "results", str(s), "--format", "json", "--n-boot", "200")
    b = cli_json("study", "results", str(out), "--format", "json", "--n-boot", "200")
    assert a["per_system"] == b["per_system"] and a["n_votes"] == b["n_votes"] > 0
    assert len(a["raters"]) == 3 and [r["external_id"] for r in b["raters"]] == [None] * 3


def test_run_index_paths_must_stay_inside_the_run(runs, tmp_path):
    evil = tmp_path / "runs"
    shutil.copytree(runs, evil)
    index = next(evil.glob("copy-*/points/*/index.json"))
    entries = json.loads(index.read_text())
    entries[0]["file"] = "../../../../../../etc/hostname"
    index.write_text(json.dumps(entries))
    proc = cli("study", "create", "--runs", str(evil), "-p", "demo_1shot", "--models",
               "copy,oracle", "--out", str(tmp_path / "x.sqlite"))  # fmt: skip
    assert proc.returncode == 2 and "outside the run's folder" in proc.stderr, proc.stderr


@pytest.mark.parametrize("opts,words", [
    ({"slice_timeout_min": 0}, "--slice-timeout 0"),
    ({"root_path": "study"}, "--root-path 'study'"),
    ({"public_url": "lab.example.org"}, "--public-url 'lab.example.org'"),
])  # fmt: skip
def test_bad_serve_flags_name_the_flag(study, opts, words):
    from varbench.errors import UsageError
    from varbench.study.server import ServeOptions, make_app

    with pytest.raises(UsageError, match=words.replace("'", ".")):
        make_app(study, ServeOptions(**opts))
