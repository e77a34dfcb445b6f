"""`varbench plot --kind vendi`: Vendi per conditioning image as a distribution per model and point.

Runs: the copy baseline (every variation is its conditioning image: Vendi 1 everywhere) and the
test plugin's seeded noise swept over two ``mix`` values, on the demo's 10 classes with one
conditioning image per class and 4 samples each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_json
from PIL import Image

PROTOCOL = """
name = "demo_vendi"
version = 1
description = "demo, one conditioning image per class, 4 samples each"
layout = "demo"
n_classes = 10
n_per_class = 4
k = 1
seed = 0
resolution = 64
encoder = "demo"
metrics = ["vendi"]
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plugin_path) -> Path:
    import os

    root = tmp_path_factory.mktemp("vendi_plot")
    cache = tmp_path_factory.getbasetemp() / "varbench-cache"
    env = {
        "VARBENCH_CACHE": str(cache),
        "VARBENCH_NO_PROGRESS": "1",
        "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
    }
    (root / "demo_vendi.toml").write_text(PROTOCOL)
    out = root / "runs"
    proto = str(root / "demo_vendi.toml")
    run_json("run", "--model", "slow_noise", "--protocol", proto, "--set", "mix=0.1,0.6",
             "--out", str(out), env=env)  # fmt: skip
    from varbench.runner import RunConfig, run  # in process: one CLI start-up fewer

    run(RunConfig(model="copy", protocol=proto, out=out, cache_dir=cache))
    return out


def test_plot_vendi_writes_one_png_per_protocol(runs, tmp_path):
    made = run_json("plot", "--runs", str(runs), "--kind", "vendi", "--out", str(tmp_path))
    assert [Path(p).name for p in made] == ["vendi_demo_vendi.png"]
    with Image.open(made[0]) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # drawn, not a blank canvas


def test_vendi_figure_has_one_series_per_model_and_sweep_point(runs):
    from varbench.present import plots
    from varbench.runs.views import load_runs

    found = load_runs(runs, None)
    spaces = plots.vendi_values(found)
    assert list(spaces) == ["vendi (demo features)"]  # one panel: the protocol's encoder
    series = dict(spaces["vendi (demo features)"])
    assert sorted(series) == ["copy", "slow_noise mix=0.1", "slow_noise mix=0.6"]
    assert all(len(v) == 10 for v in series.values())  # one conditioning image per class
    assert series["copy"] == pytest.approx([1.0] * 10)  # copies are all alike
    assert min(series["slow_noise mix=0.6"]) > 1.0  # seeded noise makes variations differ
    fig = plots.vendi_distribution_figure(found, "demo_vendi")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == sorted(series)
    assert ax.get_title() == "vendi (demo features)"
    # a box per series (median line) and every per-image score drawn as a point
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(len(line.get_xdata()) for line in points) == [10, 10, 10]
    # runs without Vendi artifacts: no figure (the CLI then prints [] and says why on stderr)
    assert plots.vendi_distribution_figure([], "demo_vendi") is None
    assert plots.figures("vendi", found, pd.DataFrame(), ["other_protocol"]) == []
