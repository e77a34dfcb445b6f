"""sd_iv, versatile_diffusion and ip_adapter on tiny random-weight pipelines, through the CLI.

Each adapter loads a real diffusers pipeline saved with save_pretrained (no downloads) and is
checked for: sample count and size, bit-identical reruns and batch-size invariance, real
dependence on the conditioning image (and on the IP-Adapter scale), and a fast, clear failure
when offline without weights.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decoded, read_pngs, run_cli
from tiny_pipelines import (
    save_tiny_ip_adapter,
    save_tiny_sd15_f8,
    save_tiny_sd_image_variation,
    save_tiny_versatile_diffusion,
)

from varbench.adapter import Request, get_adapter_class
from varbench.errors import WeightsUnavailableError
from varbench.plan.demo_data import demo_image
from varbench_adapters import hf
from varbench_adapters.ip_adapter import load_ip_adapter_state_dict
from varbench_adapters.sd_iv import CLIP_MEAN, CLIP_STD, clip_preprocess

MODELS = ("sd_iv", "versatile_diffusion", "ip_adapter")
HUB_IDS = {
    "sd_iv": "lambdalabs/sd-image-variations-diffusers",
    "versatile_diffusion": "shi-labs/versatile-diffusion",
    "ip_adapter": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
FAST = ("--set", "steps=2", "--set", "resolution=64", "--set", "guidance=4")
SMALL = ("--set", "n_per_class=2", "--set", "k=1")  # demo: 10 classes x 2 samples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny pipelines: SD-IV, VD, an SD 1.5 base and IP-Adapter layouts for it."""
    root = tmp_path_factory.mktemp("tiny_sd")
    base = save_tiny_sd15_f8(root / "sd15")
    return {
        "sd_iv": save_tiny_sd_image_variation(root / "sdiv"),
        "versatile_diffusion": save_tiny_versatile_diffusion(root / "vd"),
        "sd15": base,
        "ip": save_tiny_ip_adapter(root / "ip", base),
        "ip_bin": save_tiny_ip_adapter(root / "ip_bin", base, fmt="bin"),
    }


def model_args(model: str, tiny: dict[str, Path]) -> list[str]:
    """--model/--model-path (and the IP-Adapter folder) for one adapter."""
    if model == "ip_adapter":
        return [
            "--model", model, "--model-path", str(tiny["sd15"]),
            "--set", f"ip_adapter_repo={tiny['ip']}", "--set", "scale=1.0",
        ]  # fmt: skip
    return ["--model", model, "--model-path", str(tiny[model])]


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "VARBENCH_CACHE": os.environ["VARBENCH_CACHE"],
    }


def run(model: str, tiny, out: Path, tmp_path: Path, *extra: str) -> list[dict]:
    proc = run_cli(
        "run", *model_args(model, tiny), "--protocol", "demo_1shot", *FAST, *extra,
        "--out", str(out), env=offline_env(tmp_path),
    )  # fmt: skip
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_full_demo_run_is_bit_identical_across_processes_and_batch_sizes(model, tiny, tmp_path):
    """demo_1shot: 10 classes x 10 samples at 64 px, generated in groups of >= 8 per pipeline
    call; --batch-size 7 split into shards 2/3, 0/3 (killed with SIGKILL mid-generation, then
    resumed), 1/3, and a resume after losing samples reproduce every PNG byte for byte."""
    rows = run(model, tiny, tmp_path / "a", tmp_path, "--batch-size", "1")
    assert len(rows) == 1
    row = rows[0]
    assert row["n_samples"] == 100 and row["n_nan"] == 0 and row["n_black"] == 0
    assert row["guidance_convention"] == "sd"
    assert json.loads(row["params"])["guidance"] == 4.0
    extra = json.loads(row["extra"])
    assert extra["safety_checker"] == "off"
    assert row["images_per_call"] >= 8 and extra["generation"]["images_per_call"] >= 8
    assert extra["steps"] == 2 and extra["dtype"] == "float32"
    assert any("AttnProcessor2_0" in a for a in extra["attention"])
    pngs = sorted((tmp_path / "a").rglob("samples/**/*.png"))
    assert len(pngs) == 100
    images = [decoded(p) for p in pngs]
    assert all(im.shape == (64, 64, 3) for im in images)
    assert len({im.tobytes() for im in images}) == 100  # every seed gives its own image
    assert all(im.std() > 1.0 for im in images)  # not blank

    out = tmp_path / "b"
    run(model, tiny, out, tmp_path, "--batch-size", "7", "--shard", "2/3")
    done = len(list(out.rglob("samples/**/*.png")))
    # kill -9 in the middle of shard 0/3's generation, then the same command: the same bytes
    killed = kill_when_samples_exist(
        model, tiny, out, tmp_path, at_least=done + 10, extra=("--shard", "0/3")
    )
    assert done + 10 <= killed < 100
    run(model, tiny, out, tmp_path, "--batch-size", "7", "--shard", "0/3")
    last = run(model, tiny, out, tmp_path, "--batch-size", "7", "--shard", "1/3")
    first, again = read_pngs(tmp_path / "a"), read_pngs(out)
    assert len(first) == 100 and first == again
    assert last[0]["fid"] == row["fid"] and last[0]["recall"] == row["recall"]
    # resume: an interrupted run lost samples inside groups; they come back bit-identical
    run_dir = next(out.iterdir())
    for victim in sorted(run_dir.rglob("samples/**/*.png"))[5:17:4]:
        victim.unlink()
    (run_dir / "results.parquet").unlink()
    for stored in run_dir.glob("points/*/result.json"):
        stored.unlink()
    resumed = run(model, tiny, out, tmp_path)
    assert read_pngs(out) == first and resumed[0]["fid"] == row["fid"]


def kill_when_samples_exist(
    model: str, tiny, out: Path, tmp_path: Path, at_least: int, extra: tuple[str, ...] = ()
) -> int:
    """Start `varbench run`, SIGKILL it once ``at_least`` sample PNGs exist; the count then."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "varbench.cli", "run", *model_args(model, tiny)]
    cmd += ["--protocol", "demo_1shot", *FAST, *extra, "--out", str(out)]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **offline_env(tmp_path), "VARBENCH_NO_PROGRESS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.rglob("samples/**/*.png"))) >= at_least:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
    return len(list(out.rglob("samples/**/*.png")))


def make_adapter(model: str, tiny, **sets: str):
    cls = get_adapter_class(model)
    overrides = {"steps": "2", "resolution": "64", **sets}
    path = tiny["sd15"] if model == "ip_adapter" else tiny[model]
    if model == "ip_adapter":
        overrides.setdefault("ip_adapter_repo", str(tiny["ip"]))
    adapter = cls(cls.resolve_options(overrides), model_path=str(path))
    adapter.check_available()
    adapter.setup(None)
    return adapter


def request(cond: np.ndarray, cond_id: str, seeds=(11, 12), **point) -> Request:
    return Request(
        cond_image=cond,
        cond_id=cond_id,
        class_name="c",
        class_label="c",
        class_index=0,
        sample_indices=tuple(range(len(seeds))),
        seeds=tuple(seeds),
        point=point,
        resolution=64,
    )


@pytest.mark.parametrize("model", MODELS)
def test_output_depends_on_the_conditioning_image(model, tiny):
    adapter = make_adapter(model, tiny)
    point = {"guidance": 4.0, "scale": 1.0} if model == "ip_adapter" else {"guidance": 4.0}
    a, b = adapter.generate(
        [request(demo_image(0, 1), "a", **point), request(demo_image(5, 2), "b", **point)]
    )
    for x, y in zip(a, b, strict=True):  # same seeds, different conditioning
        assert x.shape == (64, 64, 3) and 0.0 <= x.min() and x.max() <= 1.0
        assert np.abs(x - y).max() > 1e-3
    # the same group twice reproduces the images exactly; a request alone matches to rounding
    again = adapter.generate(
        [request(demo_image(0, 1), "a", **point), request(demo_image(5, 2), "b", **point)]
    )[0]
    assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True))
    alone = adapter.generate([request(demo_image(0, 1), "a", **point)])[0]
    assert all(np.abs(x - y).max() < 1e-3 for x, y in zip(a, alone, strict=True))


def test_group_call_matches_one_call_per_request_closely(tiny):
    """One call for a group equals separate calls to ~1e-3 (statistically equivalent)."""
    adapter = make_adapter("sd_iv", tiny)
    reqs = [
        request(demo_image(1, 1), "a", guidance=4.0),
        request(demo_image(2, 1), "b", guidance=4.0),
    ]
    grouped = adapter.generate(reqs)
    single = [adapter.generate([r])[0] for r in reqs]
    for xs, ys in zip(grouped, single, strict=True):
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-3)


def test_ip_adapter_scale_controls_the_image_branch(tiny):
    adapter = make_adapter("ip_adapter", tiny)
    cond_a, cond_b = demo_image(0, 1), demo_image(5, 2)
    full = adapter.generate([request(cond_a, "a", guidance=4.0, scale=1.0)])[0]
    off = adapter.generate([request(cond_a, "a", guidance=4.0, scale=0.0)])[0]
    off_b = adapter.generate([request(cond_b, "b", guidance=4.0, scale=0.0)])[0]
    assert all(np.abs(x - y).max() > 1e-3 for x, y in zip(full, off, strict=True))
    # scale 0 switches the image cross-attention off: the conditioning image no longer matters
    assert all(np.array_equal(x, y) for x, y in zip(off, off_b, strict=True))


def test_ip_adapter_bin_loads_without_unpickling_code(tiny, tmp_path):
    st, st_path = load_ip_adapter_state_dict(tiny["ip"])
    pt, pt_path = load_ip_adapter_state_dict(tiny["ip_bin"])
    assert st_path.endswith(".safetensors") and pt_path.endswith(".bin")
    for part in ("image_proj", "ip_adapter"):
        assert st[part].keys() == pt[part].keys()
        for key in st[part]:
            assert torch.equal(st[part][key], pt[part][key])
    # a pickle that would run code on load is refused (torch.load weights_only=True)
    evil = tmp_path / "evil" / "models"
    evil.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"image_proj": Evil(), "ip_adapter": {}}, evil / "ip-adapter_sd15.bin")
    from varbench.encoders.weights import UnsafeWeightsError

    with pytest.raises(UnsafeWeightsError, match="safetensors") as info:
        load_ip_adapter_state_dict(tmp_path / "evil")
    assert "ip-adapter_sd15.bin" in str(info.value)
    assert not marker.exists()


def test_sd_iv_preprocessing_matches_the_model_card():
    """ToTensor -> Resize(224, bicubic, antialias=False) -> Normalize(CLIP), on uint8 input."""
    from torchvision import transforms

    image = demo_image(3, 7)
    card = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize(
                (32, 32), interpolation=transforms.InterpolationMode.BICUBIC, antialias=False
            ),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    expected = card(image)[None]
    got = clip_preprocess([image], 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_sample_requests_orders_and_groups():
    """Per-request order is kept; group_by_condition never mixes conditions in one call."""
    seen: list[tuple[str, ...]] = []

    def call(job: hf.SampleJob):
        seen.append(job.cond_ids)
        return [
            np.full((2, 2, 3), job.generators[i].initial_seed() % 256, np.uint8)
            for i in range(len(job))
        ]

    reqs = [
        request(demo_image(0, 0), "a", seeds=(1, 2, 3)),
        request(demo_image(0, 1), "b", seeds=(4, 5)),
    ]
    for grouped in (False, True):
        seen.clear()
        out = hf.sample_requests(reqs, call, group_by_condition=grouped)
        assert [[int(im[0, 0, 0]) for im in imgs] for imgs in out] == [[1, 2, 3], [4, 5]]
        if grouped:
            assert seen == [("a",) * 3, ("b",) * 2]
        else:
            assert seen == [("a", "a", "a", "b", "b")]


@pytest.mark.parametrize("model", MODELS)
def test_offline_without_weights_fails_fast_and_clearly(model, tmp_path):
    t0 = time.monotonic()
    proc = run_cli(
        "run", "--model", model, "--protocol", "demo_1shot", "--out", str(tmp_path / "out"),
        env=offline_env(tmp_path), check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 180, f"took {elapsed:.1f} s"  # a hang guard; "fast" is: nothing generated
    message = " ".join(proc.stderr.split())
    assert HUB_IDS[model] in message and f"varbench fetch --model {model}" in message
    assert not list((tmp_path / "out").rglob("*.png"))


def test_model_path_with_wrong_layout_is_a_usage_error(tiny, tmp_path):
    proc = run_cli(
        "run", "--model", "versatile_diffusion", "--model-path", str(tiny["sd_iv"]),
        "--protocol", "demo_1shot", "--out", str(tmp_path / "out"),
        env=offline_env(tmp_path), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "image_unet/config.json" in proc.stderr


def fake_hf_cache(hf_home: Path, repo_id: str, revision: str, source: Path) -> str:
    """Lay out ``source`` as a cached snapshot of ``repo_id`` at ``revision`` under HF_HOME."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


@pytest.mark.slow
def test_offline_run_from_the_hf_cache_records_the_commit(tiny, tmp_path):
    env = offline_env(tmp_path)
    commit = fake_hf_cache(Path(env["HF_HOME"]), HUB_IDS["sd_iv"], "v2.0", tiny["sd_iv"])
    proc = run_cli(
        "run", "--model", "sd_iv", "--protocol", "demo_1shot", *FAST, *SMALL,
        "--out", str(tmp_path / "out"), env=env,
    )  # fmt: skip
    weights = json.loads(json.loads(proc.stdout)[0]["extra"])["weights"][0]
    assert weights["repo_id"] == HUB_IDS["sd_iv"] and weights["revision"] == "v2.0"
    assert weights["commit"] == commit
    assert len(list((tmp_path / "out").rglob("samples/**/*.png"))) == 20


def test_cache_lookup_and_fetch_choose_the_needed_files(tiny, tmp_path, monkeypatch):
    """Cached snapshots need every file; fetch takes the first available alternative only."""
    from varbench_adapters import diffusers_common

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vd = get_adapter_class("versatile_diffusion")
    source = vd(vd.resolve_options({})).sources()[0]
    assert source.cached() is None
    with pytest.raises(WeightsUnavailableError, match="varbench fetch --model versatile_diffusion"):
        source.check()
    fake_hf_cache(
        tmp_path / "hf_home", HUB_IDS["versatile_diffusion"], "main", tiny["versatile_diffusion"]
    )
    assert source.cached() is not None
    # fetch, as if online: a listing with both formats downloads safetensors only, no text_unet
    monkeypatch.delenv("HF_HUB_OFFLINE")
    listed = [
        p.relative_to(tiny["versatile_diffusion"]).as_posix()
        for p in tiny["versatile_diffusion"].rglob("*")
        if p.is_file()
    ]
    listed += ["image_unet/diffusion_pytorch_model.bin", "text_unet/diffusion_pytorch_model.bin"]
    asked = {}
    monkeypatch.setattr(
        "huggingface_hub.HfApi.list_repo_files", lambda self, repo, revision=None: listed
    )
    monkeypatch.setattr(diffusers_common.hf, "require_hub_for_fetch", lambda repo, rev: None)
    monkeypatch.setattr(
        diffusers_common.hf,
        "fetch_snapshot",
        lambda repo, rev, patterns: asked.setdefault("p", patterns) and "x",
    )
    source.fetch()
    assert "image_unet/diffusion_pytorch_model.safetensors" in asked["p"]
    assert not any(p.endswith(".bin") or p.startswith("text_") for p in asked["p"])


@pytest.mark.parametrize("model", MODELS)
def test_guidance_below_one_is_rejected(model, tiny):
    """diffusers runs unguided for g <= 1, so 0 < g < 1 must not pass silently."""
    from varbench.errors import UsageError

    with pytest.raises(UsageError, match=r"--set guidance=0.5.*g >= 1"):
        make_adapter(model, tiny, guidance="0.5")
    make_adapter(model, tiny, guidance="1")  # exactly unguided is allowed


def test_versatile_diffusion_unconditional_is_true_grey(tiny):
    """VD's guidance uses a mid-grey uint8 image, seen by CLIP as 128/255 (not ~0.5/255)."""
    adapter = make_adapter("versatile_diffusion", tiny)
    pipe = adapter.pipe
    seen = {}
    original = pipe._encode_prompt

    def spy(prompt, device, n, cfg, negative_prompt):
        seen["negative"] = negative_prompt
        return original(prompt, device, n, cfg, negative_prompt)

    pipe._encode_prompt = spy
    adapter.generate([request(demo_image(0, 1), "a", guidance=4.0)])
    negatives = seen["negative"]
    assert len(negatives) == 2  # one per sample of the group
    arr = np.asarray(negatives[0])
    assert arr.dtype == np.uint8 and arr.shape == (512, 512, 3) and (arr == 128).all()
    proc = pipe.image_feature_extractor
    pixels = proc(images=negatives[:1], return_tensors="pt").pixel_values[0]
    mean = torch.tensor(proc.image_mean).view(3, 1, 1)
    std = torch.tensor(proc.image_std).view(3, 1, 1)
    expected = (torch.full_like(pixels, 128 / 255) - mean) / std
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)
    assert "grey uint8" in adapter.provenance()["unconditional"]
