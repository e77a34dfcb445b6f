"""End-to-end demo runs through the CLI: the paper's argument, resume, reuse, invariance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import read_pngs, run_cli, run_json

from varbench.core.files import writer_tag
from varbench.runs.results import schema


def _row(rows, **match):
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def test_copy_vs_oracle_on_demo(tmp_path):
    out = tmp_path / "runs"
    copy = run_json("run", "--model", "copy", "--protocol", "demo_1shot", "--out", str(out))[0]
    oracle = run_json("run", "--model", "oracle", "--protocol", "demo_1shot", "--out", str(out))[0]
    # Each copy sits at distance 0 from its conditioning image: exact values, not approximations.
    assert copy["precision"] == 1.0
    assert copy["recall"] == 1 / 10
    assert copy["n_samples"] == 100 and copy["n_real"] == 100
    assert oracle["recall"] > copy["recall"] + 0.5
    assert oracle["fid"] < copy["fid"]
    csv = run_cli(
        "leaderboard", "--runs", str(out), "--format", "csv", "--protocol", "demo_1shot"
    ).stdout
    df = pd.read_csv(pd.io.common.StringIO(csv))
    assert {
        "model",
        "protocol",
        "params",
        "fid",
        "kid",
        "precision",
        "recall",
        "n_samples",
        "source",
    } <= set(df.columns)
    assert list(df["model"]) == ["oracle", "copy"]  # best FID first
    # results.parquet carries the fixed schema and provenance
    table = pq.read_table(next(out.glob("copy-*/results.parquet")))
    assert table.schema.equals(schema())
    row = table.to_pylist()[0]
    for key in (
        "varbench_version",
        "torch_version",
        "manifest_sha256",
        "device",
        "dtype",
        "python_version",
    ):
        assert row[key], key
    assert row["seed"] == 0 and row["n_samples"] == 100


def test_rerun_regenerates_nothing(tmp_path):
    out = tmp_path / "runs"
    first = run_json("run", "--model", "augment", "--protocol", "demo_1shot", "--out", str(out))
    run_dir = next(out.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.png")}
    assert len(stamps) == 100
    # what scorers killed mid-write leave (writers gone), and a live writer's temp (this process)
    host = writer_tag().rsplit("-", 1)[0]
    point_dir = next((run_dir / "points").iterdir())
    dead = [
        point_dir / f".result.json.{host}-{dead_pid()}.a1b2c3.tmp",
        run_dir / f".results.parquet.{host}-{dead_pid()}.d4e5f6.tmp",
    ]
    live = run_dir / f".results.parquet.{writer_tag()}.g7h8i9.tmp"
    for p in (*dead, live):
        p.write_bytes(b"partial")
    second = run_json("run", "--model", "augment", "--protocol", "demo_1shot", "--out", str(out))
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.png")} == stamps
    assert not any(p.exists() for p in dead) and live.exists()
    assert first[0]["fid"] == second[0]["fid"] and first[0]["recall"] == second[0]["recall"]


def test_batch_size_and_shards_do_not_change_numbers(tmp_path):
    keys = ("fid", "kid", "precision", "recall", "manifest_sha256")
    a = run_json(
        "run",
        "--model",
        "augment",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path / "a"),
        "-b",
        "1",
    )[0]
    b = run_json(
        "run",
        "--model",
        "augment",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path / "b"),
        "-b",
        "7",
    )[0]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert read_pngs(tmp_path / "a") == read_pngs(tmp_path / "b")
    out = tmp_path / "c"
    for i in (2, 0):  # shards in any order; the last one to finish scores
        partial = run_json(
            "run",
            "--model",
            "augment",
            "--protocol",
            "demo_1shot",
            "--out",
            str(out),
            "--shard",
            f"{i}/3",
        )
        assert partial == []
    c = run_json(
        "run", "--model", "augment", "--protocol", "demo_1shot", "--out", str(out), "--shard", "1/3"
    )[0]
    assert {k: a[k] for k in keys} == {k: c[k] for k in keys}


def test_killed_run_resumes_to_same_numbers(tmp_path, plugin_env):
    ref = run_json(
        "run",
        "--model",
        "slow_noise",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path / "ref"),
        "--set",
        "mix=0.3",
        env=plugin_env,
    )[0]
    out = tmp_path / "killed"
    run_args = ["run", "--model", "slow_noise", "--protocol", "demo_1shot", "--out", str(out),
                "--set", "mix=0.3", "--set", "delay=0.05"]  # fmt: skip
    args = [sys.executable, "-m", "varbench.cli", *run_args, "-b", "3"]
    proc = subprocess.Popen(
        args, env={**os.environ, **plugin_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 20:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(out.rglob("*.png")))
    assert 0 < n_before < 100, n_before
    # what a writer killed between mkstemp and rename leaves: a partial hidden temp file
    first = sorted(out.rglob("samples/**/*.png"))[0]
    orphan = first.parent / f".{first.name}.k1ll3d.tmp"
    orphan.write_bytes(first.read_bytes()[:50])
    # and a point-level JSON temp (timing.json) of a writer on this host that is gone
    point_dir = first.parents[len(first.relative_to(out).parts) - 4]
    assert point_dir.parent.name == "points", point_dir
    (
        point_dir / f".timing.json.{writer_tag().rsplit('-', 1)[0]}-{dead_pid()}.x1y2z3.tmp"
    ).write_text("{")
    resumed = run_json(*run_args, env=plugin_env)[0]
    for key in ("fid", "kid", "precision", "recall"):
        assert resumed[key] == ref[key], key
    assert read_pngs(next(out.iterdir())) == read_pngs(next((tmp_path / "ref").iterdir()))
    assert not list(out.rglob("*.tmp")), "the resume removes a killed writer's temp files"


def test_sweep_points_are_separate_rows(tmp_path, plugin_env):
    rows = run_json(
        "run",
        "--model",
        "slow_noise",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path),
        "--set",
        "mix=0.1,0.9",
        "--set",
        "n_per_class=4",
        env=plugin_env,
    )
    assert [json.loads(r["params"]) for r in rows] == [{"mix": 0.1}, {"mix": 0.9}]
    assert rows[0]["protocol"] == "demo_1shot[n_per_class=4]"
    assert rows[0]["n_samples"] == 40
    assert rows[0]["fid"] < rows[1]["fid"]  # more noise, further from the data


def test_unknown_set_key_suggests(tmp_path):
    proc = run_cli(
        "run",
        "--model",
        "augment",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path),
        "--set",
        "strenght=0.5",
        check=False,
    )
    assert proc.returncode == 2
    assert "strength" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run", "--model", "coppy", "--protocol", "demo_1shot", check=False)
    assert "Did you mean 'copy'" in proc.stderr
    proc = run_cli("run", "--model", "copy", "--protocol", "demo_1sht", check=False)
    assert "demo_1shot" in proc.stderr


@pytest.mark.parametrize("fmt", ["markdown", "json", "table"])
def test_leaderboard_formats_include_published(tmp_path, fmt):
    run_json("run", "--model", "copy", "--protocol", "demo_1shot", "--out", str(tmp_path))
    out = run_cli("leaderboard", "--runs", str(tmp_path), "--format", fmt).stdout
    assert "copy" in out and "Semantica" in out
    if fmt == "json":
        rows = json.loads(out)
        ip = [r for r in rows if r["model"] == "ip_adapter" and r["protocol"] == "imagenet_1shot"]
        assert min(r["fid"] for r in ip) == 20.2


def dead_pid() -> int:
    """The pid of a process that has exited (a killed writer's, for temp-file names)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_writers_temps_are_removed_and_live_ones_kept(tmp_path):
    from varbench.core.files import atomic_write_json, remove_dead_writers_temps

    host = writer_tag().rsplit("-", 1)[0]
    dead = tmp_path / f".timing.json.{host}-{dead_pid()}.abc123.tmp"
    mine = tmp_path / f".nan.json.{writer_tag()}.def456.tmp"  # this process: a live writer
    elsewhere = tmp_path / f".timing.json.another_host-{os.getpid()}.ghi789.tmp"
    old_style = tmp_path / ".timing.json.jkl012.tmp"  # no tag: its writer cannot be told
    for p in (dead, mine, elsewhere, old_style):
        p.write_text("{")
    assert remove_dead_writers_temps(tmp_path) == 1
    assert not dead.exists() and mine.exists() and elsewhere.exists() and old_style.exists()
    atomic_write_json(tmp_path / "timing.json", {"seconds": 1.0})  # its temp name is tagged
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "timing.json"
