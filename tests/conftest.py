"""Shared fixtures: an isolated cache, a CLI runner, small generated datasets, a plugin dist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varbench.demo_data import demo_image

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "varbench-cache"
    monkeypatch.setenv("VARBENCH_CACHE", str(cache))
    monkeypatch.setenv("VARBENCH_NO_PROGRESS", "1")


def run_cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run `varbench ARGS` in a subprocess; return CompletedProcess (stdout/stderr text)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "varbench.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"varbench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def run_json(*args: str, env: dict | None = None):
    """Run the CLI and parse its JSON stdout."""
    return json.loads(run_cli(*args, env=env).stdout)


def random_inception_file(path: Path, images: list[np.ndarray]) -> Path:
    """Random-weight torch-fidelity Inception, BatchNorm recalibrated on ``images``, saved.

    Recalibration keeps the random network's features from vanishing, so FID values are O(1+)
    and comparisons with torch-fidelity are meaningful. Images must share one shape.
    """
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(
            tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None
        ),
    ):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        net(batch)
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def cli():
    return run_cli


def make_folder_dataset(
    root: Path, per_class: dict[str, int], fmt: str = "PNG", seed: int = 0
) -> Path:
    """Class folders of demo-style images: ``root/<class>/<i>.png``."""
    names = list(per_class)
    for ci, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class[name]):
            arr = demo_image(ci % 10, seed * 1000 + i)
            ext = "jpg" if fmt == "JPEG" else "png"
            Image.fromarray(arr).save(d / f"img_{i:03d}.{ext}", format=fmt)
    return root


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "data", {f"class_{c}": 6 for c in "abcd"})


PLUGIN_SOURCE = '''
from __future__ import annotations
import os, time
import numpy as np
from varbench.adapter import Adapter, Param


class SlowNoise(Adapter):
    """Test plugin: seeded noise blended with the conditioning image, optionally slow."""

    description = "test plugin"
    params = (
        Param("delay", float, 0.0, "seconds to sleep per batch"),
        Param("mix", float, 0.5, "weight of noise", sweep=True),
    )

    def generate(self, requests):
        time.sleep(float(self.options["delay"]))
        out = []
        for r in requests:
            imgs = []
            for seed in r.seeds:
                rng = np.random.default_rng(seed)
                noise = rng.uniform(0, 1, size=r.cond_image.shape)
                base = r.cond_image.astype(np.float64) / 255.0
                imgs.append((1 - r.point["mix"]) * base + r.point["mix"] * noise)
            out.append(imgs)
        return out
'''


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> Path:
    """A directory holding a third-party adapter package and its dist-info entry point."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "vb_test_plugin.py").write_text(PLUGIN_SOURCE)
    dist = root / "vb_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vb-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[varbench.adapters]\nslow_noise = vb_test_plugin:SlowNoise\n"
    )
    return root


@pytest.fixture
def plugin_env(plugin_path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}


def read_pngs(folder: Path) -> dict[str, bytes]:
    """Relative path -> raw bytes of every PNG under a folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
