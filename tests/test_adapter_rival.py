"""RIVAL adapter on the tiny random-weight SD 1.5 pipeline (CPU, a few steps, 64 px).

Torch runs single-threaded here: the tiny model gains nothing from threads, and on a loaded
two-core machine OpenMP spinning made each UNet call several times slower.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_pngs, run_cli
from tiny_pipelines import save_tiny_sd15

from varbench.adapter import Request
from varbench.errors import WeightsUnavailableError
from varbench.plan.datasets import imagenet_labels
from varbench.plan.demo_data import demo_image
from varbench_adapters.rival import DEFAULT_BASE, RivalAdapter
from varbench_adapters.rival_core import (
    DDIMSchedule,
    Group,
    RivalSettings,
    ddim_move,
    invert,
    permute_positions,
    sample,
)

CLI_ARGS = [
    "run", "--model", "rival", "--protocol", "demo_1shot", "--set", "steps=2",
    "--set", "resolution=64", "--set", "n_per_class=2",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_sd15(tmp_path_factory.mktemp("rival") / "sd15")


def make_adapter(tiny_dir: Path, **options) -> RivalAdapter:
    """A set-up adapter on the tiny pipeline (setup reads nothing from the run context)."""
    opts = RivalAdapter.resolve_options({k: str(v) for k, v in options.items()})
    adapter = RivalAdapter(opts, model_path=str(tiny_dir), device="cpu", dtype="float32")
    adapter.check_available()
    adapter.setup(None)  # type: ignore[arg-type]
    return adapter


def request(image: np.ndarray, label: str, seeds=(11,), guidance: float = 5.0) -> Request:
    return Request(
        cond_image=image,
        cond_id=f"{label}/x.png",
        class_name=label,
        class_label=label,
        class_index=0,
        sample_indices=tuple(range(len(seeds))),
        seeds=tuple(seeds),
        point={"guidance": guidance},
        resolution=64,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- the CLI, end to end --------------------------------------------------------------------
def test_cli_counts_sizes_determinism_and_batch_invariance(tiny_dir, tmp_path):
    """--batch-size 2 in one process, then shards 2/3 (--batch-size 1), 0/3 and 1/3
    (--batch-size 7) in three others, then a resume after losing samples: byte-identical PNGs.

    The second, sharded run is the same seeded command in new processes, so byte equality with
    the first is the rerun determinism check and, through its batch sizes 1 and 7 against 2,
    the batch-size invariance check, in two generations instead of four.
    """
    import json

    env = {"VARBENCH_CACHE": str(tmp_path / "cache_a"), "HF_HUB_OFFLINE": "1"}
    base = [*CLI_ARGS, "--model-path", str(tiny_dir)]
    row = json.loads(
        run_cli(*base, "--out", str(tmp_path / "a"), "--batch-size", "2", env=env).stdout
    )[0]
    assert row["model"] == "rival" and row["n_samples"] == 20  # 10 demo classes x 2 samples
    assert row["guidance_convention"] == "sd" and json.loads(row["params"]) == {"guidance": 5.0}
    extra = json.loads(row["extra"])
    assert extra["safety_checker"] == "off" and extra["guidance_1_injects"] is True
    first = read_pngs(tmp_path / "a")
    assert len(first) == 20
    for rel_path in first:
        from PIL import Image

        with Image.open(tmp_path / "a" / rel_path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    # Two samples of one conditioning image differ: each has its own seeded permutation.
    by_cond: dict[str, list[bytes]] = {}
    for rel_path, data in first.items():
        by_cond.setdefault(rel_path.rsplit("_s", 1)[0], []).append(data)
    assert len(by_cond) == 10 and all(len(set(v)) == 2 for v in by_cond.values())
    assert row["images_per_call"] >= 8  # groups never span conditioning images for RIVAL

    env = {"VARBENCH_CACHE": str(tmp_path / "cache_shards"), "HF_HUB_OFFLINE": "1"}
    args = [*base, "--out", str(tmp_path / "s")]
    for shard, batch in (("2/3", "1"), ("0/3", "7"), ("1/3", "7")):
        last = run_cli(*args, "--batch-size", batch, "--shard", shard, env=env)
    again = read_pngs(tmp_path / "s")
    assert again.keys() == first.keys()
    changed = sorted(k for k in first if again[k] != first[k])
    assert not changed, f"same seeded command, other batch sizes: different bytes in {changed[:5]}"
    assert json.loads(last.stdout)[0]["fid"] == row["fid"]
    run_dir = next((tmp_path / "s").iterdir())
    for victim in sorted(run_dir.rglob("samples/**/*.png"))[3:12:4]:
        victim.unlink()
    (run_dir / "results.parquet").unlink()
    for stored in run_dir.glob("points/*/result.json"):
        stored.unlink()
    resumed = json.loads(run_cli(*args, env=env).stdout)[0]
    assert read_pngs(tmp_path / "s") == first and resumed["fid"] == row["fid"]


def test_offline_without_weights_fails_fast_naming_hub_id(tmp_path):
    empty_hf = tmp_path / "hf"
    env = {
        "VARBENCH_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(empty_hf),
        "HF_HUB_CACHE": str(empty_hf / "hub"),
    }
    t0 = time.monotonic()
    proc = run_cli(*CLI_ARGS, "--out", str(tmp_path / "out"), env=env, check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert DEFAULT_BASE in proc.stderr and "varbench fetch" in proc.stderr, proc.stderr
    assert not list((tmp_path / "out").rglob("*.png"))
    assert elapsed < 180, f"took {elapsed:.0f}s"  # a hang guard; "fast" is: nothing generated


def test_check_available_offline_is_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opts = RivalAdapter.resolve_options({"base_model": "varbench-test/no-such-sd15"})
    adapter = RivalAdapter(opts, device="cpu", dtype="float32")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="varbench-test/no-such-sd15") as err:
        adapter.check_available()
    assert time.monotonic() - t0 < 5
    assert "varbench fetch --model rival" in str(err.value)


# -- inversion and the reference chain -------------------------------------------------------
def test_inversion_reconstructs_and_reference_follows_chain(tiny_dir):
    """DDIM inversion then plain DDIM regeneration (no injection, permutation or AdaIN) returns
    the input latent; the reference branch is fed the chain at every step.

    Conditioning of the random model: its VAE scaling factor is set so latents have unit
    variance (what SD's 0.18215 does for SD's VAE), and its output layer is damped 10x, which
    brings |d eps / d x| from ~0.8 to ~0.08 (measured below). A trained eps-network varies
    smoothly along the DDIM path, which is what makes inversion work; the raw random UNet does
    not (its 50-step reconstruction error exceeds 100 %), so testing it raw would test nothing.
    """
    a = make_adapter(tiny_dir)
    raw = a.encode_image(demo_image(0, 1), 64) / a.vae.config.scaling_factor
    a.vae.register_to_config(scaling_factor=float(1 / raw.std()))
    with torch.no_grad():
        a.unet.conv_out.weight.mul_(0.1)
    x0 = a.encode_image(demo_image(0, 1), 64)
    other = a.encode_image(demo_image(3, 2), 64)
    cond, empty = a.encode_prompt("circle"), a.encode_prompt("")
    with torch.no_grad():
        d = 0.01 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        e0 = a.unet(x0, 500, encoder_hidden_states=cond).sample
        lipschitz = float(
            (a.unet(x0 + d, 500, encoder_hidden_states=cond).sample - e0).norm() / d.norm()
        )
    assert lipschitz < 0.2

    # Our DDIM step is the scheduler's (eta 0), checked against diffusers' own implementation.
    sched = DDIMSchedule.from_scheduler(a.scheduler, 10)
    t = sched.timesteps[3]
    expected = a.scheduler.step(e0, t, x0, eta=0.0).prev_sample
    torch.testing.assert_close(
        ddim_move(x0, e0, sched.alpha(t), sched.alpha(t - sched.ratio)),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )

    errors = {}
    for steps in (10, 50):
        sched = DDIMSchedule.from_scheduler(a.scheduler, steps)
        chain = invert(a.unet, a.state, x0, cond, sched)
        assert len(chain) == steps + 1 and torch.equal(chain[0], x0)
        trace = []
        group = Group(chain=chain, cond=cond, ref_uncond=empty, var_uncond=empty, x_T=chain[-1])
        plain = RivalSettings(guidance=1.0, inject=False, adain=False)
        out = sample(a.unet, a.state, [group], sched, plain, trace=trace.append)[0]
        errors[steps] = rel(out, x0)
        # The whole plain trajectory retraces the chain, step by step.
        assert max(rel(s.var_out, chain[steps - s.index - 1]) for s in trace) < 0.1
    # First-order solver: more steps, smaller error (measured 6.3 % and 3.0 %); 50 steps lands
    # within 6 % of the latent norm, a tenth of the distance to another image's latent (68 %).
    assert errors[50] < errors[10]
    assert errors[50] < 0.06 and errors[50] < 0.1 * rel(other, x0)

    # Full RIVAL run (injection, AdaIN, permuted start, guidance 5) on the 10-step chain.
    sched = DDIMSchedule.from_scheduler(a.scheduler, 10)
    chain = invert(a.unet, a.state, x0, cond, sched)
    x_T = permute_positions(chain[-1], torch.Generator().manual_seed(3))
    group = Group(
        chain=chain, cond=cond, ref_uncond=empty, var_uncond=a.encode_prompt("x"), x_T=x_T
    )
    trace = []
    sample(a.unet, a.state, [group], sched, RivalSettings(guidance=5.0), trace=trace.append)
    for s in trace:
        assert torch.equal(s.ref_in, chain[10 - s.index])  # reset to the chain before each step
        assert rel(s.ref_step, s.ref_next) < 0.1  # its own step would land next to the chain
        if s.index:
            assert torch.equal(s.ref_in, trace[s.index - 1].ref_next)
    assert not torch.equal(trace[-1].var_out, chain[0])


# -- cross-image attention and AdaIN ----------------------------------------------------------
def _manual_attention(attn, h_q: torch.Tensor, h_kv: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax attention written out by hand, then the output projection."""
    q, k, v = attn.to_q(h_q), attn.to_k(h_kv), attn.to_v(h_kv)
    b, n, c = q.shape
    heads = attn.heads
    q, k, v = (x.view(b, -1, heads, c // heads).transpose(1, 2) for x in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    return attn.to_out[0]((w @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_self_attention_reads_reference_kv(tiny_dir, guidance):
    """attn1 outputs of the variation equal attention over the reference's (and own) K/V."""
    a = make_adapter(tiny_dir)
    attn = a.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    calls = []

    def hook(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        calls.append((a.state.mode, h.detach().clone(), output.detach().clone()))

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        sched = DDIMSchedule.from_scheduler(a.scheduler, 4)
        cond = a.encode_prompt("circle")
        chain = invert(a.unet, a.state, a.encode_image(demo_image(0, 1), 64), cond, sched)
        calls.clear()
        x_T = permute_positions(chain[-1], torch.Generator().manual_seed(5))
        group = Group(
            chain=chain, cond=cond, ref_uncond=a.encode_prompt(""),
            var_uncond=a.encode_prompt("x"), x_T=x_T,
        )  # fmt: skip
        trace = []
        settings = RivalSettings(guidance=guidance)
        sample(a.unet, a.state, [group], sched, settings, var_chunk=1, trace=trace.append)
    finally:
        handle.remove()
    assert sched.timesteps == (751, 501, 251, 1)
    assert [s.attn_mode for s in trace] == ["reference", "concat", "concat", "concat"]
    assert len(calls) == 2 * len(trace)  # a reference pass and a variation pass per step
    with torch.no_grad():
        for (m_ref, h_ref, _), (mode, h_var, out) in zip(calls[::2], calls[1::2], strict=True):
            assert m_ref == "record"
            assert h_ref.shape[0] == h_var.shape[0] == (1 if guidance == 1 else 2)
            h_kv = h_ref if mode == "reference" else torch.cat([h_ref, h_var], dim=1)
            ref_only = _manual_attention(attn, h_var, h_ref)
            torch.testing.assert_close(
                out, _manual_attention(attn, h_var, h_kv), rtol=1e-4, atol=1e-5
            )
            if mode == "concat":
                assert not torch.allclose(out, ref_only, atol=1e-4)
    # AdaIN while t > t_early = 600: per-channel mean/std of the guided noise = the reference's.
    for s in trace:
        stats = [(e.mean(dim=(2, 3)), e.flatten(2).std(dim=2)) for e in (s.eps_var, s.eps_ref)]
        same = all(torch.allclose(x, y, atol=1e-4) for x, y in zip(*stats, strict=True))
        assert s.adain == (s.t > 600) and same == s.adain


def test_injection_guidance_one_and_conditioning_change_outputs(tiny_dir):
    image, other = demo_image(0, 1), demo_image(0, 7)

    def run(image, guidance=5.0, **opts) -> np.ndarray:
        a = make_adapter(tiny_dir, steps=4, **opts)
        a.state.calls.clear()
        out = a.generate([request(image, "circle", guidance=guidance)])[0][0]
        assert out.shape == (64, 64, 3) and 0 <= out.min() and out.max() <= 1
        run.calls = dict(a.state.calls)
        return out

    base = run(image)
    assert run.calls.get("reference", 0) > 0 and run.calls.get("concat", 0) > 0
    never_aligned = run(image, t_align=1000)  # the reference-only phase never triggers
    assert run.calls.get("reference", 0) == 0
    no_injection = run(image, inject=False)
    assert set(run.calls) <= {"off"}
    assert not np.allclose(base, never_aligned, atol=1e-3)
    assert not np.allclose(base, no_injection, atol=1e-3)
    assert not np.allclose(base, run(other), atol=1e-3)
    g1 = run(image, guidance=1.0)
    assert run.calls.get("reference", 0) > 0 and run.calls.get("concat", 0) > 0
    assert not np.allclose(g1, run(image, guidance=1.0, inject=False), atol=1e-3)
    # Every sample of a group is its own draw (same seed -> the same image up to batch rounding;
    # the same group twice -> the same bits).
    a = make_adapter(tiny_dir, steps=4)
    both = a.generate([request(image, "circle", seeds=(11, 12))])[0]
    np.testing.assert_allclose(both[0], base, atol=1e-4)
    assert not np.allclose(both[0], both[1], atol=1e-3)
    again = a.generate([request(image, "circle", seeds=(11, 12))])[0]
    assert all(np.array_equal(x, y) for x, y in zip(both, again, strict=True))


def test_group_call_matches_one_call_per_sample(tiny_dir):
    """A group (one call for all of a conditioning image's samples) equals per-sample calls to
    ~1e-4: another group size is statistically equivalent, not bit-identical."""
    adapter = make_adapter(tiny_dir, steps=3)
    image = demo_image(0, 1)
    grouped = adapter.generate([request(image, "circle", seeds=(1, 2, 3))])[0]
    single = [adapter.generate([request(image, "circle", seeds=(s,))])[0][0] for s in (1, 2, 3)]
    assert len(grouped) == 3
    for g, s in zip(grouped, single, strict=True):
        np.testing.assert_allclose(g, s, atol=1e-4)


def test_permutation_is_seeded_and_leaves_global_rng_alone():
    lat = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    lat[:, 1] = lat[:, 0] + 1000  # channel 1 = channel 0 + 1000 at every position
    state = torch.random.get_rng_state()
    p1 = permute_positions(lat, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the authors drew from the global RNG
    assert torch.equal(p1, permute_positions(lat, torch.Generator().manual_seed(1)))
    assert not torch.equal(p1, permute_positions(lat, torch.Generator().manual_seed(2)))
    assert torch.equal(p1[:, 0].flatten().sort().values, lat[:, 0].flatten())  # a permutation
    assert torch.equal(p1[:, 1], p1[:, 0] + 1000)  # the same one in every channel


def test_imagenet_class_names_file():
    labels = imagenet_labels()
    assert len(labels) == 1000
    wnids = list(labels)
    assert wnids == sorted(wnids)  # ILSVRC2012 class-index order is sorted wnid order
    assert (wnids[0], labels[wnids[0]]) == ("n01440764", "tench")
    assert labels["n01443537"] == "goldfish" and labels["n15075141"] == "toilet tissue"
    assert labels["n02012849"] == labels["n03126707"] == "crane"  # the known duplicate


def test_default_prompts_are_the_authors_template():
    """Positive suffix and negative prompt come as one template (RIVAL's variation config)."""
    from varbench_adapters.rival import NEGATIVE_PROMPT, RivalAdapter

    options = RivalAdapter.resolve_options({})
    assert (
        options["prompt"].format(label="tabby cat") == "tabby cat, best quality, extremely detailed"
    )
    assert (
        options["negative_prompt"]
        == ", monochrome, lowres, bad anatomy, worst quality, low quality"
    )
    assert options["negative_prompt"] == NEGATIVE_PROMPT


def test_permutation_generators_are_cpu_seeded(tiny_dir, monkeypatch):
    """The latent permutation is drawn from a CPU generator per sample seed (device-independent)."""
    from varbench_adapters import rival

    seen = []
    original = rival.permute_positions

    def spy(latent, generator):
        seen.append((str(generator.device), generator.initial_seed()))
        return original(latent, generator)

    monkeypatch.setattr(rival, "permute_positions", spy)
    make_adapter(tiny_dir, steps=2).generate([request(demo_image(0, 1), "circle", seeds=(3, 4))])
    assert seen == [("cpu", 3), ("cpu", 4)]
