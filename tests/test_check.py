"""`varbench check` as a CI gate on demo runs."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import run_cli, run_json


def test_check_passes_on_itself_and_fails_on_regression(tmp_path):
    good = tmp_path / "good"
    run_json("run", "--model", "oracle", "--protocol", "demo_1shot", "--out", str(good))
    assert run_cli("check", "--runs", str(good), "--baseline", str(good)).returncode == 0
    # A "copy" result relabelled as oracle is a regression in recall and FID.
    bad = tmp_path / "bad"
    run_json("run", "--model", "copy", "--protocol", "demo_1shot", "--out", str(bad))
    import pyarrow.parquet as pq

    path = next(bad.rglob("results.parquet"))
    df = pq.read_table(path).to_pandas()
    df["model"] = "oracle"
    df.to_parquet(path)
    proc = run_cli(
        "check",
        "--runs",
        str(bad),
        "--baseline",
        str(good),
        "--tolerance",
        "recall=0.01,fid=0.1",
        check=False,
    )
    assert proc.returncode == 1
    findings = {f["metric"]: f for f in json.loads(proc.stdout)}
    assert not findings["recall"]["ok"] and findings["recall"]["measured"] == 0.1
    assert "REGRESSION" in proc.stderr
    proc = run_cli(
        "check", "--runs", str(bad), "--baseline", str(good), "--tolerance", "recal=1", check=False
    )
    assert proc.returncode == 2 and "--tolerance" in proc.stderr


def _rows(fid: float, recall: float, model: str = "m", params: str = "{}") -> list[dict]:
    return [
        {
            "model": model,
            "protocol": "p",
            "params": params,
            "source": "varbench",
            "fid": fid,
            "fid_lo": 9.0,
            "fid_hi": 11.0,
            "recall": recall,
            "recall_lo": 0.4,
            "recall_hi": 0.6,
            "kid": 0.01,
        }
    ]


BASELINE = {"fid": 10.0, "recall": 0.5}


@pytest.mark.parametrize(
    ("fid", "recall", "bad"),
    [
        (10.5, 0.45, set()),  # inside the interval
        (11.0, 0.4, set()),  # exactly on the bounds: not a regression
        (8.0, 0.7, set()),  # outside in the better direction
        (11.0 + 1e-9, 0.4, {"fid"}),  # FID above _hi
        (10.0, 0.4 - 1e-9, {"recall"}),  # recall below _lo
        (12.0, 0.1, {"fid", "recall"}),
    ],
)
def test_tolerance_ci_inside_edge_outside(tmp_path, fid, recall, bad):
    from varbench.runs.results import write_results

    base, meas = tmp_path / "base.parquet", tmp_path / "meas.parquet"
    write_results(base, _rows(**BASELINE))
    write_results(meas, _rows(fid, recall) + _rows(1.0, 1.0, model="new"))
    proc = run_cli(
        "check", "--runs", str(meas), "--baseline", str(base), "--tolerance", "ci", check=False
    )
    assert proc.returncode == (1 if bad else 0), proc.stderr
    findings = json.loads(proc.stdout)
    checked = {f["metric"]: f for f in findings if f["status"] != "no_baseline"}
    assert set(checked) == {"fid", "recall"}  # kid has no interval: not checked under bare ci
    assert {m for m, f in checked.items() if not f["ok"]} == bad
    # the row without a baseline row is reported, not failed
    assert [f["model"] for f in findings if f["status"] == "no_baseline"] == ["new"]
    text = run_cli(
        "check", "--runs", str(meas), "--baseline", str(base), "--tolerance", "ci",
        "--format", "text", check=False,
    ).stdout  # fmt: skip
    for metric in bad:
        assert re.search(rf"^REGRESSION: m p {{}} {metric} ", text, re.M)
    junit = run_cli(
        "check", "--runs", str(meas), "--baseline", str(base), "--tolerance", "ci",
        "--format", "junit", check=False,
    )  # fmt: skip
    assert junit.returncode == proc.returncode
    suite = ET.fromstring(junit.stdout)
    assert int(suite.get("failures")) == len(bad)


def test_tolerance_ci_combines_with_explicit_values(tmp_path):
    from varbench.present.check import CI, CI_AUTO, parse_tolerances
    from varbench.runs.results import write_results

    tol = parse_tolerances("ci,kid=0.001,recall=0.2")
    assert tol["fid"] == CI_AUTO and tol["kid"] == 0.001 and tol["recall"] == 0.2
    assert parse_tolerances("kid=ci")["kid"] == CI
    base, meas = tmp_path / "base.parquet", tmp_path / "meas.parquet"
    write_results(base, _rows(**BASELINE))
    write_results(meas, _rows(10.0, 0.35))  # recall below _lo but within the explicit 0.2
    proc = run_cli(
        "check", "--runs", str(meas), "--baseline", str(base), "--tolerance", "kid=ci,recall=0.2"
    )
    findings = {f["metric"]: f for f in json.loads(proc.stdout)}
    assert findings["kid"]["status"] == "no_interval" and findings["recall"]["ok"]
    assert "kid_lo" in proc.stderr


def _frame(**values):
    import pandas as pd

    return pd.DataFrame([{"model": "m", "protocol": "p", "params": "{}", **values}])


def test_gate_reads_every_declared_key_and_its_direction():
    """A regression in any declared key fails with an explicit tolerance (vendi, authpct: higher
    is better; cmmd, fls_overfit: lower is better), never in the better direction; metric names stand for
    their ranked keys; keys with no direction (ct_score) are gated two-sided."""
    from varbench.metrics import metric_registry
    from varbench.present.check import check, parse_tolerances

    tol = parse_tolerances("vendi=0.2,authpct=1,cmmd=0.01,fls_overfit=0.5,ct_score=1")
    assert {
        "vendi_cond_mean",
        "vendi_class_mean",
        "authpct",
        "cmmd",
        "fls_overfit",
        "ct_score",
    } <= set(tol)
    base = dict(vendi_cond_mean=3.0, vendi_class_mean=5.0, authpct=80.0, cmmd=0.1, fls_overfit=10.0,
                ct_score=0.0)  # fmt: skip
    worse = dict(vendi_cond_mean=2.7, vendi_class_mean=5.0, authpct=78.5, cmmd=0.12, fls_overfit=10.6,
                 ct_score=-1.5)  # fmt: skip
    better = dict(vendi_cond_mean=4.0, vendi_class_mean=6.0, authpct=95.0, cmmd=0.0, fls_overfit=1.0,
                  ct_score=0.5)  # fmt: skip
    bad = {f.metric for f in check(_frame(**worse), _frame(**base), tol) if not f.ok}
    assert bad == {"vendi_cond_mean", "authpct", "cmmd", "fls_overfit", "ct_score"}
    assert all(f.ok for f in check(_frame(**better), _frame(**base), tol))
    # ct_score has no better direction: a change either way beyond the margin is flagged
    up = check(_frame(ct_score=1.5), _frame(ct_score=0.0), parse_tolerances("ct_score=1"))
    assert [f.ok for f in up] == [False]
    # every key any registered metric declares can be gated by name
    for name in metric_registry.names():
        for key in metric_registry.get(name).results:
            assert key.name in parse_tolerances(f"{key.name}=0")


def test_ci_tolerance_gates_every_key_with_an_interval():
    from varbench.metrics.keys import has_interval, ranked_keys
    from varbench.present.check import CI_AUTO, check, parse_tolerances

    tol = parse_tolerances("ci")
    assert set(tol) == set(ranked_keys()) and set(tol.values()) == {CI_AUTO}
    interval = {k for k in tol if has_interval(k)}
    assert interval == {"fid", "precision", "recall"}
    base = _frame(fid=10.0, fid_lo=9.0, fid_hi=11.0, precision=0.8, precision_lo=0.7,
                  precision_hi=0.9, recall=0.5, recall_lo=0.4, recall_hi=0.6, vendi_cond_mean=3.0)  # fmt: skip
    meas = _frame(fid=11.5, precision=0.65, recall=0.45, vendi_cond_mean=1.0)
    found = {f.metric: f.ok for f in check(meas, base, tol)}
    assert found == {"fid": False, "precision": False, "recall": True}  # vendi: no interval


def test_unknown_tolerance_key_names_the_flag_and_the_keys():
    from varbench.errors import UsageError
    from varbench.present.check import parse_tolerances

    with pytest.raises(UsageError, match=r"--tolerance 'vendy=0\.2'.*vendi"):
        parse_tolerances("vendy=0.2")
    with pytest.raises(UsageError, match="margin >= 0"):
        parse_tolerances("fid=-1")
