"""A simulated Prolific crowd through the one join link, and the platform entry and exit.

60 participants arrive with Prolific ids; 10 % abandon mid-slice (their slices come back after
the slice timeout), 10 % always click left. Every number asserted is counted from the study
file or from what the participants saw, not from the code's own summaries.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from study_helpers import (
    Crowd,
    Server,
    cli,
    cli_json,
    crowd_kinds,
    demo_runs,
    join,
    next_trial,
    request,
    trial_info,
    vote,
)

PLANNED = 3
SLICES = 16
QUESTIONS = [{"id": "age", "text": "Your age?", "type": "number"},
             {"id": "vision", "text": "Normal colour vision?", "type": "choice",
              "options": ["yes", "no"]}]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return demo_runs(tmp_path_factory, "crowd_runs")


def make_study(runs: Path, out: Path, *extra: str, slices: int = SLICES) -> Path:
    consent = out.with_suffix(".consent.txt")
    consent.write_text("You will compare images for about five minutes.\n\nData: anonymous.")
    questions = out.with_suffix(".questions.json")
    questions.write_text(json.dumps(QUESTIONS))
    cli_json("study", "create", "--runs", str(runs), "-p", "demo_1shot", "--models",
             "copy,oracle", "--trials", str(14 * slices), "--slice-trials", "14",
             "--raters-per-slice", str(PLANNED), "--check-share", "0.4", "--repeat-share", "0.2",
             "--consent", str(consent), "--questions", str(questions), "--out", str(out),
             *extra)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def prolific_study(runs, tmp_path_factory) -> Path:
    return make_study(runs, tmp_path_factory.mktemp("crowd") / "p.sqlite", "--platform",
                      "prolific", "--completion-code", "C0MPLETE", "--screenout-code", "SCRN0UT")  # fmt: skip


def _counts(study: Path) -> dict:
    with sqlite3.connect(study) as con:
        finished = dict(con.execute(
            "SELECT s.id, (SELECT COUNT(*) FROM assignments a WHERE a.slice_id = s.id AND "
            "a.status = 'finished') FROM slices s"))  # fmt: skip
        per_trial = pd.read_sql_query(
            "SELECT t.id, COUNT(DISTINCT v.rater_id) AS n FROM trials t LEFT JOIN votes v ON "
            "v.trial_id = t.id AND v.assignment_id IN (SELECT id FROM assignments WHERE "
            "status = 'finished') WHERE t.kind = 'main' GROUP BY t.id", con)  # fmt: skip
        stored = con.execute(
            "SELECT r.token_sha256, v.trial_id, r.external_id FROM votes v JOIN raters r "
            "ON r.id = v.rater_id JOIN trials t ON t.id = v.trial_id "
            "WHERE t.kind != 'practice'").fetchall()  # fmt: skip
        status = dict(con.execute(
            "SELECT r.external_id, a.status FROM assignments a JOIN raters r ON r.id = "
            "a.rater_id ORDER BY a.id"))  # fmt: skip
        answers = dict(con.execute("SELECT external_id, answers FROM raters"))
    return {"finished": finished, "per_trial": per_trial, "stored": stored, "status": status,
            "answers": answers}  # fmt: skip


def test_prolific_crowd_fills_every_slice_and_flags_the_clickers(prolific_study, tmp_path):
    study = tmp_path / "crowd.sqlite"
    study.write_bytes(prolific_study.read_bytes())
    kinds = crowd_kinds(60, 0.1, 0.1, seed=1)
    with Server(study, args=("--slice-timeout", "0.05")) as srv:  # 3 s without a vote
        crowd = Crowd(srv.port, study, kinds).run(workers=12)
        assert not crowd.errors, crowd.errors[:5]
        again = join(srv.port, f"PROLIFIC_PID={crowd.pid(20)}&STUDY_ID=s25&SESSION_ID=y")
        page = request(srv.port, "GET", f"/r/{again}")[2].decode()
    c = _counts(study)
    # every slice, hence every trial, reached its planned number of finished raters
    assert c["finished"] == {s: PLANNED for s in range(1, SLICES + 1)}
    assert (c["per_trial"]["n"] == PLANNED).all()
    # nothing acknowledged was lost, nothing stored twice or unsent
    stored = [(ext, t) for _, t, ext in c["stored"]]
    assert set(crowd.acked) <= set(stored) and len(set(stored)) == len(stored)
    assert len(crowd.acked) == len(set(crowd.acked))
    assert set(stored) <= set(crowd.sent)
    by_kind = {k: {crowd.pid(i) for i, kk in enumerate(kinds) if kk == k} for k in set(kinds)}
    assert len(by_kind["abandon"]) == 6 and len(by_kind["left"]) == 6
    for pid, o in crowd.outcomes.items():
        if o["kind"] == "good":
            assert (o["screened"], o["code"]) == (False, "C0MPLETE")
            assert o["redirect"] == "https://app.prolific.com/submissions/complete?cc=C0MPLETE"
        elif o["kind"] == "left":
            assert (o["screened"], o["code"]) == (True, "SCRN0UT")
            assert o["redirect"].endswith("cc=SCRN0UT")
        else:
            assert o.get("abandoned") and c["status"][pid] == "released"
    assert len(crowd.outcomes) == 60
    # the same Prolific id is the same rater: back on the end page with its code
    assert "C0MPLETE" in page or "SCRN0UT" in page
    assert json.loads(c["answers"][crowd.pid(20)]) == {"age": 31.0, "vision": "yes"}
    res = cli_json("study", "results", str(study), "--format", "json", "--n-boot", "200")
    flagged = {r["external_id"]: r for r in res["raters"] if r["excluded"]}
    assert set(flagged) == by_kind["left"]  # by checks and by side share
    for r in flagged.values():
        assert "attention checks" in r["reasons"] and "chose left" in r["reasons"]
        assert r["left_share"] == 1.0
    se = cli_json("study", "results", str(study), "--format", "json", "--n-boot", "200",
                  "--side-effect")["side_effect"]  # fmt: skip
    assert se["lo"] <= se["left_elo_points"] <= se["hi"] and 0 < se["left_win_prob_even"] < 1
    pay = cli_json("study", "results", str(study), "--payments")
    assert set(pay["approve"]) == by_kind["good"] and set(pay["reject"]) == by_kind["left"]
    assert set(pay["unfinished"]) == by_kind["abandon"] and not pay["no_consent"]
    info = trial_info(study)
    main_votes = [t for _, t, ext in c["stored"] if info[t][0] == "main" and ext not in flagged]
    assert res["n_main_votes"] == len(main_votes)
    p95 = sorted(crowd.latency_ms)[int(0.95 * len(crowd.latency_ms))]
    print(f"vote_p95_ms={p95:.1f}")
    assert p95 <= 200


def _headers(port: int, path: str) -> dict:
    return request(port, "GET", path)[1]


def test_mturk_mode_frames_only_mturk_and_posts_to_external_submit(runs, tmp_path):
    study = make_study(runs, tmp_path / "m.sqlite", "--platform", "mturk", "--completion-code",
                       "MTK0K", "--practice", "0", slices=1)  # fmt: skip
    out = cli_json("study", "invite", str(study), "--public", "--base-url",
                   "https://lab.example.org/study")  # fmt: skip
    assert out["join"] == "https://lab.example.org/study/join"  # MTurk appends its own ids
    assert out["parameters"] == ["workerId", "assignmentId", "hitId", "turkSubmitTo"]
    assert (
        "<ExternalURL>https://lab.example.org/study/join</ExternalURL>" in out["external_question"]
    )
    info = trial_info(study)
    with Server(study) as srv:
        p = srv.port
        preview = "/join?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE&hitId=H"
        status, h, body = request(p, "GET", preview)
        assert status == 200 and b'id="preview"' in body and b"/r/" not in body
        csp = h["content-security-policy"]
        assert "frame-ancestors https://www.mturk.com;" in csp + ";" or csp.endswith(
            "frame-ancestors https://www.mturk.com"
        )
        assert "form-action 'self' https://www.mturk.com/mturk/externalSubmit;" in csp
        assert "x-frame-options" not in h
        token = join(p, "workerId=A1B2C3&assignmentId=3XYZ&hitId=H1&turkSubmitTo=https%3A%2F%2F"
                        "www.mturk.com")  # fmt: skip
        request(p, "POST", f"/r/{token}/consent", f"token={token}&agree=yes&decision=agree")
        request(p, "POST", f"/r/{token}/answers", f"token={token}&age=40&vision=no")
        while (t := next_trial(p, token)) is not None:
            kind, expected, _ = info[t]
            vote(p, token, t, expected if kind == "check" else ("left", "right")[t % 2])
        page = request(p, "GET", f"/r/{token}")[2].decode()
    assert 'id="thanks"' in page
    assert 'action="https://www.mturk.com/mturk/externalSubmit"' in page
    assert 'name="assignmentId" value="3XYZ"' in page and 'value="MTK0K"' in page
    assert "http-equiv" not in page  # MTurk: a form post, not a redirect
    with sqlite3.connect(study) as con:
        assert con.execute("SELECT COUNT(*) FROM raters").fetchone()[0] == 1  # preview: none


def test_other_platforms_forbid_framing_and_decline_ends_with_the_screenout_code(
    prolific_study, tmp_path
):
    study = tmp_path / "d.sqlite"
    study.write_bytes(prolific_study.read_bytes())
    out = cli_json("study", "invite", str(study), "--public", "--base-url",
                   "https://lab.example.org/study")  # fmt: skip
    assert out["join"] == ("https://lab.example.org/study/join?PROLIFIC_PID={{%PROLIFIC_PID%}}"
                           "&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")  # fmt: skip
    generic = cli_json("study", "invite", str(study), "--public", "--platform", "generic")
    assert generic["join"].endswith("/join?participant=PARTICIPANT_ID")
    with Server(study) as srv:
        p = srv.port
        token = join(p, "PROLIFIC_PID=abc123&STUDY_ID=S&SESSION_ID=X")
        status, h, body = request(p, "GET", f"/r/{token}")
        assert b"You will compare images" in body and b'id="agree"' in body
        assert (
            h["x-frame-options"] == "DENY"
            and "frame-ancestors 'none'" in h["content-security-policy"]
            and h["referrer-policy"] == "same-origin"
        )
        form = f"token={token}&decision=agree"  # no tick: asked again
        assert b"Tick the box" in request(p, "POST", f"/r/{token}/consent", form)[2]
        status, h, _ = request(p, "POST", f"/r/{token}/consent", f"token={token}&decision=decline")
        assert status == 303
        page = request(p, "GET", f"/r/{token}")[2].decode()
        assert 'id="code">SCRN0UT<' in page and "cc=SCRN0UT" in page
        assert request(p, "GET", "/join?STUDY_ID=S")[0] == 400  # no participant id
        assert b"PROLIFIC_PID" in request(p, "GET", "/join?PROLIFIC_PID=%3Cscript%3E")[2]
    with sqlite3.connect(study) as con:
        assert con.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 0
    pay = cli_json("study", "results", str(study), "--payments")
    assert pay["no_consent"] == ["abc123"] and not pay["approve"]


def test_proxy_root_path_public_origin_and_null_origin(prolific_study, tmp_path):
    study = tmp_path / "proxy.sqlite"
    study.write_bytes(prolific_study.read_bytes())
    info = trial_info(study)
    public = "https://lab.example.org"
    with Server(study, args=("--root-path", "/study", "--public-url", f"{public}/study")) as srv:
        p, root = srv.port, "/study"
        token = join(p, "PROLIFIC_PID=p1&STUDY_ID=S&SESSION_ID=X", root)
        page = request(p, "GET", f"{root}/r/{token}")[2].decode()
        links = re.findall(r'(?:href|action|src)="([^"]+)"', page)
        assert links and all(x.startswith("/study/") for x in links), links
        token2 = join(p, "PROLIFIC_PID=p2&STUDY_ID=S&SESSION_ID=X")  # a proxy that strips /study
        assert request(p, "GET", f"/r/{token2}")[0] == 200
        consent = f"token={token}&agree=yes&decision=agree"
        for origin, want in ((f"http://127.0.0.1:{p}", 403), ("null", 403),
                             ("https://evil.example", 403), (public, 303)):  # fmt: skip
            got = request(p, "POST", f"{root}/r/{token}/consent", consent, {"Origin": origin})
            assert got[0] == want, origin
        request(p, "POST", f"{root}/r/{token}/answers", f"token={token}&age=20&vision=yes",
                {"Origin": public})  # fmt: skip
        for t, (kind, expected, _) in info.items():
            if kind == "practice":
                vote(p, token, t, str(expected), root=root)
        trial = next_trial(p, token, root)
        body = f"token={token}&trial={trial}&choice=left&ms=700"
        assert request(p, "POST", f"{root}/r/{token}/vote", body, {"Origin": "null"})[0] == 403
        status, h, _ = request(p, "POST", f"{root}/r/{token}/vote", body, {"Origin": public})
        assert status == 303 and h["location"] == f"/study/r/{token}" and h["x-vote"] == "stored"


def test_a_returning_rater_gets_their_own_slice_back(runs, tmp_path):
    study = make_study(runs, tmp_path / "back.sqlite", "--platform", "generic", "--practice",
                       "0", slices=1)  # fmt: skip
    with sqlite3.connect(study) as con:
        con.execute("UPDATE slices SET planned = 1")
        con.execute("UPDATE meta SET value = '' WHERE key IN ('consent')")
        con.execute("UPDATE meta SET value = '[]' WHERE key = 'questions'")
    with Server(study, args=("--slice-timeout", "0.02")) as srv:  # 1.2 s
        p = srv.port
        a = join(p, "participant=alice")
        first = next_trial(p, a)
        assert vote(p, a, first, "left") == "stored"
        b = join(p, "participant=bob")
        assert "No places left" in request(p, "GET", f"/r/{b}?start=1")[2].decode()
        import time

        time.sleep(1.5)  # alice times out; bob takes her slice
        assert next_trial(p, b) is not None
        assert vote(p, a, next_trial(p, b), "left") in ("expired", "unknown")
        assert "No places left" in request(p, "GET", f"/r/{a}?start=1")[2].decode()
        time.sleep(1.5)  # bob leaves too; alice comes back to her own slice and votes
        again = next_trial(p, a)
        assert again is not None and again != first
        assert vote(p, a, first, "right") == "duplicate"  # her earlier vote still stands
    with sqlite3.connect(study) as con:
        rows = con.execute("SELECT r.external_id, a.status FROM assignments a JOIN raters r "
                           "ON r.id = a.rater_id ORDER BY a.id").fetchall()  # fmt: skip
    assert rows == [("alice", "active"), ("bob", "released")]


@pytest.mark.parametrize("extra,words", [
    (("--platform", "prolific"), "--platform prolific needs --completion-code"),
    (("--completion-url", "http://evil.example/done"), "--completion-url"),
    (("--platform", "mturk", "--completion-url", "https://evil.example/externalSubmit"),
     "externalSubmit"),
    (("--slice-trials", "7"), "--slice-trials 7: must be even"),
    (("--max-side-share", "0.4"), "--max-side-share 0.4"),
    (("--completion-code", "a b"), "--completion-code"),
])  # fmt: skip
def test_bad_create_flags_are_one_clear_error(runs, tmp_path, extra, words):
    proc = cli("study", "create", "--runs", str(runs), "-p", "demo_1shot", "--models",
               "copy,oracle", "--out", str(tmp_path / "x.sqlite"), *extra)  # fmt: skip
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.sqlite").exists()


def test_bad_questions_file_names_the_flag(runs, tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text(json.dumps([{"id": "Age!", "text": "?", "type": "number"}]))
    proc = cli(
        "study",
        "create",
        "--runs",
        str(runs),
        "-p",
        "demo_1shot",
        "--models",
        "copy,oracle",
        "--out",
        str(tmp_path / "x.sqlite"),
        "--questions",
        str(bad),
    )
    assert proc.returncode == 2 and "--questions" in proc.stderr and "lowercase" in proc.stderr
