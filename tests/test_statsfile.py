"""Reference statistics files: ADM batches, clean-fid / torch-fidelity statistics, `varbench stats`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import random_inception_file, run_cli, run_json, write_pngs
from PIL import Image

from varbench.plan.demo_data import demo_image

N_REAL, N_FAKE = 24, 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    real_imgs = [demo_image(i % 10, i) for i in range(N_REAL)]
    real = write_pngs(root / "real", real_imgs)
    fake = write_pngs(root / "fake", [demo_image((i * 3) % 10, 700 + i) for i in range(N_FAKE)])
    adm = root / "VIRTUAL_demo64_labeled.npz"
    np.savez(adm, arr_0=np.stack(real_imgs))  # ADM reference batch layout: NHWC uint8
    return real, fake, adm


def _fid(real, fake, *extra):
    return run_json("metrics", "--real", str(real), "--fake", str(fake), "--encoder", "demo",
                    *extra)  # fmt: skip


def test_folder_adm_batch_and_stats_file_agree_through_the_cli(folders, tmp_path):
    real, fake, adm = folders
    from_folder = _fid(real, fake, "--metrics", "fid,precision,recall,kid",
                       "--set", f"kid_subset_size={N_FAKE}")  # fmt: skip
    from_adm = _fid(adm, fake, "--metrics", "fid,precision,recall,kid",
                    "--set", f"kid_subset_size={N_FAKE}")  # fmt: skip
    assert from_folder["fid"] > 0.01
    for key, value in from_folder.items():  # same pixels -> same cached feature rows
        assert from_adm[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    out = tmp_path / "ref.npz"
    info = run_json("stats", "--real", str(real), "--encoder", "demo", "--out", str(out))
    assert info["n_images"] == N_REAL and info["encoder"] == "demo"
    with np.load(out, allow_pickle=False) as data:
        meta = json.loads(str(data["varbench"]))
        mu, sigma = data["mu"], data["sigma"]
    assert meta["prepare"] == {"name": "none", "version": 1, "resolution": None}
    assert meta["n_images"] == N_REAL and len(meta["encoder_key"]) == 64
    from varbench.encoders.demo import demo_features

    feats = np.stack([demo_features(np.asarray(Image.open(p).convert("RGB")))
                      for p in sorted(real.glob("*.png"))])  # fmt: skip
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-15)
    from_stats = _fid(out, fake, "--metrics", "fid")
    assert from_stats["fid"] == pytest.approx(from_folder["fid"], rel=1e-6)


def test_stats_only_file_refuses_feature_metrics(folders, tmp_path):
    real, fake, _ = folders
    out = tmp_path / "ref.npz"
    run_cli("stats", "--real", str(real), "--encoder", "demo", "--out", str(out))
    proc = run_cli("metrics", "--real", str(out), "--fake", str(fake), "--encoder", "demo",
                   "--metrics", "fid,recall,kid", check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    err = " ".join(proc.stderr.split())
    assert "precision_recall,kid" in err and "only statistics (mu, sigma)" in err
    assert "pass the reference image folder" in err and "Traceback" not in err


def test_mismatched_statistics_file_is_one_error_naming_both(folders, tmp_path):
    real, fake, _ = folders
    out = tmp_path / "ref.npz"
    run_cli("stats", "--real", str(real), "--encoder", "demo", "--prepare", "adm_center_crop",
            "--resolution", "32", "--out", str(out))  # fmt: skip
    proc = run_cli("metrics", "--real", str(out), "--fake", str(fake), "--encoder", "demo",
                   "--metrics", "fid", check=False)  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and err.count("error:") == 1, err
    assert "preparation mismatch" in err
    assert "adm_center_crop/v1@32" in err and "preparation none/v1" in err  # both sides
    # a foreign (clean-fid layout) file is Inception pool3: with the demo encoder, and 2048-d
    foreign = tmp_path / "cleanfid_custom_clean_custom_na.npz"
    np.savez_compressed(foreign, mu=np.zeros(2048), sigma=np.eye(2048))
    proc = run_cli("metrics", "--real", str(foreign), "--fake", str(fake), "--encoder", "demo",
                   "--metrics", "fid", check=False)  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "encoder mismatch" in err, err
    assert "encoder inception pool3" in err and "encoder demo" in err and "2048" in err


def test_dimension_mismatch_names_both(folders, tmp_path):
    from varbench.encoders.demo import DemoEncoder
    from varbench.errors import UsageError
    from varbench.plan.imageprep import ImagePrep
    from varbench.score.statsfile import check_compatible, read_reference

    path = tmp_path / "odd.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    ref = read_reference(path)
    enc = DemoEncoder()
    enc.name = "inception"  # pretend: the encoder name fits, the dimension does not
    with pytest.raises(UsageError, match=r"dimension mismatch: .*dimension 2048.*dimension 168"):
        check_compatible(ref, enc, ImagePrep(), 168)


def test_clean_fid_and_torch_fidelity_statistics_files(folders, tmp_path):
    """Statistics written the way clean-fid and torch-fidelity write them give the folder's FID."""
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from varbench.score.folders import score_folders

    real = write_pngs(tmp_path / "real", [demo_image(i % 10, i) for i in range(8)])
    fake = write_pngs(tmp_path / "fake", [demo_image((i * 3) % 10, 700 + i) for i in range(6)])
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(real.glob("*.png"))]
    weights = {"inception": str(random_inception_file(tmp_path / "inc.pth", images))}
    cache = tmp_path / "cache"
    kw = dict(encoder="inception", weights=weights, cache_dir=cache)
    ref = score_folders(real, fake, ["fid"], **kw)["fid"]
    from varbench.score.contexts import FolderContext

    ctx = FolderContext(real, fake, "inception", weights, "cpu", cache, {})
    feats = ctx.real().astype(np.float32)  # both packages keep float32 features
    # clean-fid make_custom_stats: np.savez_compressed(outf, mu=mu, sigma=sigma)
    cf = tmp_path / "custom_clean_custom_na.npz"
    np.savez_compressed(cf, mu=np.mean(feats, axis=0), sigma=np.cov(feats, rowvar=False))
    # clean-fid's KID companion file: np.savez_compressed(outf, feats=np_feats)
    kidf = tmp_path / "custom_clean_custom_na_kid.npz"
    np.savez_compressed(kidf, feats=feats)
    # torch-fidelity's cache entry <input>-<extractor>-stat-fid-<layer>.pt
    tf = tmp_path / "input1-inception-v3-compat-stat-fid-2048.pt"
    torch.save(fid_features_to_statistics(torch.from_numpy(feats)), tf)
    # torch-fidelity's features cache entry <input>-<extractor>-features-<layer>.pt
    tff = tmp_path / "input1-inception-v3-compat-features-2048.pt"
    torch.save(torch.from_numpy(feats), tff)
    for path in (cf, kidf, tf, tff):
        got = score_folders(path, fake, ["fid"], **kw)["fid"]
        assert got == pytest.approx(ref, rel=1e-5), path.name  # float32 features: 1e-5
    kid_folder = score_folders(real, fake, ["kid"], **kw, sets={"kid_subset_size": "6"})
    kid_file = score_folders(kidf, fake, ["kid"], **kw, sets={"kid_subset_size": "6"})
    assert kid_file["kid"] == pytest.approx(kid_folder["kid"], rel=1e-4, abs=1e-9)
