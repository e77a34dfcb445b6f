"""Exact LPIPS memorisation: phi embedding identity, and a copy run never matches its own input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset, random_lpips_file, run_json

from varbench.plan.demo_data import demo_image


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    return random_lpips_file(tmp_path_factory.mktemp("w"))


def test_phi_squared_distance_equals_lpips_forward(lpips_file):
    from varbench.encoders.lpips import LpipsEncoder
    from varbench.encoders.transforms import resize_shortest_center_crop

    net, path = lpips_file
    images = [demo_image(c, 10 + c) for c in range(5)]
    phi = LpipsEncoder(weights=str(path)).embed(images).astype(np.float64)

    def prep(im):
        x = resize_shortest_center_crop(im, 256).astype(np.float32)
        return torch.from_numpy(x).permute(2, 0, 1)[None] / 127.5 - 1.0

    for i in range(5):
        for j in range(i + 1, 5):
            with torch.no_grad():
                ref = float(net(prep(images[i]), prep(images[j])).item())
            ours = float(((phi[i] - phi[j]) ** 2).sum())
            # float32 forward vs float64 sum of float32 phi; measured 9.4e-8 at most
            assert ours == pytest.approx(ref, rel=1.5e-7)


def test_search_equals_lpips_forward_on_every_pair(lpips_file, monkeypatch, tmp_path):
    """Chunked search over a spilled file = argmin of lpips.LPIPS.forward over all pairs."""
    import varbench.metrics.memorisation as mem
    from varbench.encoders.lpips import LpipsEncoder
    from varbench.encoders.transforms import resize_shortest_center_crop

    net, path = lpips_file
    monkeypatch.setattr(mem, "REF_CHUNK", 3)  # several chunks and query blocks
    monkeypatch.setattr(mem, "QUERY_BLOCK", 4)
    monkeypatch.setattr(mem, "EMBED_CHUNK", 2)
    refs = [demo_image(c % 3, 20 + c) for c in range(8)]
    refs.append(refs[2].copy())  # a duplicate reference: ties resolve to the lowest index
    queries = [demo_image(c % 3, 40 + c) for c in range(5)] + [refs[2].copy(), refs[5].copy()]
    exclude = [np.zeros(0, np.int64)] * 5 + [np.array([2, 8]), np.zeros(0, np.int64)]
    enc = LpipsEncoder(weights=str(path))
    base = mem.RowFile(tmp_path / "phi.f32", enc.embed(refs[:1]).shape[1])
    mem.embed_all(enc, refs.__getitem__, len(refs), base)
    dist, idx = mem.search_images(enc, queries.__getitem__, len(queries), base, exclude)
    base.close()

    def t(im):
        x = resize_shortest_center_crop(im, 256).astype(np.float32)
        return torch.from_numpy(x).permute(2, 0, 1)[None] / 127.5 - 1.0

    brute = np.empty((len(queries), len(refs)))
    ref_t = torch.cat([t(r) for r in refs])
    with torch.no_grad():
        for i, q in enumerate(queries):  # every pair, one forward call per query
            brute[i] = net(t(q).expand(len(refs), -1, -1, -1), ref_t).view(-1).double().numpy()
    for i, ex in enumerate(exclude):
        brute[i, ex] = np.inf
    assert list(idx) == list(brute.argmin(axis=1))
    np.testing.assert_allclose(dist, brute.min(axis=1), rtol=1e-6, atol=1e-10)  # batched 0: 3e-13
    assert idx[6] == 5 and dist[6] == 0.0  # an identical reference is at exactly 0
    assert idx[5] not in (2, 8) and dist[5] > 0  # its excluded twins are skipped


def test_certified_recheck_picks_the_true_nearest_row():
    """Near-ties hidden under product cancellation are decided by direct differences."""
    from varbench.metrics.memorisation import nearest_excluding

    rng = np.random.default_rng(0)
    d = 4096
    centre = rng.normal(size=d) * 1e4  # |x|^2 ~ 4e11: product rounding ~1e-4, gaps ~1e-6
    base = centre + rng.normal(size=(40, d)) * 1e-5
    base[17] = base[3]  # exact tie: lowest index wins
    queries = centre + rng.normal(size=(6, d)) * 1e-5
    queries[0] = base[3] + 1e-7
    exclude = [np.zeros(0, np.int64)] * 5 + [np.array([3, 17])]
    dist, idx = nearest_excluding(queries, base, exclude)
    direct = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
    direct[5, [3, 17]] = np.inf
    assert list(idx) == list(direct.argmin(axis=1))
    np.testing.assert_allclose(dist, direct.min(axis=1), rtol=1e-12)
    assert idx[0] == 3
    approx = (queries**2).sum(1)[:, None] + (base**2).sum(1)[None] - 2 * queries @ base.T
    approx[5, [3, 17]] = np.inf
    assert list(approx.argmin(axis=1)) != list(idx)  # the plain product alone would be wrong


def test_copy_run_matches_its_own_conditioning_image_at_zero(lpips_file, tmp_path):
    """Copying what the model was shown: every copy is at exactly 0 from its own input."""
    _, path = lpips_file
    data = make_folder_dataset(tmp_path / "data", {f"class_{c}": 6 for c in "abc"})
    proto = tmp_path / "mem.toml"
    proto.write_text(
        'name = "mem"\nversion = 1\nlayout = "imagefolder"\nn_per_class = 3\nk = 1\nseed = 0\n'
        'resolution = 64\nencoder = "demo"\nprepare = "adm_center_crop"\n'
        'metrics = ["memorisation"]\n'
    )
    out = tmp_path / "runs"
    (row,) = run_json(
        "run", "--model", "copy", "--protocol", str(proto), "--data", str(data),
        "--out", str(out), "--weights", f"lpips={path}", "--device", "cpu",
    )  # fmt: skip
    assert row["memorisation_bruteforce_agreement"] == 1.0
    assert row["memorisation_frac_below_heldout_p1"] == 1.0
    (art_path,) = list(out.glob("*/points/*/artifacts/memorisation.json"))
    art = json.loads(art_path.read_text())
    index = json.loads((art_path.parent.parent / "index.json").read_text())
    assert len(art["samples_nn"]) == len(index) == 9
    assert all(d == 0.0 for d in art["samples_nn"])  # its own input is at exactly 0
    assert art["base"] == "conditioning images" and art["n_base"] == 3
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
    cond_hash = {
        c["conditioning"][0]: manifest["pixel_sha256"][c["conditioning"][0]]
        for c in manifest["classes"]
    }
    for entry, nn_ref in zip(index, art["samples_nn_reference"], strict=True):
        assert nn_ref == cond_hash[entry["cond"]]


def test_spill_on_a_full_disk_is_one_clear_error(tmp_path):
    """ENOSPC while spilling reference embeddings: DiskFullError naming the folder, rows intact."""
    import errno

    from varbench.errors import DiskFullError
    from varbench.metrics.memorisation import RowFile

    spill = tmp_path / "lpips-phi-x"
    spill.mkdir()
    rows = RowFile(spill / "refs.f32", 3)
    rows.append(np.arange(6, dtype=np.float32).reshape(2, 3))
    real_fh = rows._fh

    class Full:
        def __getattr__(self, name):
            return getattr(real_fh, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    rows._fh = Full()
    with pytest.raises(DiskFullError, match=str(tmp_path)):
        rows.append(np.ones((1, 3), np.float32))
    rows._fh = real_fh
    assert len(rows) == 2
    np.testing.assert_array_equal(rows[0:2], np.arange(6, dtype=np.float32).reshape(2, 3))
    rows.close()


def test_identical_pixels_are_at_exactly_zero_whatever_the_kernels(tmp_path):
    """Identity is decided by pixel hash: an encoder whose rows depend on the batch composition
    in their last bits (as batched kernels on another machine may) still gives exactly 0."""
    import varbench.metrics.memorisation as mem

    class BatchNoisyEncoder:
        device = "cpu"

        def embed(self, images):
            x = np.stack([np.asarray(im, np.float64).ravel()[:48] / 255.0 for im in images])
            return x * (1.0 + 1e-12 * len(images))  # last bits depend on the batch size

    refs = [demo_image(c % 3, 60 + c) for c in range(5)]
    queries = [refs[3].copy(), refs[1].copy(), demo_image(0, 99)]
    none = np.zeros(0, np.int64)
    exclude = [none, np.array([1]), none]  # query 1's twin is its own conditioning image
    base = mem.RowFile(tmp_path / "phi.f32", 48)
    mem.embed_all(BatchNoisyEncoder(), refs.__getitem__, len(refs), base)
    dist, idx = mem.search_images(BatchNoisyEncoder(), queries.__getitem__, 3, base, exclude)
    base.close()
    assert idx[0] == 3 and dist[0] == 0.0
    assert idx[1] != 1 and dist[1] > 0
    assert dist[2] > 0
    # the float path alone would not give 0 here
    plain, _ = mem.nearest_excluding(
        BatchNoisyEncoder().embed(queries[:1]), BatchNoisyEncoder().embed(refs), [none]
    )
    assert plain[0] > 0
