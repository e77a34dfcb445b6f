"""Semantica adapter: CLI runs on a tiny random-weight checkpoint, the schedule, sampler,
guidance and checkpoint safety, each checked against independently computed values."""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decoded, read_pngs, run_cli
from tiny_semantica import save_tiny_semantica

from varbench.adapter import Request, get_adapter_class
from varbench.errors import UsageError, WeightsUnavailableError
from varbench.plan.demo_data import demo_image
from varbench_adapters.semantica_model import (
    SemanticaConfig,
    UViT,
    alpha_sigma,
    ddpm_step,
    eps_from_v,
    guide,
    logsnr_cosine,
    logsnr_shifted,
    x0_from_v,
)

N_CLASSES = 10  # demo_1shot
BASE = ["--protocol", "demo_1shot", "--set", "steps=2", "--set", "resolution=64"]
BASE += ["--set", "n_per_class=2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_semantica(tmp_path_factory.mktemp("semantica") / "tiny")


def _env(cache: Path) -> dict:
    return {"VARBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def _run(ckpt: Path, out: Path, env: dict, *extra: str) -> dict[str, bytes]:
    run_cli(
        "run",
        "--model",
        "semantica",
        "--model-path",
        str(ckpt),
        *BASE,
        *extra,
        "--out",
        str(out),
        env=env,
    )
    return read_pngs(out)


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory) -> dict[str, Path]:
    """The same run twice, in fresh output folders, with --batch-size 1 and 2."""
    root = tmp_path_factory.mktemp("semantica-runs")
    env = _env(root / "cache")
    for bs in ("1", "2"):
        _run(ckpt, root / f"bs{bs}", env, "--set", "guidance=0.5", "--batch-size", bs)
    return {"bs1": root / "bs1", "bs2": root / "bs2"}


def _adapter(ckpt: Path | str, **options):
    cls = get_adapter_class("semantica")
    opts = cls.resolve_options({"steps": "2", **{k: str(v) for k, v in options.items()}})
    adapter = cls(opts, model_path=str(ckpt), device="cpu", dtype="float32")
    adapter.check_available()
    adapter.setup(None)
    return adapter


def _request(image: np.ndarray, seeds: tuple[int, ...], w: float) -> Request:
    return Request(
        cond_image=image,
        cond_id="c.png",
        class_name="c",
        class_label="c",
        class_index=0,
        sample_indices=tuple(range(len(seeds))),
        seeds=seeds,
        point={"guidance": w},
        resolution=64,
    )


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_writes_one_image_per_slot_at_the_requested_size(runs):
    pngs = read_pngs(runs["bs1"])
    assert len(pngs) == N_CLASSES * 2
    assert all("/points/guidance-0.5/" in p for p in pngs)
    assert {decoded(runs["bs1"] / p).shape for p in pngs} == {(64, 64, 3)}
    assert len(set(pngs.values())) == len(pngs)  # distinct seeds and conditioning images
    row = json.loads(next(runs["bs1"].glob("*/points/guidance-0.5/result.json")).read_text())
    assert row["guidance_convention"] == "one_plus_w" and row["n_samples"] == N_CLASSES * 2


def test_cli_rerun_in_new_folder_with_other_batch_size_is_byte_identical(runs):
    # a fresh output folder regenerates everything; --batch-size 2 groups requests differently
    assert read_pngs(runs["bs2"]) == read_pngs(runs["bs1"])


def test_cli_without_model_path_says_no_public_weights(tmp_path):
    t0 = time.perf_counter()
    proc = run_cli(
        "run",
        "--model",
        "semantica",
        *BASE,
        "--out",
        str(tmp_path / "o"),
        env=_env(tmp_path / "cache"),
        check=False,
    )
    assert proc.returncode != 0
    assert "--model-path" in proc.stderr and "no public weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "o").rglob("*.png"))
    assert time.perf_counter() - t0 < 180  # a hang guard; the failure precedes any work
    with pytest.raises(WeightsUnavailableError, match="--model-path"):
        get_adapter_class("semantica")({}).fetch()


# -- conditioning, batching, checkpoint formats (in process) ---------------------------------------
def test_conditioning_image_changes_the_samples(ckpt):
    adapter = _adapter(ckpt)
    seeds = (11, 12)
    first = adapter.generate([_request(demo_image(0, 1), seeds, 0.5)])[0]
    same = adapter.generate([_request(demo_image(0, 1), seeds, 0.5)])[0]
    other = adapter.generate([_request(demo_image(5, 1), seeds, 0.5)])[0]
    for x, y, z in zip(first, same, other, strict=True):
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)
        assert np.abs(x.astype(int) - z.astype(int)).mean() > 0.5


def test_guidance_zero_and_one_give_different_samples(ckpt):
    adapter = _adapter(ckpt)
    image, seeds = demo_image(4, 2), (21, 22)
    w0 = adapter.generate([_request(image, seeds, 0.0)])[0]
    w1 = adapter.generate([_request(image, seeds, 1.0)])[0]
    for x, y in zip(w0, w1, strict=True):  # same seed and conditioning: only w differs
        assert np.abs(x.astype(int) - y.astype(int)).mean() > 0.2


def test_group_call_matches_one_call_per_sample_within_rounding(ckpt):
    adapter = _adapter(ckpt)
    grouped = adapter.generate([_request(demo_image(2, 3), (1, 2, 3), 1.0)])[0]
    single = [adapter.generate([_request(demo_image(2, 3), (s,), 1.0)])[0][0] for s in (1, 2, 3)]
    for x, y in zip(grouped, single, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2


def test_single_file_checkpoint_equals_folder(tmp_path, ckpt):
    single = save_tiny_semantica(tmp_path, single_file=True)  # same seed -> same weights
    req = _request(demo_image(1, 1), (5,), 0.5)
    assert np.array_equal(
        _adapter(single).generate([req])[0][0], _adapter(ckpt).generate([req])[0][0]
    )


class _Payload:
    """Unpickling this writes a marker file: proof that a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickle_checkpoints_are_refused(tmp_path, ckpt):
    marker = tmp_path / "marker"
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    (folder / "model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    (tmp_path / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    for path in (folder, tmp_path / "model.pt"):
        with pytest.raises(WeightsUnavailableError, match="pickle"):
            _adapter(path)
    assert not marker.exists()


def test_invalid_config_is_a_clear_error(tmp_path, ckpt):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    cfg = json.loads((ckpt / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "chanels": [1]}))
    with pytest.raises(UsageError, match="chanels"):
        _adapter(folder)


def test_missing_encoder_names_the_file_and_fetch(tmp_path, ckpt, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("VARBENCH_WEIGHTS_DIR", raising=False)
    folder = tmp_path / "noenc"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((ckpt / name).read_bytes())
    with pytest.raises(WeightsUnavailableError) as info:
        _adapter(folder)
    msg = str(info.value)
    assert "vit_small_patch14_dinov2.lvd142m" in msg and "encoder.safetensors" in msg
    assert "varbench fetch" in msg or "Hugging Face cache" in msg


# -- schedule, parametrisation, sampler, guidance -------------------------------------------------
def test_schedule_is_variance_preserving_and_shifted():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    base = logsnr_cosine(t)
    assert float(base[0]) == pytest.approx(15.0) and float(base[-1]) == pytest.approx(-15.0)
    wide = logsnr_cosine(t[1:-1], -60.0, 60.0)  # unclipped: alpha_t = cos(pi t / 2)
    assert torch.allclose(alpha_sigma(wide)[0], torch.cos(math.pi * t[1:-1] / 2), atol=1e-12)
    shifted = logsnr_shifted(t, 256, 32)
    assert torch.allclose(shifted - base, torch.full_like(t, 2 * math.log(32 / 256)))
    alpha, sigma = alpha_sigma(shifted)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(torch.log(alpha**2 / sigma**2), shifted, atol=1e-9)


def test_v_prediction_conversions_are_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    alpha, sigma = alpha_sigma(torch.tensor(0.7, dtype=torch.float64))
    z = alpha * x + sigma * eps
    v = alpha * eps - sigma * x  # the v target (Salimans & Ho 2022)
    assert torch.allclose(x0_from_v(z, v, alpha, sigma), x, atol=1e-12)
    assert torch.allclose(eps_from_v(z, v, alpha, sigma), eps, atol=1e-12)


def test_ddpm_step_matches_discrete_ddpm_with_interpolated_variance():
    lt, ls = torch.tensor(-1.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    abar_t, abar_s = torch.sigmoid(lt), torch.sigmoid(ls)  # alpha-bar of Ho et al. 2020
    beta = 1 - abar_t / abar_s
    beta_tilde = beta * (1 - abar_s) / (1 - abar_t)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, generator=g, dtype=torch.float64)
    x0 = torch.rand(4, generator=g, dtype=torch.float64)
    mean = (abar_s.sqrt() * beta / (1 - abar_t)) * x0 + (
        (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t)
    ) * z
    zero, one = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    assert torch.allclose(ddpm_step(z, x0, lt, ls, zero), mean, atol=1e-12)
    std = ddpm_step(z, x0, lt, ls, one, 0.2) - mean
    assert torch.allclose(std, beta_tilde.sqrt() ** 0.2 * beta.sqrt() ** 0.8, atol=1e-12)
    assert torch.allclose(ddpm_step(z, x0, lt, ls, one, 1.0) - mean, beta_tilde.sqrt() * one)
    assert torch.allclose(ddpm_step(z, x0, lt, ls, one, 0.0) - mean, beta.sqrt() * one)


def test_guidance_on_v_equals_closed_form_on_eps():
    g = torch.Generator().manual_seed(2)
    eps_c, eps_u, z = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for w in (0.0, 0.5, 1.0, 3.0):
        assert torch.equal(guide(eps_c, eps_u, w), (1 + w) * eps_c - w * eps_u)
    alpha, sigma = alpha_sigma(torch.tensor(-0.8, dtype=torch.float64))
    v_c, v_u = (eps_c - sigma * z) / alpha, (eps_u - sigma * z) / alpha  # v from eps at z
    w = 0.7
    assert torch.allclose(
        eps_from_v(z, guide(v_c, v_u, w), alpha, sigma), (1 + w) * eps_c - w * eps_u, atol=1e-12
    )


def test_paper_architecture_shapes():
    cfg = SemanticaConfig.paper_256()
    assert cfg.token_grid == 16 and SemanticaConfig().token_grid == 16  # 16x16 lowest resolution
    with torch.device("meta"):
        model = UViT(cfg, context_dim=1024)  # DINOv2 ViT-L/14 token width
        ctx = model.embed_context(torch.zeros(1, 257, 1024), 1, 257)
        v = model(torch.zeros(1, 3, 256, 256), torch.zeros(1), ctx)
    assert v.shape == (1, 3, 256, 256)
    assert len(model.transformer) == 16
    assert [b[0].conv1.out_channels for b in model.down] == [128, 128, 256, 512]


def test_auto_dtype_is_never_float16():
    """--dtype auto: bfloat16 on GPU for semantica (float16 for the SD pipelines), float32 on CPU."""
    from varbench.adapter import get_adapter_class
    from varbench.runner import resolve_dtype

    cls = get_adapter_class("semantica")
    assert resolve_dtype("auto", "cuda", cls.gpu_auto_dtype) == "bfloat16"
    assert resolve_dtype("auto", "cpu", cls.gpu_auto_dtype) == "float32"
    assert resolve_dtype("auto", "cuda", get_adapter_class("sd_iv").gpu_auto_dtype) == "float16"


def test_sun397_sweep_has_table6_points():
    from varbench.plan.protocol import load_protocol

    assert load_protocol("sun397_1shot").sweeps["semantica"]["guidance"] == [
        0.1,
        0.3,
        0.5,
        0.7,
        1.0,
    ]


def test_initial_noise_comes_from_cpu_generators(ckpt, monkeypatch):
    """Noise is drawn from one CPU generator per sample seed, whatever the device."""
    import torch

    from varbench_adapters import semantica_model

    seen = {}
    original = semantica_model._noise

    def spy(generators, shape):
        seen.setdefault(
            "first",
            original([torch.Generator().manual_seed(g.initial_seed()) for g in generators], shape),
        )
        seen.setdefault("devices", {str(g.device) for g in generators})
        seen.setdefault("seeds", [g.initial_seed() for g in generators])
        return original(generators, shape)

    monkeypatch.setattr(semantica_model, "_noise", spy)
    _adapter(ckpt).generate([_request(demo_image(0, 1), (7, 8), 0.5)])
    assert seen["devices"] == {"cpu"} and seen["seeds"] == [7, 8]
    shape = tuple(seen["first"].shape[1:])
    expected = torch.stack(
        [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in (7, 8)]
    )
    torch.testing.assert_close(seen["first"], expected, rtol=0, atol=0)
