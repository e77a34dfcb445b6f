"""Dataset layouts, full validation before generation, manifest selection and drift detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder_dataset, run_cli, run_json
from PIL import Image

from varbench.errors import DatasetError
from varbench.plan.datasets import list_dataset
from varbench.plan.manifest import build_manifest, select
from varbench.plan.protocol import load_protocol


def test_truncated_jpeg_and_short_class_fail_before_generation(tmp_path):
    data = make_folder_dataset(tmp_path / "data", {"cats": 5, "dogs": 2, "owls": 5}, fmt="JPEG")
    bad = data / "cats" / "img_001.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    (data / "owls" / "notes.txt").write_text("not an image")  # ignored, not an image extension
    out = tmp_path / "runs"
    proc = run_cli(
        "run",
        "--model",
        "copy",
        "--protocol",
        "folder_kshot",
        "--data",
        str(data),
        "--set",
        "n_per_class=4",
        "--out",
        str(out),
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert "img_001.jpg" in err and "truncated" in err
    assert "'dogs'" in err and "n_per_class=4" in err
    assert "2 problem(s)" in err  # both problems in one error
    assert not list(out.rglob("*.png"))


def test_missing_data_folder_is_clear(tmp_path):
    proc = run_cli(
        "run",
        "--model",
        "copy",
        "--protocol",
        "folder_kshot",
        "--data",
        str(tmp_path / "nope"),
        check=False,
    )
    assert (
        proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = run_cli("run", "--model", "copy", "--protocol", "imagenet_1shot", check=False)
    assert "--data" in proc.stderr


def test_sun397_layout_categories(tmp_path):
    root = tmp_path / "sun"
    for cat in ["a/abbey", "a/apartment_building/outdoor", "b/bedroom"]:
        d = root / "SUN397" / cat
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(d / f"sun_{i}.jpg")
    listing = list_dataset(root, "sun397")
    assert sorted(listing.classes) == ["a/abbey", "a/apartment_building/outdoor", "b/bedroom"]
    assert listing.labels["a/apartment_building/outdoor"] == "apartment building outdoor"
    assert all(len(v) == 3 for v in listing.classes.values())
    assert listing.classes["b/bedroom"][0] == "SUN397/b/bedroom/sun_0.jpg"


def test_selection_is_seeded_nested_and_order_free():
    files = tuple(f"c/{i:03d}.png" for i in range(30))
    r10, c1, held = select(files, "c", 10, 1, seed=0)
    r20, c2, _ = select(tuple(reversed(files)), "c", 20, 2, seed=0)
    assert len(set(r10)) == 10 and set(r10) <= set(r20)  # nested in n
    assert c1[0] in r10 and c1[0] == c2[0]  # nested in k
    assert set(held) == set(files) - set(r10)
    assert select(files, "c", 10, 1, seed=1)[0] != r10


def test_manifest_cli_and_hash_independent_of_location(tmp_path):
    data = make_folder_dataset(tmp_path / "a", {"x": 5, "y": 5})
    copy = shutil.copytree(data, tmp_path / "b")
    m1 = run_json(
        "manifest", "--protocol", "folder_kshot", "--data", str(data), "--set", "n_per_class=4"
    )
    m2 = run_json(
        "manifest", "--protocol", "folder_kshot", "--data", str(copy), "--set", "n_per_class=4"
    )
    assert m1["sha256"] == m2["sha256"] and m1["root"] != m2["root"]
    assert [len(c["references"]) for c in m1["classes"]] == [4, 4]
    assert all(len(c["conditioning"]) == 1 for c in m1["classes"])
    spec = load_protocol("folder_kshot").with_overrides({"n_per_class": "4"})
    m, _ = build_manifest(spec, list_dataset(data, "imagefolder"), None)
    assert m.sha256 == m1["sha256"]


def test_changed_dataset_is_an_error(tmp_path):
    data = make_folder_dataset(tmp_path / "data", {"x": 5, "y": 5})
    out = tmp_path / "runs"
    args = (
        "run",
        "--model",
        "copy",
        "--protocol",
        "folder_kshot",
        "--data",
        str(data),
        "--set",
        "n_per_class=4",
        "--out",
        str(out),
    )
    env = {"VARBENCH_WEIGHTS_DIR": ""}
    # inception weights are not available offline here, so use the demo encoder via a protocol file
    proto = tmp_path / "folder_demo.toml"
    text = (Path(__file__).parents[1] / "protocols" / "folder_kshot.toml").read_text()
    text = text.replace('encoder = "inception"', 'encoder = "demo"')
    text = text.replace('name = "folder_kshot"', 'name = "folder_demo"')
    lines = [
        'metrics = ["fid", "precision_recall"]' if ln.startswith("metrics") else ln
        for ln in text.splitlines()
    ]
    proto.write_text("\n".join(lines) + "\n")
    args = tuple(str(proto) if a == "folder_kshot" else a for a in args)
    first = run_json(*args, env=env)[0]
    assert first["precision"] == 1.0
    img = next((data / "x").glob("*.png"))
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)
    proc = run_cli(*args, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no longer matches" in proc.stderr and "Traceback" not in proc.stderr


def test_dataset_error_lists_every_problem(tmp_path):
    data = make_folder_dataset(tmp_path / "d", {"a": 1, "b": 1, "c": 3})
    spec = load_protocol("folder_kshot").with_overrides({"n_per_class": "3"})
    with pytest.raises(DatasetError) as exc:
        build_manifest(spec, list_dataset(data, "imagefolder"), None)
    assert len(exc.value.problems) == 2


def test_dataset_error_shows_the_first_problems_and_keeps_all():
    from varbench.errors import DatasetError

    err = DatasetError("/data", [f"class c{i} has 3 image(s)" for i in range(100)])
    text = str(err)
    assert "has 100 problem(s)" in text and "c39 has" in text and "c40 has" not in text
    assert text.endswith(f"... and {100 - DatasetError.SHOWN} more")
    assert len(err.problems) == 100
