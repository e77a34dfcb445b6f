"""Encoders against their reference libraries, with random-weight networks saved to local files.

No test here downloads anything: every network is built in code with random weights, saved,
and loaded back through the encoder's local-file path with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from varbench.encoders import encoder_registry
from varbench.errors import WeightsUnavailableError
from varbench.plan.demo_data import demo_image


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No network, empty caches, no weights dir."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-empty"))
    monkeypatch.delenv("VARBENCH_WEIGHTS_DIR", raising=False)


def images(n: int = 3) -> list[np.ndarray]:
    """Small class-structured images, one rectangular to exercise the resize/crop."""
    out = [demo_image(i % 10, 100 + i) for i in range(n)]
    out.append(np.asarray(Image.fromarray(out[0]).resize((96, 64))))
    return out


def assert_missing_fast(name: str, filename: str) -> None:
    enc = encoder_registry.get(name)()
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        enc.check_available()
    assert time.perf_counter() - t0 < 5.0
    assert filename in str(err.value) and "varbench fetch" in str(err.value)


def reference_pixels(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """torchvision's Resize(size, bicubic) + CenterCrop + ToTensor + Normalize on a PIL image."""
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return tf(Image.fromarray(image))[None]


def test_dinov2_local_file_matches_timm(tmp_path, offline_env):
    import timm
    from safetensors.torch import save_file

    from varbench.encoders.dinov2 import DinoV2Encoder

    assert_missing_fast("dinov2", DinoV2Encoder.weights_file())
    torch.manual_seed(0)
    src = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)
    path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    enc = DinoV2Encoder(weights=str(path))
    enc.check_available()
    assert len(enc.config()["weights_sha256"]) == 64
    ims = images()
    got = enc.encode(ims)
    # independent of the encoder: the saved model run through the official DINOv2 token path
    # (see tests/test_dinov2_official.py for that path against a transcription of the official code)
    from varbench.encoders.dinov2 import dgm_eval_batch, official_forward

    src.eval()
    with torch.no_grad():
        ref = official_forward(src, dgm_eval_batch(ims, 224)).numpy()
    assert got.shape == (len(ims), 768)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # one image alone gives the same row up to batched-kernel rounding
    np.testing.assert_allclose(enc.encode(ims[1:2]), got[1:2], rtol=1e-5, atol=1e-5)


def test_clip_local_file_matches_open_clip(tmp_path, offline_env):
    import open_clip

    from varbench.encoders.clip import OPENAI_MEAN, OPENAI_STD, ClipEncoder

    assert_missing_fast("clip", ClipEncoder.weights_file())
    torch.manual_seed(0)
    src = open_clip.create_model("ViT-B-16-quickgelu").eval()
    path = tmp_path / "clip.pt"
    torch.save(src.state_dict(), path)
    enc = ClipEncoder(weights=str(path))
    enc.check_available()
    ims = images()
    got = enc.encode(ims)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained=None)
    with torch.no_grad():
        ref = np.concatenate(
            [src.encode_image(preprocess(Image.fromarray(im))[None]).numpy() for im in ims]
        )
        tok = open_clip.get_tokenizer("ViT-B-16")(["goldfish", "a church"])
        ref_text = src.encode_text(tok).numpy()
    # open_clip's own eval transform equals the documented resize (checked independently too)
    np.testing.assert_allclose(
        preprocess(Image.fromarray(ims[-1]))[None].numpy(),
        reference_pixels(ims[-1], 224, OPENAI_MEAN, OPENAI_STD).numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        enc.encode_text(["goldfish", "a church"]), ref_text, rtol=1e-4, atol=1e-4
    )
    assert src.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


def test_lpips_whole_module_file_matches_lpips(tmp_path, offline_env):
    import lpips

    from varbench.encoders.lpips import LpipsEncoder

    assert_missing_fast("lpips", LpipsEncoder.weights_file())
    torch.manual_seed(0)
    src = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    path = tmp_path / "lpips.pth"
    torch.save(src.state_dict(), path)
    enc = LpipsEncoder(weights=str(path))
    enc.check_available()
    ims = images(4)
    a, b = ims[0], ims[2]
    got = enc.pair_distance(a, b)

    def prep(im):  # independent preprocessing: torchvision resize/crop, then [-1, 1]
        return reference_pixels(im, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    with torch.no_grad():
        ref = float(src(prep(a), prep(b)).item())
        ref_many = src(
            prep(a).repeat(len(ims) - 1, 1, 1, 1), torch.cat([prep(x) for x in ims[1:]])
        ).view(-1)
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-6)
    many = enc.distances(enc.layer_features(a), enc.stack([enc.layer_features(x) for x in ims[1:]]))
    np.testing.assert_allclose(many, ref_many.numpy(), rtol=1e-4, atol=1e-6)
    assert enc.pair_distance(a, a) == 0.0


def test_inception_missing_weights_offline_fails_fast(offline_env):
    from varbench.encoders.inception import WEIGHTS_FILE

    assert_missing_fast("inception", WEIGHTS_FILE)


def test_weights_dir_is_used(tmp_path, offline_env, monkeypatch):
    import lpips

    from varbench.encoders.lpips import LpipsEncoder

    monkeypatch.setenv("VARBENCH_WEIGHTS_DIR", str(tmp_path))
    torch.save(
        lpips.LPIPS(pnet_rand=True, verbose=False).state_dict(),
        tmp_path / LpipsEncoder.weights_file(),
    )
    enc = LpipsEncoder()
    enc.check_available()
    assert enc.weights_path() == tmp_path / LpipsEncoder.weights_file()


def test_pickled_code_is_refused(tmp_path, offline_env):
    from varbench.encoders.lpips import LpipsEncoder

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    from varbench.encoders.weights import UnsafeWeightsError

    with pytest.raises(UnsafeWeightsError, match="needs pickled Python code.*safetensors"):
        LpipsEncoder(weights=str(bad)).network()
    assert not (tmp_path / "pwned").exists()


class _Ctx:
    """Minimal MetricContext for image-space metrics on in-memory images."""

    def __init__(self, real, fake, heldout, cond, cond_index, feats):
        from varbench.core.hashing import pixel_sha256

        self.default_encoder, self.seed, self.options = "demo", 0, {"memorisation_check": 4}
        self._img = {}
        self.real_hashes = [self._add(x) for x in real]
        self.fake_hashes = [self._add(x) for x in fake]
        self.cond_hashes = [self._add(x) for x in cond]
        self._held = [self._add(x) for x in heldout]
        self.real_class = np.zeros(len(real), dtype=int)
        self.fake_class = np.zeros(len(fake), dtype=int)
        self.fake_cond_index = np.asarray(cond_index)
        self._feats = feats
        self._enc = {}
        self._hash = pixel_sha256

    def _add(self, x):
        from varbench.core.hashing import pixel_sha256

        h = pixel_sha256(x)
        self._img[h] = x
        return h

    def encoder(self, name):
        return self._enc[name]

    def image(self, h):
        return self._img[h]

    def features_of(self, hashes, encoder=None, output="features"):
        return np.stack([self._feats(self._img[h]) for h in hashes])

    def real(self, encoder=None, output="features"):
        return self.features_of(self.real_hashes)

    def fake(self, encoder=None, output="features"):
        return self.features_of(self.fake_hashes)

    def heldout(self, per_class):
        return self._held[:per_class], np.zeros(per_class, dtype=int)


def test_lpips_and_memorisation_match_brute_force_lpips(tmp_path, offline_env):
    import lpips

    from varbench.encoders.demo import demo_features
    from varbench.encoders.lpips import LpipsEncoder
    from varbench.metrics.lpips import LpipsMetric
    from varbench.metrics.memorisation import MemorisationMetric

    torch.manual_seed(0)
    src = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    path = tmp_path / "lpips.pth"
    torch.save(src.state_dict(), path)
    real = [demo_image(c, s) for c in range(3) for s in range(3)]
    fake = [real[0].copy(), demo_image(0, 50), demo_image(1, 51), demo_image(2, 52)]
    held = [demo_image(c, 90 + c) for c in range(3)] + [real[4].copy()]
    ctx = _Ctx(real, fake, held, [real[0], real[3]], [0, 0, 1, 1], demo_features)
    ctx._enc["lpips"] = LpipsEncoder(weights=str(path))

    def prep(im):
        return torch.from_numpy(im.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0

    def d(a, b):  # images are 64 px: the encoder's 256-px resize is applied to both sides
        from varbench.encoders.transforms import resize_shortest_center_crop as r

        with torch.no_grad():
            return float(src(prep(r(a, 256)), prep(r(b, 256))).item())

    mem = MemorisationMetric()
    out = mem.compute(ctx)
    # brute force with the lpips module itself, over the conditioning images (what the model
    # was shown: real[0] and real[3]), each sample's own included
    shown = [real[0], real[3]]
    brute = [min((d(f, r), j) for j, r in enumerate(shown)) for f in fake]
    np.testing.assert_allclose(mem._sample_nn, [b[0] for b in brute], rtol=1e-5, atol=1e-12)
    assert list(mem._sample_idx) == [b[1] for b in brute]  # the same neighbour
    assert mem._sample_nn[0] == 0.0  # the copy of its conditioning image is at exactly 0
    assert out["memorisation_bruteforce_agreement"] == 1.0
    art = mem.artifacts(ctx)
    assert sum(art["samples_hist"]) == len(fake) and len(art["bin_edges"]) == 51
    assert art["samples_nn_reference"] == [ctx.cond_hashes[b[1]] for b in brute]
    assert out["memorisation_nn_lpips_median"] == pytest.approx(
        float(np.median([b[0] for b in brute])), rel=1e-5
    )
    # 4 samples / 1 class -> 4 held-out images; identical pixels are skipped (none here)
    held_nn = [min(d(h, r) for r in shown if not np.array_equal(h, r)) for h in held]
    assert out["memorisation_heldout_nn_lpips_median"] == pytest.approx(
        float(np.median(held_nn)), rel=1e-5
    )
    lp = LpipsMetric().compute(ctx)
    to_cond = [d(fake[0], real[0]), d(fake[1], real[0]), d(fake[2], real[3]), d(fake[3], real[3])]
    assert lp["lpips_to_cond"] == pytest.approx(float(np.mean(to_cond)), rel=1e-4)
    div = np.mean([d(fake[0], fake[1]), d(fake[2], fake[3])])
    assert lp["lpips_diversity"] == pytest.approx(float(div), rel=1e-4)
