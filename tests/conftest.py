"""Shared fixtures: an isolated cache, a CLI runner, small generated datasets, a plugin dist."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist workers share the machine's cores: one intra-op thread each, set before numpy
    # and torch load (their commands inherit it, so every zygote of a worker has it too).
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from varbench.plan.demo_data import demo_image  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "varbench-cache"
    monkeypatch.setenv("VARBENCH_CACHE", str(cache))
    monkeypatch.setenv("VARBENCH_NO_PROGRESS", "1")


# Variables read when a library the zygote preloads is imported (tests/cli_zygote.py): commands
# whose environments differ in one of them are forked from different zygotes. TORCH_HOME is read
# at call time by torch.hub, so it may vary within one zygote.
IMPORT_TIME_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED")
IMPORT_TIME_PREFIXES = (
    "TORCH_", "PYTORCH_", "LD_", "MALLOC_", "KMP_", "GOMP_", "HF_", "HUGGINGFACE_",
    "TRANSFORMERS_", "DIFFUSERS_", "XDG_",
)  # fmt: skip
MAX_ZYGOTES = 3


def import_time_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of ``env`` that preloaded libraries read at import: one zygote per value."""
    return tuple(
        sorted(
            (k, v)
            for k, v in env.items()
            if k in IMPORT_TIME_ENV or (k.startswith(IMPORT_TIME_PREFIXES) and k != "TORCH_HOME")
        )
    )


class _Zygote:
    """One fork server for `varbench` commands (see tests/cli_zygote.py)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "cli_zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _line(self, deadline: float | None) -> dict | None:
        """One JSON reply line, or None when ``deadline`` passes first."""
        buf = b""
        fd = self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError("the CLI fork server (tests/cli_zygote.py) died")
            buf += chunk
        return json.loads(buf)

    def run(self, args, env, timeout) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="vb-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            req = {"argv": list(args), "env": env, "cwd": os.getcwd()}
            req |= {"stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._line(None)["pid"]
            done = self._line(time.monotonic() + timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self._line(None)
                raise subprocess.TimeoutExpired(["varbench", *args], timeout)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "varbench.cli", *args],
                done["returncode"],
                out.read_text(),
                err.read_text(),
            )

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_ZYGOTES: dict[tuple, _Zygote] = {}  # most recently used last
_ZYGOTE_LOCK = threading.Lock()


def _stop_zygotes() -> None:
    while _ZYGOTES:
        _ZYGOTES.pop(next(iter(_ZYGOTES))).stop()


atexit.register(_stop_zygotes)


def _forked(args, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run the command in a fork of the zygote for ``env``'s import-time variables."""
    key = import_time_key(env)
    with _ZYGOTE_LOCK:
        zygote = _ZYGOTES.pop(key, None)
        if zygote is None or not zygote.alive():
            zygote = _Zygote(env)
        _ZYGOTES[key] = zygote
        while len(_ZYGOTES) > MAX_ZYGOTES:
            _ZYGOTES.pop(next(iter(_ZYGOTES))).stop()
        return zygote.run(args, env, timeout)


def _startup_hooks(env: dict[str, str]) -> bool:
    """True when PYTHONPATH holds a module the interpreter imports at start-up (a fork skips it)."""
    dirs = [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return any((d / n).exists() for d in dirs for n in ("sitecustomize.py", "usercustomize.py"))


def run_cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run `varbench ARGS` in a new process; return CompletedProcess (stdout/stderr text).

    The process is a fork of tests/cli_zygote.py (torch, diffusers and friends already imported,
    one zygote per value of the import-time variables); a cold ``python -m varbench.cli`` when
    PYTHONPATH holds a start-up hook (sitecustomize.py, usercustomize.py), or for every call with
    VARBENCH_TEST_COLD_CLI=1.
    """
    full_env = {**os.environ, **(env or {})}
    if os.environ.get("VARBENCH_TEST_COLD_CLI") == "1" or _startup_hooks(full_env):
        proc = subprocess.run(
            [sys.executable, "-m", "varbench.cli", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )
    else:
        proc = _forked(args, full_env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"varbench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def run_json(*args: str, env: dict | None = None):
    """Run the CLI and parse its JSON stdout."""
    return json.loads(run_cli(*args, env=env).stdout)


def random_lpips_file(folder: Path):
    """LPIPS v0.1 (AlexNet) with a seeded random trunk and the package's linear layers, saved
    as the state dict `--weights lpips=PATH` takes; returns (net, path)."""
    import lpips
    import torch

    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    path = Path(folder) / "lpips.pth"
    torch.save(net.state_dict(), path)
    return net, path


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


def write_pngs(folder: Path, arrays) -> Path:
    """``folder/000.png``, ``001.png``, ... from HxWx3 uint8 arrays; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


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
