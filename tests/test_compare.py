"""Paired comparison of two runs: simulation where the truth is known, and `varbench compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from varbench.errors import UsageError
from varbench.metrics.bootstrap import half_samples
from varbench.metrics.gaussian import fid_from_features
from varbench.present.compare import paired_interval, unpaired_interval, verdict

D, CLASSES, PER_CLASS, REPLICATES, PAIRS = 4, 8, 5, 30, 200


def draw(rng: np.random.Generator, means: np.ndarray):
    """One protocol draw shared by two models: references per class, one conditioning image
    per class, and PER_CLASS samples of each model from it (A follows it more closely than B)."""
    real = (means[:, None, :] + rng.normal(0, 1, (CLASSES, PER_CLASS, D))).reshape(-1, D)
    cond = real[[c * PER_CLASS + rng.integers(PER_CLASS) for c in range(CLASSES)]]
    shape = (CLASSES, PER_CLASS, D)
    a = 0.6 * cond[:, None, :] + 0.4 * means[:, None, :] + rng.normal(0, 0.8, shape)
    b = 0.5 * cond[:, None, :] + 0.5 * means[:, None, :] + rng.normal(0, 0.9, shape)
    return real, a.reshape(-1, D), b.reshape(-1, D)


def fid_replicates(real, fake, cls, seed):
    """FID on each class half-sample (``bootstrap.half_samples``, as every run's intervals)."""
    _, draws = half_samples(cls, cls, REPLICATES, seed)
    return np.array([[fid_from_features(real[i], fake[j])] for i, j in draws])


def test_paired_interval_covers_the_true_difference_and_is_narrower():
    means = np.random.default_rng(123).normal(0, 2.0, (CLASSES, D))
    cls = np.repeat(np.arange(CLASSES), PER_CLASS)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(2000):  # the truth: E[FID_A - FID_B] over fresh protocol draws
        real, a, b = draw(rng, means)
        diffs.append(fid_from_features(real, a) - fid_from_features(real, b))
    truth = float(np.mean(diffs))
    assert abs(truth) > 3 * np.std(diffs) / np.sqrt(len(diffs))  # a real difference to find
    hits = hits_unpaired = 0
    width, width_unpaired = [], []
    for t in range(PAIRS):
        real, a, b = draw(rng, means)
        est_a, est_b = [fid_from_features(real, a)], [fid_from_features(real, b)]
        reps_a, reps_b = fid_replicates(real, a, cls, t), fid_replicates(real, b, cls, t)
        d, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
        assert lo[0] <= d[0] <= hi[0]
        hits += lo[0] <= truth <= hi[0]
        width.append(hi[0] - lo[0])
        # unpaired: each run's own interval from independent half-samples
        _, lo_u, hi_u = unpaired_interval(
            est_a, reps_a, est_b, fid_replicates(real, b, cls, 10_000 + t)
        )
        hits_unpaired += lo_u[0] <= truth <= hi_u[0]
        width_unpaired.append(hi_u[0] - lo_u[0])
    assert hits / PAIRS >= 0.90, f"paired coverage {hits / PAIRS}"
    ratio = np.mean(width) / np.mean(width_unpaired)
    assert ratio < 0.9, f"paired/unpaired width ratio {ratio}"


def test_verdict_respects_each_metrics_direction():
    assert verdict("fid", -2.0, -1.0) == "A better"  # A's FID lower
    assert verdict("fid", 1.0, 2.0) == "B better"
    assert verdict("recall", 0.1, 0.2) == "A better"  # A's recall higher
    assert verdict("precision", -0.2, -0.1) == "B better"
    assert verdict("fid", -1.0, 0.5) == "undecided"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from varbench.runner import RunConfig, run

    out = tmp_path_factory.mktemp("runs")
    rows = {
        m: run(RunConfig(model=m, protocol="demo_1shot", out=out))[0] for m in ("oracle", "copy")
    }
    return out, rows


def test_compare_cli_pairs_the_runs_own_half_samples(two_runs):
    from conftest import run_cli, run_json

    from varbench.metrics.bootstrap import recentred_intervals
    from varbench.present.compare import point_features
    from varbench.runs.views import load_runs

    out, rows = two_runs
    got = run_json("compare", "--runs", str(out), "--protocol", "demo_1shot",
                   "--models", "oracle,copy", "--format", "json")  # fmt: skip
    assert [r["metric"] for r in got] == ["fid", "precision", "recall"]
    for r in got:
        m = r["metric"]
        assert r["a"] == rows["oracle"][m] and r["b"] == rows["copy"][m]
        assert r["diff"] == pytest.approx(r["a"] - r["b"], abs=1e-12)
        assert r["lo"] <= r["diff"] <= r["hi"]
        assert r["method"] == "paired_class_half_sampling" and r["replicates"] == 50
    by = {r["metric"]: r for r in got}
    assert by["fid"]["verdict"] == "A better" and by["recall"]["verdict"] == "A better"
    # the replicates are the runs' own: they rebuild each run's stored interval exactly
    from varbench.present.compare import estimates

    for run in load_runs(out):
        p = run.points[0]
        f = point_features(run.folder, p.pid, p.row)
        est, _, reps = estimates(f.real, f.fake, f.real_class, f.fake_class, 50, f.seed)
        iv = recentred_intervals(est, reps, len(f.fake), len(f.real))
        assert iv["fid_lo"] == p.row["fid_lo"] and iv["fid_hi"] == p.row["fid_hi"]
    table = run_cli("compare", "--runs", str(out), "--protocol", "demo_1shot",
                    "--models", "oracle,copy", "--metrics", "fid").stdout  # fmt: skip
    assert "oracle better" in table and "recall" not in table
    bad = run_cli("compare", "--runs", str(out), "--protocol", "demo_1shot",
                  "--models", "oracle,copy", "--metrics", "isc,fid", check=False)  # fmt: skip
    assert bad.returncode == 2 and "--metrics isc" in bad.stderr
    assert "supported: fid, precision, recall, density, kid, fd_dinov2" in bad.stderr


def test_compare_density_and_kid_on_the_same_half_samples(two_runs):
    """The other statistics with a half-sample path: full values equal the runs' rows, the
    replicates are the class half-samples of the runs' own intervals (bootstrap.half_samples);
    coverage is refused (its paired interval under-covers)."""
    from dataclasses import replace

    from varbench.metrics.bootstrap import Z95, half_samples
    from varbench.metrics.kid import kid_features_to_metric
    from varbench.present.compare import compare_points, compare_runs, extra_values, point_features
    from varbench.runs.views import load_runs

    out, rows = two_runs
    with pytest.raises(UsageError, match=r"--metrics coverage: .*under-covers"):
        compare_runs(out, "demo_1shot", "oracle", "copy", ["coverage", "kid"])
    (got,) = compare_runs(out, "demo_1shot", "oracle", "copy", ["density"])
    assert got["a"] == rows["oracle"]["density"] and got["b"] == rows["copy"]["density"]
    assert got["method"] == "paired_class_half_sampling" and got["replicates"] == 50
    # the interval by hand: density on the same 50 class half-samples of both runs
    runs = {r.model: r for r in load_runs(out)}
    fa, fb = (point_features(runs[m].folder, "default", runs[m].points[0].row) for m in
              ("oracle", "copy"))  # fmt: skip
    _, draws = half_samples(fa.real_class, fa.fake_class, 50, fa.seed)
    d = [
        extra_values(["density"], {None: (fa.real, fa.fake)}, {}, i, j)[0]
        - extra_values(["density"], {None: (fb.real, fb.fake)}, {}, i, j)[0]
        for i, j in draws
    ]
    sd = float(np.std(d, ddof=1))
    assert got["diff"] == pytest.approx(got["a"] - got["b"], abs=1e-12)
    assert got["lo"] == pytest.approx(got["diff"] - Z95 * sd, rel=1e-12)
    assert got["hi"] == pytest.approx(got["diff"] + Z95 * sd, rel=1e-12)
    # KID with the options a run records (10 subsets and 10 replicates here, for speed)
    fa, fb = (replace(f, options={"kid_subsets": 10}, replicates=10) for f in (fa, fb))
    kid = compare_points(fa, fb, ["kid"])["kid"]
    assert kid["a"] == kid_features_to_metric(fa.fake, fa.real, subsets=10)["kid"]
    assert kid["b"] == kid_features_to_metric(fb.fake, fb.real, subsets=10)["kid"]
    assert kid["lo"] <= kid["diff"] <= kid["hi"] and kid["replicates"] == 10


def test_compare_uses_the_runs_recorded_metric_options(two_runs, tmp_path):
    """k of precision/recall is the one the runs were scored with (--set prc_k=5), recorded in
    each point's result.json; runs scored with different k are refused, naming the option."""
    from varbench.present.compare import compare_points, compare_runs, point_features
    from varbench.runner import RunConfig, run
    from varbench.runs.views import load_runs

    out, _ = two_runs
    rows = {m: run(RunConfig(model=m, protocol="demo_1shot", out=tmp_path,
                             sets={"prc_k": "5"}))[0] for m in ("oracle", "copy")}  # fmt: skip
    got = {r["metric"]: r for r in compare_runs(tmp_path, "demo_1shot", "oracle", "copy")}
    for m in ("precision", "recall"):
        assert got[m]["a"] == rows["oracle"][m] and got[m]["b"] == rows["copy"][m]
    three = {r.model: r for r in load_runs(out)}
    five = {r.model: r for r in load_runs(tmp_path)}
    pr3 = [three["oracle"].points[0].row[m] for m in ("precision", "recall")]
    assert [rows["oracle"][m] for m in ("precision", "recall")] != pr3  # k matters here
    f5 = point_features(five["oracle"].folder, "default", five["oracle"].points[0].row)
    f3 = point_features(three["copy"].folder, "default", three["copy"].points[0].row)
    assert f5.prc_k == 5 and f3.prc_k == 3
    with pytest.raises(UsageError, match=r"prc_k: 5 vs default"):
        compare_points(f5, f3, ["recall"])
    assert compare_points(f5, f3, ["fid"])["fid"]["a"] == rows["oracle"]["fid"]  # k unused


def test_point_scored_without_recorded_options_is_read_with_defaults_and_a_warning(
    two_runs, tmp_path, caplog
):
    """A result.json from before options were recorded: defaults, and a warning naming it."""
    import shutil

    from varbench.present.compare import point_features
    from varbench.runs.views import load_runs

    out, _ = two_runs
    src = {r.model: r for r in load_runs(out)}["oracle"]
    old = tmp_path / src.folder.name
    shutil.copytree(src.folder, old)
    result = old / "points" / "default" / "result.json"
    stored = json.loads(result.read_text())
    del stored["_metric_options"]  # recorded by this varbench; an older one did not
    result.write_text(json.dumps(stored))
    with caplog.at_level("WARNING"):
        f = point_features(old, "default", src.points[0].row)
    assert f.prc_k == 3
    assert str(result) in caplog.text and "no recorded metric options" in caplog.text


def test_leaderboard_json_and_report_show_best_against_best(two_runs):
    from varbench.cli.common import Format  # noqa: F401 - the CLI's json path calls the same function
    from varbench.present.compare import attach_to_leaderboard
    from varbench.present.leaderboard import collect, render, select
    from varbench.present.report import build_report

    out, rows = two_runs
    df = attach_to_leaderboard(select(collect(out, include_published=False)), out)
    got = {r["model"]: r["vs_best"] for r in json.loads(render(df, "json"))}
    assert got["oracle"] is None  # the best model
    vs = got["copy"]
    assert vs["against"] == "oracle"
    assert vs["fid"]["diff"] == pytest.approx(rows["copy"]["fid"] - rows["oracle"]["fid"])
    assert vs["fid"]["better"] == "oracle" and vs["recall"]["better"] == "oracle"
    html = build_report(out)
    assert '<table id="paired">' in html and "oracle</span>" in html


def test_leaderboard_json_no_compare_skips_the_paired_comparison(two_runs):
    from conftest import run_json

    out, rows = two_runs  # (the json with the comparison: the test above, same code path)
    got = run_json("leaderboard", "--runs", str(out), "--no-published", "--format", "json",
                   "--no-compare")  # fmt: skip
    assert all("vs_best" not in r for r in got)
    assert {r["model"]: r["fid"] for r in got} == {m: rows[m]["fid"] for m in rows}
