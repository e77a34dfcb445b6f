"""`varbench metrics` against torch-fidelity and clean-fid; Inception details; offline runs; cache reuse."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset, random_inception_file, run_cli, run_json, write_pngs
from PIL import Image

from varbench.plan.demo_data import demo_image

N_REAL, N_FAKE = 20, 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    real = write_pngs(root / "real", [demo_image(i % 10, i) for i in range(N_REAL)])
    fake = write_pngs(root / "fake", [demo_image((i * 3) % 10, 500 + i) for i in range(N_FAKE)])
    return real, fake


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory, folders) -> Path:
    """Random-weight torch-fidelity Inception, BatchNorm recalibrated on the test images, saved."""
    images = [
        np.array(Image.open(p).convert("RGB")) for d in folders for p in sorted(d.glob("*.png"))
    ]
    return random_inception_file(tmp_path_factory.mktemp("w") / "inception-random.pth", images)


def test_metrics_cli_matches_torch_fidelity(folders, inception_file):
    import torch_fidelity

    real, fake = folders
    ours = run_json(
        "metrics",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--metrics",
        "fid,kid,precision,recall,isc,sfid",
        "--weights",
        f"inception={inception_file}",
        "--set",
        f"kid_subset_size={N_FAKE}",
        "--format",
        "json",
        env={"HF_HUB_OFFLINE": "1"},
    )
    ref = torch_fidelity.calculate_metrics(
        input1=str(fake),
        input2=str(real),
        feature_extractor_weights_path=str(inception_file),
        feature_extractor="inception-v3-compat",
        feature_layer_prc="2048",
        fid=True,
        kid=True,
        prc=True,
        isc=True,
        kid_subset_size=N_FAKE,
        batch_size=1,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,
    )
    assert ref["frechet_inception_distance"] > 1.0  # recalibrated BN: features do not vanish
    assert (
        abs(ours["fid"] - ref["frechet_inception_distance"])
        <= 1e-3 * ref["frechet_inception_distance"]
    )
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], abs=1e-6)
    assert ours["isc"] == pytest.approx(ref["inception_score_mean"], rel=1e-5)
    assert ours["isc_std"] == pytest.approx(ref["inception_score_std"], rel=1e-4, abs=1e-6)
    assert ours["sfid"] > 0.0  # spatial output reaches the sfid metric through the cache
    # same counts out of N (torch-fidelity reports float32 fractions)
    assert ours["precision"] == pytest.approx(ref["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(ref["recall"], abs=1e-6)


def test_fid_kid_equal_clean_fid_on_same_features(folders, inception_file):
    from cleanfid.fid import frechet_distance, kernel_distance

    from varbench.core.env import default_cache_dir
    from varbench.metrics.gaussian import fid_from_features
    from varbench.metrics.kid import kid_features_to_metric
    from varbench.score.contexts import FolderContext

    real, fake = folders
    weights = {"inception": str(inception_file)}
    ctx = FolderContext(real, fake, "inception", weights, "cpu", default_cache_dir(), {})
    r, f = ctx.real(), ctx.fake()
    assert r.shape == (N_REAL, 2048)
    ref_fid = frechet_distance(
        r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False)
    )
    assert fid_from_features(r, f) == pytest.approx(ref_fid, rel=1e-6)
    # subset size = the smaller set, so every subset is the whole set and clean-fid's
    # unseeded subset draws cannot change the value
    ref_kid = kernel_distance(f, r[:N_FAKE], num_subsets=10, max_subset_size=N_FAKE)
    ours = kid_features_to_metric(f, r[:N_FAKE], subsets=10, subset_size=N_FAKE)["kid"]
    assert ours == pytest.approx(ref_kid, rel=1e-9)


def test_inception_spatial_and_batch_independence(folders, inception_file):
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    from varbench.encoders.inception import InceptionEncoder

    real, _ = folders
    ims = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(real.glob("*.png"))[:3]]
    enc = InceptionEncoder(weights=str(inception_file))
    many = enc.encode_many(ims, ["features", "logits", "spatial"])
    assert many["spatial"].shape == (3, 17 * 17 * 7)
    np.testing.assert_array_equal(enc.encode(ims[1:2], "features"), many["features"][1:2])
    # independent path to TF mixed_6/conv: run the blocks by hand up to Mixed_6d.branch1x1
    net = enc.network()
    x = torch.from_numpy(ims[0]).permute(2, 0, 1)[None].float()
    x = (
        interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False) - 128
    ) / 128
    with torch.no_grad():
        for name in [
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "MaxPool_1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "MaxPool_2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
        ]:
            x = getattr(net, name)(x)
        ref = net.Mixed_6d.branch1x1(x)[0, :7].permute(1, 2, 0).reshape(-1).double().numpy()
    np.testing.assert_allclose(many["spatial"][0], ref, rtol=1e-5, atol=1e-6)


def test_metric_names_accept_result_keys():
    from varbench.errors import UsageError
    from varbench.score.point import resolve_metric_names

    assert resolve_metric_names(["precision", "recall", "fid"]) == ["precision_recall", "fid"]
    with pytest.raises(UsageError, match="Did you mean"):
        resolve_metric_names(["fidd"])


def test_run_offline_without_weights_fails_fast(tmp_path):
    data = make_folder_dataset(tmp_path / "data", {f"c{i}": 3 for i in range(2)})
    out = tmp_path / "runs"
    t0 = time.perf_counter()
    proc = run_cli(
        "run",
        "--model",
        "copy",
        "--protocol",
        "folder_kshot",
        "--data",
        str(data),
        "--set",
        "n_per_class=2",
        "--out",
        str(out),
        env={
            "HF_HUB_OFFLINE": "1",
            "TORCH_HOME": str(tmp_path / "torch-empty"),
            "VARBENCH_WEIGHTS_DIR": "",
            "HF_HOME": str(tmp_path / "hf-empty"),
        },
        check=False,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "weights-inception-2015-12-05-6726825d.pth" in proc.stderr
    assert "varbench fetch" in proc.stderr
    assert elapsed < 180  # a hang guard (machine-dependent); "fast" is asserted below
    # the weights check precedes every sample: nothing was generated
    assert not list(out.rglob("*.png"))


def test_fetch_offline_fails_clearly(tmp_path):
    t0 = time.perf_counter()
    proc = run_cli(
        "fetch",
        "--encoders",
        "inception",
        env={"HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch-empty")},
        check=False,
    )
    assert proc.returncode != 0 and "offline" in proc.stderr
    assert time.perf_counter() - t0 < 180  # a hang guard; the message is the point


def test_reference_features_are_encoded_once(tmp_path, monkeypatch):
    """Two runs on the same manifest: references encoded by the first; copies hit the cache."""
    monkeypatch.setenv("VARBENCH_CACHE", str(tmp_path / "cache"))
    from varbench.encoders.demo import DemoEncoder
    from varbench.runner import RunConfig, run

    calls: list[int] = []
    orig = DemoEncoder.encode

    def counting(self, images, output="features"):
        calls.append(len(images))
        return orig(self, images, output)

    monkeypatch.setattr(DemoEncoder, "encode", counting)
    run(RunConfig(model="copy", protocol="demo_1shot", out=tmp_path / "runs"))
    first = sum(calls)
    assert first == 100  # 10 classes x 10 references; copies of them are cache hits
    calls.clear()
    run(RunConfig(model="augment", protocol="demo_1shot", out=tmp_path / "runs"))
    assert sum(calls) == 100  # only the 100 new samples; no reference re-encoded
    assert os.environ["VARBENCH_CACHE"] == str(tmp_path / "cache")
