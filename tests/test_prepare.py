"""Image preparation: adm_center_crop equals guided-diffusion's center_crop_arr, and it reaches
every scored image (references, samples) so FID equals torch-fidelity on pre-cropped folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_inception_file, run_cli, run_json
from PIL import Image

from varbench.errors import UsageError
from varbench.plan.demo_data import demo_image
from varbench.plan.imageprep import ImagePrep, adm_center_crop


def center_crop_arr_reference(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """Transcribed from openai/guided-diffusion guided_diffusion/image_datasets.py (commit
    8fb3ad9, ``center_crop_arr``), the preparation of the ADM evaluator's reference batches."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)

    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )

    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth-plus-noise test image (bicubic ringing and BOX averaging both matter)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    return np.clip(smooth.astype(int) + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("h", "w", "size"),
    [
        (375, 500, 256),  # ImageNet landscape: one BOX halving then BICUBIC
        (500, 375, 256),  # portrait
        (1037, 1611, 256),  # two halvings, odd sizes (floor)
        (333, 500, 299),  # no halving, downscale, rounding of the long side
        (41, 97, 64),  # upscale
        (64, 64, 64),  # already prepared: unchanged
        (513, 1024, 256),  # exactly 2x short side after one halving boundary
        (300, 301, 150),  # short side exactly 2x: halving happens
    ],
)
def test_adm_center_crop_equals_guided_diffusion(h, w, size):
    image = _noise(h, w, seed=h * 7 + w)
    ours = adm_center_crop(image, size)
    ref = center_crop_arr_reference(Image.fromarray(image), size)
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref)
    if (h, w) == (size, size):
        assert np.array_equal(ours, image)


def test_image_prep_identity_and_errors():
    a = ImagePrep("adm_center_crop", 512)
    assert a.identity() == {"name": "adm_center_crop", "version": 1, "resolution": 512}
    assert a.label == "adm_center_crop/v1@512"
    assert ImagePrep().identity()["resolution"] is None
    with pytest.raises(UsageError, match="needs a resolution"):
        ImagePrep("adm_center_crop", None)
    with pytest.raises(UsageError, match="Did you mean 'adm_center_crop'"):
        ImagePrep("adm_centre_crop", 512)


def test_protocol_names_unknown_preparation(tmp_path):
    from varbench.plan.protocol import load_protocol_file

    path = tmp_path / "p.toml"
    path.write_text(
        'name = "p"\nversion = 1\nlayout = "imagefolder"\nn_per_class = 2\nk = 1\nseed = 0\n'
        'resolution = 32\nencoder = "demo"\nprepare = "adm_centre_crop"\n'
    )
    with pytest.raises(UsageError, match="adm_centre_crop.*Did you mean 'adm_center_crop'"):
        load_protocol_file(path)


def test_shipped_protocols_prepare_like_adm():
    from varbench.plan.protocol import load_protocol

    for name in ("imagenet_1shot", "imagenet_10shot", "sun397_1shot", "folder_kshot"):
        spec = load_protocol(name)
        assert spec.prepare == "adm_center_crop" and spec.version >= 2
        assert spec.identity()["prepare"]["name"] == "adm_center_crop"


def test_feature_cache_key_includes_preparation(tmp_path):
    from varbench.encoders.demo import DemoEncoder
    from varbench.score.features import FeatureCache

    enc = DemoEncoder()
    roots = {
        FeatureCache(tmp_path, enc, prep=p).root
        for p in (ImagePrep(), ImagePrep("adm_center_crop", 64), ImagePrep("adm_center_crop", 32))
    }
    assert len(roots) == 3


# -- end to end: a folder dataset of non-square images ------------------------------------------
N_CLASSES, PER_CLASS, N_REF, RES = 4, 8, 4, 48


def _nonsquare(ci: int, i: int) -> np.ndarray:
    """A demo image stretched to a class-dependent non-square size (landscape or portrait)."""
    im = Image.fromarray(demo_image(ci, 100 + i))
    size = [(90, 60), (60, 84), (75, 50), (52, 70)][ci % 4]
    return np.asarray(im.resize(size, Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def nonsquare(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonsquare")
    data = root / "data"
    for ci in range(N_CLASSES):
        d = data / f"class_{ci}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_nonsquare(ci, i)).save(d / f"{i:02d}.png")
    crops = [
        adm_center_crop(_nonsquare(ci, i), RES) for ci in range(N_CLASSES) for i in range(PER_CLASS)
    ]
    weights = random_inception_file(root / "inception.pth", crops)
    proto = root / "nonsquare_kshot.toml"
    proto.write_text(
        'name = "nonsquare_kshot"\nversion = 1\nlayout = "imagefolder"\n'
        f"n_per_class = {N_REF}\nk = 1\nseed = 0\nresolution = {RES}\n"
        'encoder = "inception"\nprepare = "adm_center_crop"\n'
        'metrics = ["fid", "precision_recall"]\n'
    )
    return root, data, weights, proto


def _crop_folder(src: list[Path], dst: Path) -> Path:
    """The reference preparation applied with the transcribed function, saved losslessly."""
    dst.mkdir(parents=True)
    for i, p in enumerate(src):
        arr = center_crop_arr_reference(Image.open(p).convert("RGB"), RES)
        Image.fromarray(arr).save(dst / f"{i:03d}.png")
    return dst


def test_run_on_nonsquare_images_matches_torch_fidelity_after_crop(nonsquare, tmp_path):
    import torch_fidelity

    root, data, weights, proto = nonsquare
    out = tmp_path / "runs"
    args = ["run", "--model", "oracle", "--protocol", str(proto), "--data", str(data)]
    args += ["--out", str(out), "--weights", f"inception={weights}", "--device", "cpu"]
    rows = run_json(*args, env={"HF_HUB_OFFLINE": "1"})
    assert len(rows) == 1
    row = rows[0]
    assert row["prepare"] == f"adm_center_crop/v1@{RES}"
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["protocol"]["prepare"] == {
        "name": "adm_center_crop",
        "version": 1,
        "resolution": RES,
    }
    refs = [data / r for c in manifest["classes"] for r in c["references"]]
    samples = sorted((run_dir / "points").glob("*/samples/**/*.png"))
    assert len(refs) == len(samples) == N_CLASSES * N_REF
    # the oracle returns held-out reals at their native, non-square size
    assert any(Image.open(p).size != (RES, RES) for p in samples)
    ref_dir = _crop_folder(refs, tmp_path / "ref_crop")
    fake_dir = _crop_folder(samples, tmp_path / "fake_crop")
    ref = torch_fidelity.calculate_metrics(
        input1=str(fake_dir),
        input2=str(ref_dir),
        feature_extractor_weights_path=str(weights),
        feature_extractor="inception-v3-compat",
        fid=True,
        prc=True,
        batch_size=1,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes (forked from pytest they crawl)
    )
    assert ref["frechet_inception_distance"] > 1.0
    assert row["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    assert row["precision"] == pytest.approx(ref["precision"], abs=1e-6)
    assert row["recall"] == pytest.approx(ref["recall"], abs=1e-6)

    # `varbench metrics --prepare` on the raw folders gives the same FID as on the crops
    raw_fake = tmp_path / "raw_fake"
    raw_fake.mkdir()
    for i, p in enumerate(samples):
        (raw_fake / f"{i:03d}.png").write_bytes(p.read_bytes())
    raw_ref = tmp_path / "raw_ref"
    raw_ref.mkdir()
    for i, p in enumerate(refs):
        (raw_ref / f"{i:03d}.png").write_bytes(p.read_bytes())
    common = ["metrics", "--real", str(raw_ref), "--fake", str(raw_fake), "--metrics", "fid"]
    common += ["--weights", f"inception={weights}"]
    prepared = run_json(*common, "--prepare", "adm_center_crop", "--resolution", str(RES))
    assert prepared["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    raw = run_json(*common)  # default: no preparation, torch-fidelity on the raw folders
    ref_raw = torch_fidelity.calculate_metrics(
        input1=str(raw_fake),
        input2=str(raw_ref),
        feature_extractor_weights_path=str(weights),
        feature_extractor="inception-v3-compat",
        fid=True,
        batch_size=1,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes (forked from pytest they crawl)
    )
    assert raw["fid"] == pytest.approx(ref_raw["frechet_inception_distance"], rel=1e-3)
    assert abs(raw["fid"] - prepared["fid"]) > 1e-3 * prepared["fid"]

    # a different preparation is a different run
    rows_none = run_json(*args, "--set", "prepare=none", env={"HF_HUB_OFFLINE": "1"})
    assert rows_none[0]["run_id"] != row["run_id"]
    assert rows_none[0]["prepare"] == "none/v1"
    assert rows_none[0]["protocol"] == "nonsquare_kshot[prepare=none]"


def test_metrics_prepare_flag_errors(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(demo_image(0, 1)).save(d / "a.png")
    Image.fromarray(demo_image(1, 2)).save(d / "b.png")
    base = ["metrics", "--real", str(d), "--fake", str(d), "--metrics", "fid"]
    proc = run_cli(*base, "--prepare", "adm_center_crop", check=False)
    assert proc.returncode != 0 and "--resolution" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(*base, "--prepare", "center", "--resolution", "64", check=False)
    assert proc.returncode != 0 and "--prepare" in proc.stderr and "adm_center_crop" in proc.stderr
