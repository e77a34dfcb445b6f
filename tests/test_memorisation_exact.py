"""Exact LPIPS memorisation: phi embedding identity, and a copy run never matches its own input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset, run_json

from varbench.demo_data import demo_image


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    import lpips

    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    path = tmp_path_factory.mktemp("w") / "lpips.pth"
    torch.save(net.state_dict(), path)
    return net, path


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
            assert ours == pytest.approx(ref, rel=1.5e-6)  # float32 forward vs float64 sum


def test_copy_run_never_matches_its_own_conditioning_image(lpips_file, tmp_path):
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
    (art_path,) = list(out.glob("*/points/*/artifacts/memorisation.json"))
    art = json.loads(art_path.read_text())
    index = json.loads((art_path.parent.parent / "index.json").read_text())
    assert len(art["samples_nn"]) == len(index) == 9
    assert all(d > 0 for d in art["samples_nn"])  # its own input is excluded
    assert art["excluded_own_conditioning"] == 9
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
    cond_hash = {
        c["conditioning"][0]: manifest["pixel_sha256"][c["conditioning"][0]]
        for c in manifest["classes"]
    }
    for entry, nn_ref in zip(index, art["samples_nn_reference"], strict=True):
        assert nn_ref != cond_hash[entry["cond"]]
