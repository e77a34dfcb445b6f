"""`varbench check` as a CI gate on demo runs."""

from __future__ import annotations

import json

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
