"""Samples made elsewhere: export the plan, write samples without varbench, import, score.

The exact test of issue 14: the `copy` baseline's samples written by a script that does not
import varbench, imported as a folder and as an npz, give every metric of `--model copy` bit
for bit (identical pixels -> identical hashes -> identical features and numbers).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_json
from PIL import Image

from varbench.errors import VarbenchError
from varbench.runner import RunConfig, run
from varbench.runs.results import metric_columns

# Written as a user would, without varbench: read each conditioning PNG, save it under the
# planned name (the copy baseline), or stack them in plan order into an ADM-style npz.
COPY_SCRIPT = r"""
import csv, sys
from pathlib import Path
import numpy as np
from PIL import Image
plan, out, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(plan / "plan.csv")))
ims = [np.asarray(Image.open(plan / r["cond_file"]).convert("RGB")) for r in rows]
if kind == "npz":
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, np.stack(ims))
else:
    for r, im in zip(rows, ims):
        p = out / r["file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(p)
"""


def _write_copy(plan: Path, out: Path, kind: str) -> None:
    script = plan.parent / "copy_samples.py"
    script.write_text(COPY_SCRIPT)
    subprocess.run([sys.executable, str(script), str(plan), str(out), kind], check=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    plan = tmp_path_factory.mktemp("export") / "plan"
    summary = run_json("export", "--protocol", "demo_1shot", "--out", str(plan))
    return plan, summary


@pytest.fixture(scope="module")
def copy_row(tmp_path_factory, exported):
    out = tmp_path_factory.mktemp("copyrun")
    (row,) = run(RunConfig(model="copy", protocol="demo_1shot", out=out))
    return row


def _external(out: Path, samples: Path, name: str) -> list[dict]:
    """`varbench run --model external` in-process (the CLI path is tested once, below)."""
    sets = {"samples": str(samples), "name": name}
    return run(RunConfig(model="external", protocol="demo_1shot", out=out, sets=sets))


def _metrics(row: dict) -> dict:
    cols = set(metric_columns())
    return {k: v for k, v in row.items() if k in cols and v is not None}


def test_export_writes_the_plan(exported):
    plan, summary = exported
    rows = list(csv.DictReader(open(plan / "plan.csv")))
    jl = [json.loads(line) for line in (plan / "plan.jsonl").read_text().splitlines()]
    assert summary["samples"] == len(rows) == len(jl) == 100
    assert summary["conditioning_images"] == 10
    assert [r["file"] for r in rows] == [r["file"] for r in jl]
    assert len({r["file"] for r in rows}) == 100 and len({r["seed"] for r in rows}) == 100
    assert {r["resolution"] for r in rows} == {"64"}
    assert len(list((plan / "conditioning").rglob("*.png"))) == 10
    manifest = json.loads((plan / "manifest.json").read_text())
    assert manifest["sha256"] == summary["manifest_sha256"]
    # the conditioning PNG holds exactly the pixels of the dataset file varbench decodes
    from varbench.core.env import default_cache_dir
    from varbench.plan.demo_data import demo_root

    first = rows[0]
    src = demo_root(default_cache_dir()) / first["cond_id"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(plan / first["cond_file"]).convert("RGB")),
        np.asarray(Image.open(src).convert("RGB")),
    )
    assert "varbench run --model external" in (plan / "README.txt").read_text()


def test_imported_copy_equals_copy_baseline_bit_for_bit(exported, copy_row, tmp_path):
    plan, _ = exported
    _write_copy(plan, tmp_path / "samples", "folder")
    out = tmp_path / "runs"
    (row,) = run_json(
        "run", "--model", "external", "--protocol", "demo_1shot", "--out", str(out),
        "--set", f"samples={tmp_path / 'samples'}", "--set", "name=copy_elsewhere",
    )  # fmt: skip
    ours, ref = _metrics(row), _metrics(copy_row)
    assert ours.keys() == ref.keys() and len(ours) >= 8
    assert ours == ref  # bit for bit
    assert row["model"] == "copy_elsewhere"
    assert row["images_per_call"] is None
    assert "outside varbench" in row["notes"]
    extra = json.loads(row["extra"])
    assert extra["samples_sha256"] in row["run_id"] or extra["samples_sha256"]
    # a re-run with the same files reuses the result (same run id, same row, nothing redone)
    (again,) = _external(out, tmp_path / "samples", "copy_elsewhere")
    assert again["run_id"] == row["run_id"] and again["created_at"] == row["created_at"]
    # a changed file is a different run
    victim = next((tmp_path / "samples").rglob("*.png"))
    arr = np.asarray(Image.open(victim).convert("RGB")).copy()
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(victim)
    (changed,) = _external(out, tmp_path / "samples", "copy_elsewhere")
    assert changed["run_id"] != row["run_id"]
    board = run_json("leaderboard", "--runs", str(out), "--format", "json")
    assert "copy_elsewhere" in json.dumps(board)


def test_npz_import_equals_copy_baseline(exported, copy_row, tmp_path):
    plan, _ = exported
    _write_copy(plan, tmp_path / "s.npz", "npz")
    (row,) = _external(tmp_path / "runs", tmp_path / "s.npz", "copy_npz")
    assert _metrics(row) == _metrics(copy_row)


def test_sweep_points_import_into_one_run(exported, tmp_path):
    plan, _ = exported
    root = tmp_path / "sweep"
    _write_copy(plan, root / "guidance-1", "folder")
    _write_copy(plan, tmp_path / "g4.npz", "npz")
    with np.load(tmp_path / "g4.npz") as z:
        np.savez(root / "guidance-4.npz", z["arr_0"][:, ::-1].copy())  # flipped: another point
    rows = _external(tmp_path / "runs", root, "sweepy")
    assert [json.loads(r["params"]) for r in rows] == [{"guidance": 1}, {"guidance": 4}]
    assert len({r["run_id"] for r in rows}) == 1
    assert rows[0]["fid"] != rows[1]["fid"]


def _bad_samples(plan: Path, root: Path) -> None:
    _write_copy(plan, root, "folder")
    files = sorted(root.rglob("*.png"))
    files[0].unlink()  # missing
    (root / "00000" / "stray.png").write_bytes(files[1].read_bytes())  # extra
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(files[2])  # 16-bit
    Image.open(files[3]).convert("L").save(files[3])  # one channel
    files[4].write_bytes(b"not a png")  # undecodable


def test_bad_folder_is_one_error_naming_every_file(exported, tmp_path):
    plan, _ = exported
    root = tmp_path / "bad"
    _bad_samples(plan, root)
    out = tmp_path / "runs"
    proc = run_cli(
        "run", "--model", "external", "--protocol", "demo_1shot", "--out", str(out),
        "--set", f"samples={root}", "--set", "name=bad", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "5 problem(s)" in err and "Traceback" not in err
    assert "missing" in err and "stray.png" in err and "16-bit" in err
    assert "1 channel(s)" in err and "fix:" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.zeros((100, 64, 64, 3), np.float32), "dtype float32"),
        (np.zeros((99, 64, 64, 3), np.uint8), "holds 99 samples"),
        (np.zeros((100, 64, 64), np.uint8), "3 dimension(s)"),
        (np.zeros((100, 64, 64, 1), np.uint8), "1 channel(s)"),
    ],
)
def test_bad_npz_is_named(exported, tmp_path, arr, message):
    np.savez(tmp_path / "s.npz", arr)
    with pytest.raises(VarbenchError, match="nothing was imported") as info:
        _external(tmp_path / "runs", tmp_path / "s.npz", "x")
    assert message in str(info.value) and str(tmp_path / "s.npz") in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_usage_errors_name_the_flag(tmp_path):
    with pytest.raises(VarbenchError, match="--set name=NAME"):
        run(RunConfig(model="external", protocol="demo_1shot", out=tmp_path, sets={"samples": "x"}))
    with pytest.raises(VarbenchError, match="--set samples=PATH"):
        run(RunConfig(model="external", protocol="demo_1shot", out=tmp_path, sets={"name": "a"}))
    with pytest.raises(VarbenchError, match="no such file"):
        _external(tmp_path, tmp_path / "nope", "a")
