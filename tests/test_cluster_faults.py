"""Cluster life and faults: torchrun ranks, SLURM shards, locks, signals, full disks, damage, umask."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_pngs, run_cli, run_json

from varbench.core.cluster import shard_from_slurm
from varbench.errors import UsageError

KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "fid_lo", "fid_hi")
SLOW = ["--model", "slow_noise", "--protocol", "demo_1shot", "--set", "mix=0.3"]


def _same_numbers(a: dict, b: dict) -> None:
    for key in KEYS:
        assert a[key] == b[key], (key, a[key], b[key])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, plugin_path):
    """An uninterrupted single-process run of the slow_noise plugin (mix 0.3) on the demo."""
    out = tmp_path_factory.mktemp("reference") / "runs"
    env = {"PYTHONPATH": str(plugin_path)}
    row = run_json("run", *SLOW, "--out", str(out), env=env)[0]
    return row, next(out.iterdir())


# -- SLURM and torchrun ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_MAX": "7"}, (1, 4)),
        (
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_PROCID": "1",
             "SLURM_NTASKS": "2"},
            (5, 8),
        ),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, (3, 4)),
    ],
)  # fmt: skip
def test_shard_auto_from_slurm_variables(env, expected):
    assert shard_from_slurm(env) == expected


def test_shard_auto_outside_slurm_names_the_flag():
    with pytest.raises(UsageError, match="--shard auto"):
        shard_from_slurm({})
    with pytest.raises(UsageError, match="contiguous"):
        shard_from_slurm({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_slurm_array_shards_score_once_and_equal_one_process(tmp_path, plugin_env, reference):
    out = tmp_path / "runs"
    outs = []
    for task in range(3):  # three array tasks in turn; the last one to finish scores
        env = {**plugin_env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"}
        outs.append(run_json("run", *SLOW, "--out", str(out), "--shard", "auto", env=env))
    assert outs[0] == [] and outs[1] == []
    _same_numbers(outs[2][0], reference[0])
    status = json.loads(run_cli("status", "--runs", str(out), "--json").stdout)
    point = status[0]["points"][0]
    assert point["samples"] == "100/100" and point["scored"]
    assert point["shards_finished"] == ["0/3", "1/3", "2/3"]


def test_torchrun_two_cpu_processes_equal_one_process(tmp_path, plugin_env, reference):
    """torchrun (gloo, OMP_NUM_THREADS=1): rank shards, split feature extraction, rank 0 scores."""
    out = tmp_path / "runs"
    env = {**os.environ, **plugin_env, "VARBENCH_CACHE": str(tmp_path / "fresh-cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "varbench", "run", *SLOW, "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout[proc.stdout.index("[") :])  # rank 0 prints the rows
    _same_numbers(rows[0], reference[0])
    run_dir = next(out.iterdir())
    assert read_pngs(run_dir / "points") == read_pngs(reference[1] / "points")
    shards = sorted(p.name for p in (run_dir / "points" / "mix-0.3" / "shards").iterdir())
    assert shards == ["0of2.json", "1of2.json"]
    feats = list((tmp_path / "fresh-cache" / "features").rglob("*.npz"))
    assert feats, "rank chunks were written to the feature cache"


# -- locks ------------------------------------------------------------------------------------------
def _lock_path(out: Path, name: str) -> Path:
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    return run_dir / "points" / "mix-0.3" / "locks" / name


def test_second_process_leaves_naming_the_holder(tmp_path, plugin_env, reference):
    out = tmp_path / "runs"
    # Create the run folder with nothing generated: shard 1/2 of a one-process-per-shard split.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run_json("run", *SLOW, "--out", str(out), "--shard", "1/2", env=plugin_env)
        lock = _lock_path(out, "generate-0of1.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                    "started": time.time()}))  # fmt: skip
        before = read_pngs(out)
        proc = run_cli("run", *SLOW, "--out", str(out), env=plugin_env, check=False)
        assert proc.returncode == 3
        assert f"pid {holder.pid}" in proc.stderr and socket.gethostname() in proc.stderr
        assert "Traceback" not in proc.stderr
        assert read_pngs(out) == before  # generated nothing
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (same host, dead pid): the lock is stale and the run completes.
    row = run_json("run", *SLOW, "--out", str(out), env=plugin_env)[0]
    _same_numbers(row, reference[0])
    assert not lock.exists()


def test_two_concurrent_runs_corrupt_nothing(tmp_path, plugin_env, reference):
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "varbench.cli", "run", *SLOW, "--out", str(out),
            "--set", "delay=0.1"]  # fmt: skip
    env = {**os.environ, **plugin_env}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 3]), results
    for p, (_, err) in zip(procs, results, strict=True):
        if p.returncode == 3:
            assert "pid" in err and "leaves" in err
    # The sample count in timing.json counts every generated image: nothing was made twice.
    run_dir = next(out.iterdir())
    timing = json.loads((run_dir / "points" / "mix-0.3" / "timing.json").read_text())
    assert timing["images"] == 100
    row = run_json(*args[3:], env=plugin_env)[0]
    _same_numbers(row, reference[0])
    assert read_pngs(run_dir / "points") == read_pngs(reference[1] / "points")


# -- signals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_keeps_samples_and_resumes(tmp_path, plugin_env, reference, sig):
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "varbench.cli", "run", *SLOW, "--out", str(out),
            "--set", "delay=0.2"]  # fmt: skip
    proc = subprocess.Popen(
        args, env={**os.environ, **plugin_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 20:
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert proc.returncode == 128 + sig
    assert "re-run the same command" in err and "Traceback" not in err
    kept = len(list(out.rglob("*.png")))
    assert 0 < kept < 100
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.lock"))
    row = run_json(*args[3:], env=plugin_env)[0]  # the same command resumes
    _same_numbers(row, reference[0])
    assert len(list(out.iterdir())) == 1
    assert read_pngs(next(out.iterdir()) / "points") == read_pngs(reference[1] / "points")


# -- disk full --------------------------------------------------------------------------------------
def test_disk_full_is_one_clear_error_and_resume_works(
    tmp_path, monkeypatch, plugin_env, reference
):
    """ENOSPC from the n-th file write (samples): one error naming the folder, nothing partial."""
    import varbench.core.files as vio
    from varbench.runner import RunConfig, run

    monkeypatch.syspath_prepend(plugin_env["PYTHONPATH"].split(os.pathsep)[0])
    out = tmp_path / "runs"
    real_fsync, calls = os.fsync, {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    cfg = RunConfig(model="slow_noise", protocol="demo_1shot", out=out, sets={"mix": "0.3"})
    monkeypatch.setattr(vio.os, "fsync", full_disk)
    with pytest.raises(vio.DiskFullError) as info:
        run(cfg)
    assert "no space left" in str(info.value) and str(out) in str(info.value)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))
    for png in out.rglob("*.png"):  # every file that exists is whole
        assert png.stat().st_size > 0
    monkeypatch.setattr(vio.os, "fsync", real_fsync)
    row = run(cfg)[0]
    _same_numbers(row, reference[0])


def test_disk_full_through_the_cli_has_no_traceback(tmp_path, plugin_env):
    """The CLI prints the DiskFullError as one message (simulated by a sitecustomize hook)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "_real, _n = os.fsync, [0]\n"
        "def _fsync(fd):\n"
        "    _n[0] += 1\n"
        "    if _n[0] > 30:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _real(fd)\n"
        "os.fsync = _fsync\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(hook), plugin_env["PYTHONPATH"]])}
    proc = run_cli("run", *SLOW, "--out", str(tmp_path / "runs"), env=env, check=False)
    assert proc.returncode == 4, proc.stderr
    assert "no space left" in proc.stderr and "Traceback" not in proc.stderr


# -- damaged state ----------------------------------------------------------------------------------
def test_damaged_sample_result_and_hashes_are_rebuilt(tmp_path, plugin_env, reference):
    out = tmp_path / "runs"
    run_json("run", *SLOW, "--out", str(out), env=plugin_env)
    point = next(out.iterdir()) / "points" / "mix-0.3"
    png = sorted((point / "samples").rglob("*.png"))[7]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated sample
    (point / "result.json").write_bytes(b"\xff\xfe garbage")
    (point / "hashes.json").write_text("{not json")
    (next(out.iterdir()) / "results.parquet").write_bytes(b"PAR1 truncated")
    proc = run_cli("run", *SLOW, "--out", str(out), env=plugin_env)
    flat = "".join(proc.stderr.split())  # rich wraps long log lines
    assert f"damagedsample{png}" in flat
    assert f"damaged{point / 'result.json'}" in flat and f"damaged{point / 'hashes.json'}" in flat
    row = json.loads(proc.stdout)[0]
    _same_numbers(row, reference[0])
    assert read_pngs(point) == read_pngs(reference[1] / "points" / "mix-0.3")


# -- file modes -------------------------------------------------------------------------------------
def test_umask_022_gives_shareable_files(tmp_path, plugin_env):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    env = {**os.environ, **plugin_env, "VARBENCH_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "varbench.cli", "run", *SLOW, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = [p for root in (out, cache) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 100
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {"0o644"}, modes
    dirs = {oct(stat.S_IMODE(p.stat().st_mode)) for root in (out, cache) for p in root.rglob("*")
            if p.is_dir()}  # fmt: skip
    assert dirs == {"0o755"}, dirs
