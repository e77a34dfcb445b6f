"""Load on `varbench study serve` over HTTP on 127.0.0.1: a lab, or a simulated Prolific crowd.

Lab (default): a 1,600-comparison study from the demo's copy and oracle runs in 20 slices of
80 (plus 10 attention checks and 10 repeats each), 20 invited raters voting at once through the
rater pages (GET the page, POST the vote). Halfway through, the server is SIGKILLed and started
again; raters retry until it answers. Then the same votes are cast on a copy of the study with
no restart, and the two `results` tables are compared. Prints one JSON line per repeat and the
median and spread of ``vote_p95_ms`` (time from sending a vote to its acknowledgement),
``votes_lost`` (acknowledged but not stored) and ``votes_duplicated`` (stored more than once,
or never sent).

Prolific (``--platform prolific``): 60 participants arrive through the one join link with
Prolific ids, pass consent, questions and practice; 10 % abandon mid-slice (their slices come
back after ``--slice-timeout-s``), 10 % always click left (screened out at the end of their
slice). Prints ``name=value`` lines: vote_p95_ms, votes_lost, votes_duplicated,
slices_unfinished (planned raters not reached), and counts of each outcome.

    python benchmarks/study_load.py [--raters 20] [--per-rater 80] [--repeats 3]
    python benchmarks/study_load.py --platform prolific [--participants 60] [--slice-timeout-s 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from study_helpers import Crowd, Server, crowd_kinds, next_trial, request  # noqa: E402


def choice(rater: int, trial: int, left: str) -> str:
    """Deterministic simulated rater: prefers oracle 60 % of the time."""
    rng = random.Random(rater * 1_000_003 + trial)
    return "left" if (left == "oracle") == (rng.random() < 0.6) else "right"


def make_runs(folder: Path) -> Path:
    from varbench.runner import RunConfig, run

    runs = folder / "runs"
    for model in ("copy", "oracle"):
        run(RunConfig(model=model, protocol="demo_1shot", out=runs, cache_dir=folder / "cache",
                      sets={"n_per_class": "4"}))  # fmt: skip
    return runs


def build(folder: Path, raters: int, per_rater: int) -> tuple[Path, list[str]]:
    from varbench.study.create import StudySpec, create_study
    from varbench.study.db import open_study
    from varbench.study.plan import Layout
    from varbench.study.raters import invite

    runs = make_runs(folder)
    study = folder / "study.sqlite"
    layout = Layout(trials=raters * per_rater, slice_trials=per_rater, check_share=0.125,
                    repeat_share=0.125, practice=0)  # fmt: skip
    create_study(StudySpec(runs, "demo_1shot", ("copy", "oracle"), layout=layout), study)
    con = open_study(study)
    tokens = invite(con, raters)
    con.close()
    return study, tokens


class Load:
    """Raters voting concurrently; records acknowledged votes and their latencies."""

    def __init__(self, server: Server, tokens: list[str], lefts: dict[int, str], limit_s: float):
        self.server, self.tokens, self.lefts = server, tokens, lefts
        self.deadline = time.monotonic() + limit_s
        self.lock = threading.Lock()
        self.acked: set[tuple[str, int]] = set()
        self.sent: set[tuple[str, int]] = set()
        self.latency_ms: list[float] = []
        self.retries = 0

    def _call(self, fn, *args):
        """Retry while the server restarts (connection refused or reset)."""
        while time.monotonic() < self.deadline:
            try:
                return fn(*args)
            except OSError:
                with self.lock:
                    self.retries += 1
                time.sleep(0.05)
        raise TimeoutError("time limit reached")

    def _vote(self, token: str, trial: int, pick: str) -> tuple[int, float]:
        body = f"token={token}&trial={trial}&choice={pick}&ms={100 + trial % 900}"
        t0 = time.perf_counter()
        status, _, _ = request(self.server.port, "POST", f"/r/{token}/vote", body)
        return status, (time.perf_counter() - t0) * 1000

    def rater(self, index: int) -> None:
        token = self.tokens[index]
        while time.monotonic() < self.deadline:
            trial = self._call(next_trial, self.server.port, token)
            if trial is None:
                return
            pick = choice(index + 1, trial, self.lefts[trial])
            with self.lock:
                self.sent.add((token, trial))
            status, ms = self._call(self._vote, token, trial, pick)
            if status != 303:
                raise RuntimeError(f"vote answered HTTP {status}")
            with self.lock:
                self.acked.add((token, trial))
                self.latency_ms.append(ms)

    def run(self, restart_after: int | None) -> None:
        for token in self.tokens:  # slices are claimed on a rater's first page: claim in order,
            self._call(next_trial, self.server.port, token)  # so both runs pair raters alike
        threads = [threading.Thread(target=self.rater, args=(i,)) for i in range(len(self.tokens))]
        for t in threads:
            t.start()
        if restart_after is not None:
            while len(self.acked) < restart_after and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            self.server.kill()
            self.server.start()
        for t in threads:
            t.join()


def stored(study: Path) -> list[tuple[str, int]]:
    """(token digest, trial) of every stored vote."""
    with sqlite3.connect(study) as con:
        return list(con.execute(
            "SELECT r.token_sha256, v.trial_id FROM votes v JOIN raters r ON r.id = v.rater_id"))  # fmt: skip


def hashed(pairs) -> set[tuple[str, int]]:
    from varbench.study.db import token_hash

    return {(token_hash(tok), trial) for tok, trial in pairs}


def once(raters: int, per_rater: int, limit_s: float) -> dict:
    from varbench.study.analysis import analyse

    folder = Path(tempfile.mkdtemp(prefix="study-load-"))
    try:
        study, tokens = build(folder, raters, per_rater)
        straight = folder / "straight.sqlite"
        shutil.copy(study, straight)
        with sqlite3.connect(study) as con:
            lefts = dict(con.execute("SELECT id, left_model FROM trials"))
            total = con.execute("SELECT COUNT(*) FROM trials WHERE slice_id IS NOT NULL")
            total = total.fetchone()[0]
        server = Server(study).start()
        t0 = time.perf_counter()
        try:
            load = Load(server, tokens, lefts, limit_s)
            load.run(restart_after=total // 2)
        finally:
            server.stop()
        wall = time.perf_counter() - t0
        rows = stored(study)
        lost = len(hashed(load.acked) - set(rows))
        duplicated = (len(rows) - len(set(rows))) + len(set(rows) - hashed(load.sent))
        with Server(straight) as s2:
            Load(s2, tokens, lefts, limit_s).run(restart_after=None)
        a, b = analyse(study), analyse(straight)
        a.pop("study"), b.pop("study")
        lat = sorted(load.latency_ms)
        return {
            "votes": len(rows), "votes_expected": total, "raters": raters,
            "vote_p95_ms": round(statistics.quantiles(lat, n=20)[-1], 1),
            "vote_median_ms": round(statistics.median(lat), 1),
            "votes_lost": lost, "votes_duplicated": duplicated,
            "retries_during_restart": load.retries, "wall_s": round(wall, 1),
            "restart_table_equals_uninterrupted": a == b,
        }  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prolific(participants: int, slice_timeout_s: float, limit_s: float) -> dict:
    """One simulated Prolific crowd; the name=value numbers of the issue's 'done means'."""
    from varbench.study.export import payments

    folder = Path(tempfile.mkdtemp(prefix="study-crowd-"))
    try:
        runs = make_runs(folder)
        kinds = crowd_kinds(participants, 0.1, 0.1, seed=0)
        planned, per_slice = 3, 14
        n_slices = kinds.count("good") // planned
        consent, questions = folder / "consent.txt", folder / "questions.json"
        consent.write_text("You will compare images for about five minutes.")
        questions.write_text(json.dumps([
            {"id": "age", "text": "Your age?", "type": "number"},
            {"id": "vision", "text": "Normal colour vision?", "type": "choice",
             "options": ["yes", "no"]}]))  # fmt: skip
        study = folder / "crowd.sqlite"
        cmd = [sys.executable, "-m", "varbench.cli", "study", "create", "--runs", str(runs),
               "-p", "demo_1shot", "--models", "copy,oracle", "--trials",
               str(n_slices * per_slice), "--slice-trials", str(per_slice), "--raters-per-slice",
               str(planned), "--check-share", "0.4", "--repeat-share", "0.2", "--platform",
               "prolific", "--completion-code", "C0MPLETE", "--screenout-code", "SCRN0UT",
               "--consent", str(consent), "--questions", str(questions), "--out", str(study)]  # fmt: skip
        import subprocess

        subprocess.run(cmd, check=True, capture_output=True)
        t0 = time.perf_counter()
        with Server(study, args=("--slice-timeout", str(slice_timeout_s / 60))) as srv:
            crowd = Crowd(srv.port, study, kinds, deadline_s=limit_s).run(workers=12)
        wall = time.perf_counter() - t0
        with sqlite3.connect(study) as con:
            rows = con.execute(
                "SELECT r.external_id, v.trial_id FROM votes v JOIN raters r ON r.id = "
                "v.rater_id JOIN trials t ON t.id = v.trial_id WHERE t.kind != 'practice'"
            ).fetchall()
            missing = con.execute(
                "SELECT COALESCE(SUM(MAX(s.planned - (SELECT COUNT(*) FROM assignments a WHERE "
                "a.slice_id = s.id AND a.status = 'finished'), 0)), 0) FROM slices s"
            ).fetchone()[0]
        lat = sorted(crowd.latency_ms)
        pay = payments(study)
        good = [o for o in crowd.outcomes.values() if o["kind"] == "good"]
        left = [o for o in crowd.outcomes.values() if o["kind"] == "left"]
        return {
            "participants": participants, "slices": n_slices, "planned_per_slice": planned,
            "votes": len(rows),
            "vote_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
            "vote_median_ms": round(statistics.median(lat), 1) if lat else None,
            "votes_lost": len(set(crowd.acked) - set(rows)),
            "votes_duplicated": (len(rows) - len(set(rows))) + len(set(rows) - set(crowd.sent)),
            "slices_unfinished": int(missing),
            "completion_codes_shown": sum(o.get("code") == "C0MPLETE" for o in good),
            "screenout_codes_shown": sum(o.get("code") == "SCRN0UT" for o in left),
            "abandoned": sum(bool(o.get("abandoned")) for o in crowd.outcomes.values()),
            "approve": len(pay["approve"]), "reject": len(pay["reject"]),
            "errors": len(crowd.errors), "wall_s": round(wall, 1),
        }  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--platform", choices=["lab", "prolific"], default="lab")
    ap.add_argument("--raters", type=int, default=20)
    ap.add_argument("--per-rater", type=int, default=80)
    ap.add_argument("--participants", type=int, default=60)
    ap.add_argument("--slice-timeout-s", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit-s", type=float, default=600, help="time limit per load phase")
    args = ap.parse_args()
    os.environ.setdefault("VARBENCH_NO_PROGRESS", "1")
    if args.per_rater < 2 or args.per_rater % 2:
        ap.error(f"--per-rater {args.per_rater}: must be even and >= 2 (slices hold twins)")
    if args.platform == "prolific":
        if args.participants < 10:
            ap.error(f"--participants {args.participants}: use at least 10")
        res = prolific(args.participants, args.slice_timeout_s, args.limit_s)
        for key, value in res.items():
            print(f"{key}={value}", flush=True)
        return
    results = []
    for _ in range(args.repeats):
        res = once(args.raters, args.per_rater, args.limit_s)
        print(json.dumps(res), flush=True)
        results.append(res)
    summary = {}
    for key in ("vote_p95_ms", "vote_median_ms", "votes_lost", "votes_duplicated", "wall_s"):
        vals = [r[key] for r in results]
        summary[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    summary["restart_table_equals_uninterrupted"] = all(
        r["restart_table_equals_uninterrupted"] for r in results
    )
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
