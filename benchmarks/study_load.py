"""Load on `varbench study serve`: 20 raters voting at once over HTTP on 127.0.0.1.

Builds a 2,000-trial study (1,600 comparisons, 200 attention checks, 200 repeats) from the
demo's copy and oracle runs, invites 20 raters (100 trials each plus their repeats), starts the
server as a subprocess and lets 20 threads vote through the rater pages (GET the page, POST
the vote) until every rater is done or the time limit passes. Halfway through, the server is
SIGKILLed and started again; raters retry until it answers. Then the same votes are cast on a
copy of the study with no restart, and the two `results` tables are compared.

Prints one JSON line per repeat and the median and spread of ``vote_p95_ms`` (time from
sending a vote to its acknowledgement), ``votes_lost`` (acknowledged but not stored) and
``votes_duplicated`` (stored more than once, or never sent).

    python benchmarks/study_load.py [--raters 20] [--per-rater 100] [--repeats 3]
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
from study_helpers import Server, next_trial, request  # noqa: E402


def choice(rater: int, trial: int, left: str) -> str:
    """Deterministic simulated rater: prefers oracle 60 % of the time."""
    rng = random.Random(rater * 1_000_003 + trial)
    return "left" if (left == "oracle") == (rng.random() < 0.6) else "right"


def build(folder: Path, raters: int, per_rater: int) -> tuple[Path, list[str]]:
    from varbench.runner import RunConfig, run
    from varbench.study.create import StudySpec, create_study
    from varbench.study.db import open_study
    from varbench.study.raters import invite

    runs = folder / "runs"
    for model in ("copy", "oracle"):
        run(RunConfig(model=model, protocol="demo_1shot", out=runs, cache_dir=folder / "cache"))
    study = folder / "study.sqlite"
    spec = StudySpec(runs, "demo_1shot", ("copy", "oracle"), trials=1600, check_share=0.125,
                     repeat_share=0.125)  # fmt: skip
    info = create_study(spec, study)
    assert sum(info["trials"].values()) == 2000, info
    con = open_study(study)
    tokens = invite(con, raters, per_rater)
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
    with sqlite3.connect(study) as con:
        return list(con.execute(
            "SELECT r.token, v.trial_id FROM votes v JOIN raters r ON r.id = v.rater_id"))  # fmt: skip


def once(raters: int, per_rater: int, limit_s: float) -> dict:
    from varbench.study.analysis import analyse

    folder = Path(tempfile.mkdtemp(prefix="study-load-"))
    try:
        study, tokens = build(folder, raters, per_rater)
        straight = folder / "straight.sqlite"
        shutil.copy(study, straight)
        with sqlite3.connect(study) as con:
            lefts = dict(con.execute("SELECT id, left_model FROM trials"))
            total = con.execute("SELECT COUNT(*) FROM assignments").fetchone()[0]
        server = Server(study).start()
        t0 = time.perf_counter()
        try:
            load = Load(server, tokens, lefts, limit_s)
            load.run(restart_after=total // 2)
        finally:
            server.stop()
        wall = time.perf_counter() - t0
        rows = stored(study)
        lost = len(load.acked - set(rows))
        duplicated = (len(rows) - len(set(rows))) + len(set(rows) - load.sent)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raters", type=int, default=20)
    ap.add_argument("--per-rater", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit-s", type=float, default=600, help="time limit per load phase")
    args = ap.parse_args()
    os.environ.setdefault("VARBENCH_NO_PROGRESS", "1")
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
