"""Corrupt state is detected, not trusted: feature cache chunks, pickled weights, result files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_inception_file, run_cli
from PIL import Image

from varbench.demo_data import demo_image


class _Payload:
    """Unpickling this runs ``touch <marker>``: the code a weights file must never get to run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_weights(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(2), "extra": _Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for name, offset in (("real", 0), ("fake", 500)):
        (root / name).mkdir()
        for i in range(6):
            Image.fromarray(demo_image(i % 10, offset + i)).save(root / name / f"{i:02d}.png")
    return root / "real", root / "fake"


def test_payload_is_live(tmp_path):
    """The test payload really runs when unpickled without weights_only (so its absence means)."""
    marker = tmp_path / "ran"
    evil = _evil_weights(tmp_path / "evil.pth", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_pickled_weights_refused_through_cli(tmp_path, image_folders):
    real, fake = image_folders
    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / "evil.pth", marker)
    proc = run_cli(
        "metrics",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--metrics",
        "fid",
        "--weights",
        f"inception={evil}",
        check=False,
    )
    assert proc.returncode != 0
    assert str(evil) in proc.stderr
    assert "safetensors" in proc.stderr and "save_file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_damaged_weights_file_named_without_traceback(tmp_path, image_folders):
    from varbench.encoders.inception import InceptionEncoder
    from varbench.encoders.weights import UnsafeWeightsError

    real, fake = image_folders
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:600])
    proc = run_cli(
        "metrics", "--real", str(real), "--fake", str(fake), "--metrics", "fid",
        "--weights", f"inception={truncated}", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "cannot be read as weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    for bad in (garbage, good):  # random bytes; a valid file that is not an Inception
        with pytest.raises(UnsafeWeightsError, match="cannot be read as weights") as info:
            InceptionEncoder(weights=str(bad)).network()
        assert str(bad) in str(info.value)


def test_converted_safetensors_gives_the_same_features(tmp_path, image_folders):
    """The advice works: a state dict saved with safetensors encodes exactly like the .pth."""
    from safetensors.torch import save_file

    from varbench.encoders.inception import InceptionEncoder

    real, fake = image_folders
    images = [
        np.array(Image.open(p).convert("RGB")) for d in (real, fake) for p in sorted(d.iterdir())
    ]
    pth = random_inception_file(tmp_path / "inception.pth", images)
    st = tmp_path / "inception.safetensors"
    save_file(torch.load(pth, weights_only=True), str(st))
    a = InceptionEncoder(weights=str(pth)).encode_many(images, ["features", "logits"])
    b = InceptionEncoder(weights=str(st)).encode_many(images, ["features", "logits"])
    for out in ("features", "logits"):
        assert np.abs(a[out]).max() > 0
        np.testing.assert_array_equal(a[out], b[out])


@pytest.mark.parametrize("name", ["lpips", "dinov2", "clip"])
def test_other_encoders_refuse_pickled_weights(tmp_path, name):
    """LPIPS (our own loader), DINOv2 (timm) and CLIP (open_clip) give the same error."""
    from varbench.encoders import encoder_registry
    from varbench.encoders.weights import UnsafeWeightsError

    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / f"{name}-evil.pth", marker)
    encoder = encoder_registry.get(name)(weights=str(evil))
    with pytest.raises(UnsafeWeightsError, match="safetensors") as info:
        encoder.network()
    assert str(evil) in str(info.value)
    assert not marker.exists()
