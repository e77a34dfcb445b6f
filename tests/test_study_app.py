"""`varbench study` in a lab: built from real demo runs, served, voted over HTTP, analysed.

Runs: the demo's copy, oracle and augment baselines (one module-scoped folder). Servers listen
on 127.0.0.1 only and run as subprocesses, so SIGKILL is a real kill. The browser walks are
in test_study_browser.py, the crowd platforms in test_study_crowd.py.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image
from scipy import stats as sps
from study_helpers import Server, cli_out, demo_runs, next_trial, request, vote

from varbench.study.db import token_hash

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
MODELS = ("copy", "oracle", "augment")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return demo_runs(tmp_path_factory, "study_runs", MODELS)


def cli_json(*args: str):
    """`varbench ARGS` in this process: stdout as JSON when it is JSON, else the text."""
    out = cli_out(*args)
    return json.loads(out) if out.lstrip().startswith(("{", "[")) else out


def _create(runs: Path, out: Path, models=("copy", "oracle"), trials=8, *extra: str) -> Path:
    cli_json("study", "create", "--runs", str(runs), "-p", "demo_1shot", "--models",
             ",".join(models), "--trials", str(trials), "--out", str(out), *extra)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def small_study(runs, tmp_path_factory) -> Path:
    """Two models, 8 main trials, 4 checks, 2 repeats (gap 3), ties allowed, no practice."""
    return _create(runs, tmp_path_factory.mktemp("study") / "s.sqlite", ("copy", "oracle"), 8,
                   "--check-share", "0.5", "--repeat-share", "0.25", "--allow-tie",
                   "--practice", "0", "--repeat-gap", "3")  # fmt: skip


def _invite(study: Path, n: int, cli: bool = False) -> tuple[list[str], str]:
    """New raters' tokens and a fresh admin token (through the CLI, or the library: faster)."""
    if cli:
        out = cli_json("study", "invite", str(study), "--raters", str(n))
        return [link.rsplit("/", 1)[1] for link in out["links"]], out["admin"].rsplit("/", 1)[1]
    from varbench.study.db import new_admin_token, open_study
    from varbench.study.raters import invite

    con = open_study(study)
    try:
        tokens = invite(con, n)
        con.execute("BEGIN IMMEDIATE")
        admin = new_admin_token(con)
        con.execute("COMMIT")
        return tokens, admin
    finally:
        con.close()


def _trials(study: Path) -> pd.DataFrame:
    with sqlite3.connect(study) as con:
        return pd.read_sql_query("SELECT * FROM trials ORDER BY id", con)


def _votes(study: Path) -> pd.DataFrame:
    with sqlite3.connect(study) as con:
        return pd.read_sql_query("SELECT * FROM votes ORDER BY rater_id, trial_id", con)


def test_create_balances_pairs_and_is_self_contained(runs, tmp_path):
    study = _create(runs, tmp_path / "three.sqlite", MODELS, 30, "--seed", "3")
    t = _trials(study)
    main = t[t["kind"] == "main"]
    pairs = main.apply(lambda r: tuple(sorted((r["left_model"], r["right_model"]))), axis=1)
    assert sorted(pairs.value_counts().tolist()) == [10, 10, 10]  # balanced over model pairs
    counts = main["cond"].value_counts()
    assert counts.max() - counts.min() <= 2  # within one twin (two trials) of each other
    assert 0 < (main["left_model"] == "copy").sum() < (pairs.map(lambda p: "copy" in p)).sum()
    for _, g in main.groupby(pairs.map(str) + main["cond"]):  # exact per pair and image
        assert len(g) % 2 == 0 and g["left_model"].value_counts().nunique() == 1, g
    checks, reps = t[t["kind"] == "check"], t[t["kind"] == "repeat"]
    assert len(checks) == 3 and len(reps) == 3 and (t["kind"] == "practice").sum() == 2
    assert set(checks["expected"]) <= {"left", "right"} and main["expected"].isna().all()
    for _, r in reps.iterrows():  # a repeat is its original with the sides swapped
        o = t[t["id"] == r["repeat_of"]].iloc[0]
        assert (r["left_model"], r["right_model"], r["left_images"], r["cond"]) == (
            o["right_model"], o["left_model"], o["right_images"], o["cond"])  # fmt: skip
    # Same seed, same study; a copy far from the runs serves every image from the file alone.
    again = _create(runs, tmp_path / "again.sqlite", MODELS, 30, "--seed", "3")
    cols = ["kind", "cond", "sample_index", "left_model", "right_model", "expected"]
    assert _trials(again)[cols].equals(t[cols])
    moved = tmp_path / "elsewhere" / "moved.sqlite"
    moved.parent.mkdir()
    shutil.copy(study, moved)
    tokens, _ = _invite(moved, 1)
    with sqlite3.connect(moved) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM images")]
    candidates = {
        i for col in ("left_images", "right_images") for x in t[col] for i in json.loads(x)
    }
    with Server(moved) as srv:
        for i in ids:
            status, headers, body = request(srv.port, "GET", f"/img/{tokens[0]}/{i}")
            assert status == 200 and body[:3] == b"\xff\xd8\xff"  # one format: JPEG
            if i in candidates:  # every candidate at one size, whatever the run made
                assert Image.open(io.BytesIO(body)).size == (512, 512)


def test_damaged_or_foreign_study_file_is_one_clear_error(small_study, tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(small_study.read_bytes()[:4096] + os.urandom(20000))
    other = tmp_path / "other.sqlite"
    shutil.copy(small_study, other)
    with sqlite3.connect(other) as con:
        con.execute("PRAGMA user_version = 99")
    plain = tmp_path / "plain.sqlite"
    with sqlite3.connect(plain) as con:
        con.execute("CREATE TABLE x (a)")
    from varbench.study.analysis import analyse
    from varbench.study.db import StudyFileError
    from varbench.study.server import make_app

    for path, words in ((junk, "damaged"), (other, "format 99"), (plain, "not a varbench")):
        for fn in (analyse, make_app):
            with pytest.raises(StudyFileError, match=words) as info:
                fn(path)
            assert str(path) in str(info.value)
    proc = run_cli("study", "results", str(junk), check=False)  # what the user sees
    assert proc.returncode == 2 and str(junk) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1


def test_tokens_and_paths(small_study, tmp_path):
    study = tmp_path / "tokens.sqlite"
    shutil.copy(small_study, study)
    (a, b), admin = _invite(study, 2)
    with Server(study) as srv:
        p = srv.port
        forged = a[:-4] + ("AAAA" if not a.endswith("AAAA") else "BBBB")
        for path in (f"/r/{forged}", "/r/", "/", f"/admin/{a}", f"/admin/{forged}",
                     f"/img/{forged}/1", "/img//1"):  # fmt: skip
            status, _, body = request(p, "GET", path)
            assert status == 404, path
            assert b"<img" not in body and b"Example image" not in body, path
        status, _, body = request(p, "GET", f"/admin/{admin}")
        assert status == 200 and b"Study progress" in body
        for path in (f"/img/{a}/../../../../etc/passwd", f"/img/{a}/..%2f..%2fetc%2fpasswd",
                     f"/img/{a}/%2e%2e", f"/img/{a}/1.png", f"/img/{a}/-1", f"/img/{a}/999999",
                     f"/img/{a}/{study}", f"/img/{a}/1/../../tokens.sqlite"):  # fmt: skip
            status, _, body = request(p, "GET", path)
            assert status == 404, path
            assert b"root:" not in body and b"SQLite" not in body, path
        trial = next_trial(p, a)
        body = f"token={a}&trial={trial}&choice=left&ms=900"
        no_time = body.replace("&ms=900", "")
        assert request(p, "POST", f"/r/{a}/vote", no_time)[0] == 400  # no vote before loading
        assert request(p, "GET", f"/r/{a}/vote")[0] == 405  # state changes only by POST
        evil = {"Origin": "http://evil.example"}
        assert request(p, "POST", f"/r/{a}/vote", body, evil)[0] == 403  # cross-site form
        assert request(p, "POST", f"/r/{a}/vote", f"trial={trial}&choice=left")[0] == 403
        assert request(p, "POST", f"/r/{b}/vote", body)[0] == 403  # a's token in b's path
        assert request(p, "POST", f"/r/{forged}/vote", body.replace(a, forged))[0] == 404
        assert vote(p, a, trial, "left") == "stored"
        assert vote(p, a, trial, "right") == "duplicate"  # resent / double click / second tab
        assert request(p, "POST", f"/r/{b}/vote", body.replace(a, b))[0] == 404  # b holds no slice
        next_trial(p, b)  # b's first page claims b's slice (on demand)
        assert vote(p, b, trial, "right") == "stored"  # b's own vote; a's is untouched
        with ThreadPoolExecutor(8) as pool:  # eight tabs voting on one trial at once
            t2 = next_trial(p, a)
            outcomes = list(pool.map(lambda c: vote(p, a, t2, c), ["left", "right"] * 4))
        assert outcomes.count("stored") == 1
        status, _, page = request(p, "GET", f"/r/{b}?start=1")
        assert a.encode() not in page  # b's page never carries a's token
    v = _votes(study)
    assert v.groupby("rater_id").size().to_dict() == {1: 2, 2: 1}
    assert v[(v["rater_id"] == 1) & (v["trial_id"] == trial)]["choice"].tolist() == ["left"]


def _choice(rater: int, trial: int, left: str, expected=None) -> str:
    """A simulated rater: deterministic in (rater, trial), prefers oracle 70 % of the time.

    Raters answer attention checks (``expected``) right, except rater 3, who always clicks left.
    """
    rng = random.Random(rater * 100_003 + trial)
    if rater == 3:  # a random clicker who always clicks left
        return "left"
    if isinstance(expected, str):
        return expected
    want_oracle = rng.random() < 0.7
    return "left" if (left == "oracle") == want_oracle else "right"


def _rate_all(port: int, tokens: list[str], study: Path, stop_after: int | None = None) -> int:
    """Raters vote concurrently through their pages until done (or ``stop_after`` votes)."""
    lefts = _trials(study).set_index("id")["left_model"].to_dict()
    expected = _trials(study).set_index("id")["expected"].to_dict()
    count = [0]

    def one(i_token):
        i, token = i_token
        n = 0
        while stop_after is None or n < stop_after:
            trial = next_trial(port, token)
            if trial is None:
                break
            pick = _choice(i + 1, trial, lefts[trial], expected[trial])
            vote(port, token, trial, pick, ms=100 + trial)
            n += 1
        count[0] += n

    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(one, enumerate(tokens)))
    return count[0]


def _table(study: Path) -> dict:
    from varbench.study.analysis import analyse

    out = analyse(study)
    out.pop("study")
    return out


def test_sigkill_loses_no_acknowledged_vote_and_restart_matches_uninterrupted(
    small_study, tmp_path
):
    interrupted, straight = tmp_path / "i.sqlite", tmp_path / "u.sqlite"
    shutil.copy(small_study, interrupted)
    shutil.copy(small_study, straight)
    tokens_i, _ = _invite(interrupted, 4)
    tokens_u, _ = _invite(straight, 4)
    srv = Server(interrupted).start()
    acked: list[tuple[str, int]] = []
    lefts = _trials(interrupted).set_index("id")["left_model"].to_dict()
    expected = _trials(interrupted).set_index("id")["expected"].to_dict()
    try:
        for _ in range(5):  # acknowledged votes, then SIGKILL straight after the last one
            for i, token in enumerate(tokens_i):
                trial = next_trial(srv.port, token)
                pick = _choice(i + 1, trial, lefts[trial], expected[trial])
                vote(srv.port, token, trial, pick, ms=100 + trial)
                acked.append((token, trial))
        srv.kill()
        with sqlite3.connect(interrupted) as con:  # read straight after the kill, WAL included
            stored = set(con.execute(
                "SELECT r.token_sha256, v.trial_id FROM votes v JOIN raters r ON r.id = v.rater_id"))  # fmt: skip
        acked_h = {(token_hash(tok), trial) for tok, trial in acked}
        assert acked_h <= stored and len(stored) == len(acked)
        srv.start()  # restart, the remaining votes
        _rate_all(srv.port, tokens_i, interrupted)
    finally:
        srv.stop()
    with Server(straight) as s2:
        _rate_all(s2.port, tokens_u, straight)
    a, b = _table(interrupted), _table(straight)
    assert a == b
    v = _votes(interrupted)
    assert len(v) == 4 * len(_trials(small_study))
    assert not v.duplicated(["rater_id", "trial_id"]).any()


def test_results_match_hand_counts(small_study, tmp_path):
    study = tmp_path / "r.sqlite"
    shutil.copy(small_study, study)
    tokens, _ = _invite(study, 4)
    with Server(study) as srv:
        _rate_all(srv.port, tokens, study)
    res = cli_json("study", "results", str(study), "--format", "json")
    v = _votes(study).merge(_trials(study)[["id", "kind", "expected", "repeat_of", "cond"]],
                            left_on="trial_id", right_on="id")  # fmt: skip
    # the study's default rule, by hand: > 1 failed check, or one side in > 90 % of the votes
    # with a fair-coin probability under 1e-4 (scipy's exact binomial test)
    out = set()
    for rid, g in v.groupby("rater_id"):
        failed = ((g["kind"] == "check") & (g["choice"] != g["expected"])).sum()
        side = g[g["kind"].isin(["main", "repeat"]) & (g["choice"] != "tie")]
        n_left = int((side["choice"] == "left").sum())
        share = max(n_left, len(side) - n_left) / len(side)
        p = sps.binomtest(n_left, len(side), 0.5).pvalue
        if failed > 1 or (share > 0.9 and p < 1e-4):
            out.add(int(rid))
    assert out == {3} and res["excluded_raters"] == [3]  # the always-left clicker
    main = v[(v["kind"] == "main") & ~v["rater_id"].isin(out)]
    won = ((main["choice"] == "left") & (main["left_model"] == "copy")) | (
        (main["choice"] == "right") & (main["right_model"] == "copy"))  # fmt: skip
    pref = res["preference"]
    assert (pref["system"], pref["over"], pref["votes"]) == ("copy", "oracle", len(main))
    assert pref["rate"] == pytest.approx(won.mean())
    ci = sps.binomtest(int(won.sum()), len(main)).proportion_ci(method="wilson")
    assert pref["wilson"] == pytest.approx([ci.low, ci.high])
    lo, hi = pref["cluster_bootstrap"]
    assert lo <= pref["rate"] <= hi and "paper" in pref["paper_kind"]
    raters = {r["rater"]: r for r in res["raters"]}
    checks = v[v["kind"] == "check"]
    for rid, r in raters.items():
        mine = checks[checks["rater_id"] == rid]
        assert r["check_failures"] == int((mine["choice"] != mine["expected"]).sum())
        assert r["votes"] == len(_trials(study))
        assert r["excluded"] == (rid in out) and bool(r["reasons"]) == (rid in out)
    assert raters[3]["left_share"] == 1.0 and "failed 2 attention checks" in raters[3]["reasons"]
    assert "chose left" not in raters[3]["reasons"]  # 10 votes: a fair coin's 1 in 512
    assert raters[3]["consistency"] == 0.0  # left, then left again with sides swapped
    assert res["agreement"]["trials_seen_by_several"] == 8
    assert res["left_share"] == pytest.approx(
        (main["choice"] == "left").sum() / (main["choice"] != "tie").sum()
    )
    assert res["warnings"] and "20" in res["warnings"][0]  # 3 raters: the bootstrap under-covers
    proc = run_cli("study", "results", str(study), "--exclude-failed-checks", check=False)
    assert proc.returncode == 2 and "--max-failed-checks" in proc.stderr
    folder = tmp_path / "tables"
    cli_json("study", "results", str(study), "--format", "parquet", "--out", str(folder))
    votes = pd.read_parquet(folder / "votes.parquet")
    assert len(votes) == len(v) and set(votes["kind"]) == {"main", "check", "repeat"}
    merged = votes.merge(v, left_on=["rater", "trial"], right_on=["rater_id", "trial_id"])
    want = merged["left_model"].where(merged["choice_y"] == "left", merged["right_model"])
    want = want.where(merged["choice_y"] != "tie", "tie")
    assert (merged["chosen_system"] == want).all() and len(merged) == len(v)
    assert (merged["ms_from_images_loaded"] == merged["ms"]).all()
    assert votes.loc[votes["rater"] == 3, "rater_excluded"].all()
    cli_json("study", "results", str(study), "--format", "csv", "--out", str(folder))
    rt = pd.read_csv(folder / "raters.csv")
    assert rt.set_index("rater")["excluded"].to_dict() == {r: r in out for r in (1, 2, 3, 4)}
    table = cli_json("study", "results", str(study))
    assert "Wilson" in table and "Krippendorff" in table and "Fleiss" in table


def test_three_models_give_bradley_terry_and_win_matrix(runs, tmp_path):
    study = _create(runs, tmp_path / "bt.sqlite", MODELS, 12, "--check-share", "0",
                    "--repeat-share", "0")  # fmt: skip
    tokens, _ = _invite(study, 2)
    rank = {"oracle": 2, "augment": 1, "copy": 0}
    t = _trials(study).set_index("id")
    with Server(study) as srv:
        for token in tokens:
            while (trial := next_trial(srv.port, token)) is not None:
                lm, rm = t.loc[trial, "left_model"], t.loc[trial, "right_model"]
                vote(srv.port, token, trial, "left" if rank[lm] > rank[rm] else "right")
    res = cli_json("study", "results", str(study), "--format", "json")
    bt = res["bradley_terry"]
    assert [r["system"] for r in bt] == ["oracle", "augment", "copy"]
    # a perfect ranking: oracle never loses, copy never wins; no ridge-made Elo for either
    assert [r["flag"] for r in bt] == ["never_loses", "too_few_systems", "never_wins"]
    assert all(r["elo"] is None for r in bt)
    assert res["win_matrix"]["oracle"]["copy"] == 1.0 and res["win_matrix"]["copy"]["augment"] == 0
    assert res["agreement"]["krippendorff_alpha_nominal"] == 1.0
    assert "preference" not in res


def test_leaderboard_and_report_show_preference_beside_metrics(runs, small_study, tmp_path):
    study = tmp_path / "lb.sqlite"
    shutil.copy(small_study, study)
    tokens, _ = _invite(study, 3)
    with Server(study) as srv:
        _rate_all(srv.port, tokens, study)
    from varbench.study.analysis import analyse

    shares = {r["system"]: r for r in analyse(study)["per_system"]}
    rows = cli_json("leaderboard", "--runs", str(runs), "--study", str(study), "--format", "json",
                    "--no-published")  # fmt: skip
    by_model = {r["model"]: r for r in rows}
    for model in ("copy", "oracle"):
        r = by_model[model]
        assert r["human_pref"] == pytest.approx(shares[model]["human_pref"])
        assert r["human_pref_wilson_lo"] <= r["human_pref"] <= r["human_pref_wilson_hi"]
        assert r["fid"] is not None and r["recall"] is not None
    assert by_model["copy"]["human_pref"] + by_model["oracle"]["human_pref"] == pytest.approx(1)
    assert by_model["augment"]["human_pref"] is None  # not in the study
    # one rule everywhere: relax the stored rule and the leaderboard follows `results`
    assert analyse(study)["excluded_raters"] == [3]
    cli_json("study", "rule", str(study), "--max-side-share", "1", "--max-failed-checks", "9")
    relaxed = {r["system"]: r for r in analyse(study)["per_system"]}
    assert analyse(study)["excluded_raters"] == []
    rows = cli_json("leaderboard", "--runs", str(runs), "--study", str(study), "--format",
                    "json", "--no-published")  # fmt: skip
    for r in rows:
        if r["model"] in relaxed:
            assert r["human_pref"] == pytest.approx(relaxed[r["model"]]["human_pref"])
            assert r["human_votes"] == relaxed[r["model"]]["votes"]
    assert relaxed["copy"]["votes"] > shares["copy"]["votes"]  # rater 3's votes count now
    cli_json("study", "rule", str(study), "--max-side-share", "0.9", "--max-failed-checks", "1")
    html = tmp_path / "report.html"
    cli_json("report", "--runs", str(runs), "--study", str(study), "--out", str(html),
             "--grid-classes", "1", "--grid-samples", "1", "--closest", "0")  # fmt: skip
    text = html.read_text()
    section = text[text.index('id="human-preference"') :]
    table = section[: section.index("</table>")]
    assert table.count("<tr>") == 3  # header + copy + oracle
    assert f"{100 * shares['oracle']['human_pref']:.1f}" in table
    assert "<svg" in section[: section.index("</figure>")]


def test_runs_of_different_sizes_are_stored_alike_with_a_warning(runs, tmp_path):
    mixed = tmp_path / "runs"
    shutil.copytree(runs, mixed)
    for png in mixed.glob("oracle-*/points/*/samples/**/*.png"):
        with Image.open(png) as im:
            im.convert("RGB").resize((96, 80)).save(png)
    out = cli_json("study", "create", "--runs", str(mixed), "-p", "demo_1shot", "--models",
                   "copy,oracle", "--trials", "4", "--out", str(tmp_path / "m.sqlite"),
                   "--image-px", "128", "--image-format", "png")  # fmt: skip
    warning = next(w for w in out["warnings"] if "differ in size" in w)
    assert "copy: 64x64" in warning and "oracle: 96x80" in warning
    t = _trials(tmp_path / "m.sqlite")
    ids = {i for col in ("left_images", "right_images") for x in t[col] for i in json.loads(x)}
    with sqlite3.connect(tmp_path / "m.sqlite") as con:
        rows = con.execute("SELECT id, mime, data FROM images").fetchall()
    for i, mime, data in rows:
        assert mime == "image/png"  # one format for every image
        if i in ids:
            assert Image.open(io.BytesIO(data)).size == (128, 128)


def test_sets_of_samples_use_the_papers_prompt(runs, tmp_path):
    study = _create(runs, tmp_path / "sets.sqlite", ("copy", "oracle"), 4, "--set-size", "2")
    t = _trials(study)
    assert all(len(json.loads(x)) == 2 for x in t["left_images"])
    (token,), _ = _invite(study, 1)
    with Server(study) as srv:
        page = request(srv.port, "GET", f"/r/{token}?start=1")[2].decode()
    assert "choose between two alternative sets, Set 1 and Set 2" in page
    assert page.count('alt="left candidate"') == 2 and "Set 2 (right)" in page


def test_lab_raters_take_slices_on_demand(runs, tmp_path):
    study = tmp_path / "sl.sqlite"
    out = cli_json("study", "create", "--runs", str(runs), "-p", "demo_1shot", "--models",
                   "copy,oracle", "--trials", "8", "--slice-trials", "4", "--raters-per-slice",
                   "2", "--practice", "0", "--repeat-share", "0", "--out", str(study))  # fmt: skip
    # 2 checks and 4 side votes per slice: an always-left rater would slip through; it says so
    assert any("fails 1 of 2 checks" in w and "cannot catch" in w for w in out["warnings"])
    tokens, _ = _invite(study, 5)
    expected = _trials(study).set_index("id")["expected"].to_dict()
    with Server(study) as srv:
        for token in tokens:
            while (trial := next_trial(srv.port, token)) is not None:
                pick = expected[trial] if pd.notna(expected[trial]) else "left"
                vote(srv.port, token, trial, pick)
    with sqlite3.connect(study) as con:
        got = con.execute("SELECT rater_id, slice_id, status FROM assignments ORDER BY rater_id")
        got = got.fetchall()
        per_slice = con.execute(
            "SELECT slice_id, COUNT(*) FROM trials WHERE kind IN ('main', 'check') GROUP BY 1"
        ).fetchall()
    assert [s for _, s, _ in got[:4]] == [1, 2, 1, 2]  # the slice most in need, each time
    assert len(got) == 5 and all(st == "finished" for _, _, st in got)  # lab raters overflow
    assert per_slice == [(1, 6), (2, 6)]  # 4 main + 2 checks each
    v = _votes(study)
    assert v.groupby("rater_id").size().tolist() == [6] * 5
