"""Corrupt state is detected, not trusted: feature cache chunks, pickled weights, result files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_inception_file, run_cli, run_json
from PIL import Image

from varbench.plan.demo_data import demo_image


class _Payload:
    """Unpickling this runs ``touch <marker>``: the code a weights file must never get to run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_weights(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(2), "extra": _Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for name, offset in (("real", 0), ("fake", 500)):
        (root / name).mkdir()
        for i in range(6):
            Image.fromarray(demo_image(i % 10, offset + i)).save(root / name / f"{i:02d}.png")
    return root / "real", root / "fake"


def test_payload_is_live(tmp_path):
    """The payload really runs when unpickled freely, so a missing marker below means refused."""
    marker = tmp_path / "ran"
    evil = _evil_weights(tmp_path / "evil.pth", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_pickled_weights_refused_through_cli(tmp_path, image_folders):
    real, fake = image_folders
    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / "evil.pth", marker)
    proc = run_cli(
        "metrics",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--metrics",
        "fid",
        "--weights",
        f"inception={evil}",
        check=False,
    )
    assert proc.returncode != 0
    assert str(evil) in proc.stderr
    assert "safetensors" in proc.stderr and "save_file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_run_refuses_pickled_weights_before_generating(tmp_path):
    """`varbench run` checks the weights file before any sample is made (no wasted hours)."""
    protocol = tmp_path / "demo_inception.toml"
    protocol.write_text(
        'name = "demo_inception"\nversion = 1\ndescription = "demo scored with Inception"\n'
        'layout = "demo"\nn_classes = 10\nn_per_class = 10\nk = 1\nseed = 0\n'
        'resolution = 64\nencoder = "inception"\nmetrics = ["fid"]\n'
    )
    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / "evil.pth", marker)
    out = tmp_path / "runs"
    proc = run_cli(
        "run", "--model", "copy", "--protocol", str(protocol), "--out", str(out),
        "--weights", f"inception={evil}", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(evil) in proc.stderr and "safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not list(out.rglob("*.png"))


def test_damaged_weights_file_named_without_traceback(tmp_path, image_folders):
    from varbench.encoders.inception import InceptionEncoder
    from varbench.encoders.weights import UnsafeWeightsError

    real, fake = image_folders
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:600])
    proc = run_cli(
        "metrics", "--real", str(real), "--fake", str(fake), "--metrics", "fid",
        "--weights", f"inception={truncated}", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "cannot be read as weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    for bad in (garbage, good):  # random bytes; a valid file that is not an Inception
        with pytest.raises(UnsafeWeightsError, match="cannot be read as weights") as info:
            InceptionEncoder(weights=str(bad)).network()
        assert str(bad) in str(info.value)


def test_converted_safetensors_gives_the_same_features(tmp_path, image_folders):
    """The advice works: a state dict saved with safetensors encodes exactly like the .pth."""
    from safetensors.torch import save_file

    from varbench.encoders.inception import InceptionEncoder

    real, fake = image_folders
    images = [
        np.array(Image.open(p).convert("RGB")) for d in (real, fake) for p in sorted(d.iterdir())
    ]
    pth = random_inception_file(tmp_path / "inception.pth", images)
    st = tmp_path / "inception.safetensors"
    save_file(torch.load(pth, weights_only=True), str(st))
    a = InceptionEncoder(weights=str(pth)).encode_many(images, ["features", "logits"])
    b = InceptionEncoder(weights=str(st)).encode_many(images, ["features", "logits"])
    for out in ("features", "logits"):
        assert np.abs(a[out]).max() > 0
        np.testing.assert_array_equal(a[out], b[out])


@pytest.mark.parametrize("name", ["lpips", "dinov2", "clip"])
def test_other_encoders_refuse_pickled_weights(tmp_path, name):
    """LPIPS (our own loader), DINOv2 (timm) and CLIP (open_clip) give the same error."""
    from varbench.encoders import encoder_registry
    from varbench.encoders.weights import UnsafeWeightsError

    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / f"{name}-evil.pth", marker)
    encoder = encoder_registry.get(name)(weights=str(evil))
    with pytest.raises(UnsafeWeightsError, match="safetensors") as info:
        encoder.network()
    assert str(evil) in str(info.value)
    assert not marker.exists()


def test_adapter_weights_loader_refuses_pickled_and_damaged_files(tmp_path):
    """IP-Adapter's weights loader: pickled code and a damaged safetensors file, one error each."""
    from varbench.encoders.weights import UnsafeWeightsError
    from varbench_adapters.hf import load_safetensors_or_torch

    marker = tmp_path / "pwned"
    evil = _evil_weights(tmp_path / "ip-adapter.bin", marker)
    with pytest.raises(UnsafeWeightsError, match="safetensors") as info:
        load_safetensors_or_torch(evil)
    assert str(evil) in str(info.value) and "pickled" in str(info.value)
    assert not marker.exists()
    broken = tmp_path / "ip-adapter.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UnsafeWeightsError, match="damaged") as info:
        load_safetensors_or_torch(broken)
    assert str(broken) in str(info.value)


# --- feature cache --------------------------------------------------------------------------

SCORE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "n_samples", "n_real")


def _member_data_offset(path: Path, member: str) -> tuple[int, int]:
    """(offset, size) of a stored zip member's bytes: local header + name + extra field."""
    import struct
    import zipfile

    info = zipfile.ZipFile(path).getinfo(member)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip_middle_of_features(path: Path) -> None:
    start, size = _member_data_offset(path, "features.npy")
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x10  # inside the float payload (the .npy header is ~128 bytes)
    path.write_bytes(bytes(raw))


def _damage_all_ways(chunks: list[Path]) -> dict[Path, str]:
    """Truncated, garbage bytes, one flipped payload byte, mismatched lengths; -> expected reason."""
    assert len(chunks) >= 4, chunks
    raw = chunks[0].read_bytes()
    chunks[0].write_bytes(raw[: len(raw) // 2])
    chunks[1].write_bytes(np.random.default_rng(1).bytes(len(chunks[1].read_bytes())))
    _flip_middle_of_features(chunks[2])
    with np.load(chunks[3]) as data:
        hashes, feats = data["hashes"], data["features"]
    with open(chunks[3], "wb") as f:
        np.savez(f, hashes=hashes, features=feats[:-1])
    return {
        chunks[0]: "not a zip file",
        chunks[1]: "not a zip file",
        chunks[2]: "CRC-32",
        chunks[3]: "hashes but features of shape",
    }


def test_damaged_feature_chunks_are_recomputed_to_identical_numbers(tmp_path):
    from varbench.score.features import read_chunk

    env = {"VARBENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "500"}
    clean = run_json(
        "run",
        "--model",
        "oracle",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path / "a"),
        env=env,
    )[0]
    chunks = sorted((tmp_path / "cache" / "features").glob("demo-*/features/*.npz"))
    expected = _damage_all_ways(chunks)
    proc = run_cli(
        "run",
        "--model",
        "oracle",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path / "b"),
        env=env,
    )
    again = json.loads(proc.stdout)[0]
    for key in SCORE_KEYS:
        assert again[key] == clean[key], key
    warnings = [ln for ln in proc.stderr.splitlines() if "feature cache chunk" in ln]
    for chunk, reason in expected.items():
        line = next(ln for ln in warnings if str(chunk) in ln)
        assert reason in line and "recomputed" in line
    assert "Traceback" not in proc.stderr
    # the damaged chunks were rewritten and are whole again
    now = sorted((tmp_path / "cache" / "features").glob("demo-*/features/*.npz"))
    assert now == chunks
    for chunk in now:
        assert read_chunk(chunk)


def _good_chunk(folder: Path, n: int = 5, dim: int = 7) -> tuple[Path, list[str], np.ndarray]:
    from varbench.core.hashing import sha256_json

    hashes = sorted(f"{i:064x}" for i in range(n))
    feats = np.random.default_rng(0).normal(size=(n, dim))
    path = folder / f"{sha256_json(hashes)[:24]}.npz"
    with open(path, "wb") as f:
        np.savez(f, hashes=np.array(hashes), features=feats)
    return path, hashes, feats


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "BadZipFile"),
        ("garbage", "BadZipFile"),
        ("flip", "CRC-32"),
        ("length", "hashes but features of shape"),
        ("int_dtype", "not floating point"),
        ("complex_dtype", "not floating point"),
        ("nan", "non-finite"),
        ("hash_2d", "hashes have dtype"),
        ("renamed", "file name does not match"),
        ("no_features", "KeyError"),
    ],
)
def test_read_chunk_rejects(tmp_path, damage, reason):
    from varbench.score.features import CorruptChunkError, read_chunk

    path, hashes, feats = _good_chunk(tmp_path)
    rows = read_chunk(path)
    assert list(rows) == hashes and np.array_equal(np.stack(list(rows.values())), feats)
    raw = path.read_bytes()
    arrays = {"hashes": np.array(hashes), "features": feats}
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) - 100])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(2).bytes(len(raw)))
    elif damage == "flip":
        _flip_middle_of_features(path)
    elif damage == "renamed":
        path = path.rename(path.with_name("0" * 24 + ".npz"))
    else:
        arrays = {
            "length": {**arrays, "features": feats[:-1]},
            "int_dtype": {**arrays, "features": (feats * 100).astype(np.int64)},
            "complex_dtype": {**arrays, "features": feats.astype(np.complex128)},
            "nan": {**arrays, "features": np.where(feats > 1, np.nan, feats)},
            "hash_2d": {**arrays, "hashes": np.array(hashes).reshape(1, -1)},
            "no_features": {"hashes": arrays["hashes"]},
        }[damage]
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with pytest.raises(CorruptChunkError, match=reason):
        read_chunk(path)


def test_cache_drops_chunk_of_other_width_and_recomputes(tmp_path, caplog):
    """A readable chunk whose rows disagree in shape with the rest is deleted and re-encoded."""
    from varbench.encoders.demo import DemoEncoder
    from varbench.score.features import FeatureCache

    images = {f"{i:064x}": demo_image(i % 10, i) for i in range(6)}
    cache = FeatureCache(tmp_path, DemoEncoder())
    first = cache.features(list(images), images.__getitem__)
    direct = DemoEncoder().encode([cache.prep(im) for im in images.values()])
    np.testing.assert_array_equal(first, direct)
    (chunk,) = cache.root.glob("*.npz")
    with np.load(chunk) as data:
        hashes = data["hashes"]
    # a second, self-consistent chunk for the same images but 3-d rows (e.g. another encoder's)
    from varbench.core.hashing import sha256_json

    odd = cache.root / f"{sha256_json([str(h) for h in hashes[:2]])[:24]}.npz"
    with open(odd, "wb") as f:
        np.savez(f, hashes=hashes[:2], features=np.zeros((2, 3)))
    again = FeatureCache(tmp_path, DemoEncoder())
    with caplog.at_level("WARNING"):
        out = again.features(list(images), images.__getitem__)
    np.testing.assert_array_equal(out, direct)
    assert str(odd) in caplog.text and not odd.exists()


# --- result files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """One finished demo run (copy model): its folder and its rows read straight with pyarrow."""
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("demo") / "runs"
    run_json("run", "--model", "copy", "--protocol", "demo_1shot", "--out", str(out))
    rows = pq.read_table(next(out.glob("*/results.parquet"))).to_pylist()
    return out, rows


def _copy_runs(src: Path, dst: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(src, dst)
    return dst, next(dst.glob("*/results.parquet"))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).bytes(max(len(path.read_bytes()), 64)))


WIDE = {"COLUMNS": "500"}


@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_leaderboard_falls_back_to_point_results(tmp_path, demo_runs, damage):
    runs, parquet = _copy_runs(demo_runs[0], tmp_path / "runs")
    damage(parquet)
    proc = run_cli(
        "leaderboard", "--runs", str(runs), "--format", "json", "--no-published", env=WIDE
    )
    assert "Traceback" not in proc.stderr
    assert str(parquet) in proc.stderr and "result.json" in proc.stderr
    (row,) = json.loads(proc.stdout)
    (clean,) = demo_runs[1]
    for key in ("model", "protocol", "params", *SCORE_KEYS, "fid_lo", "recall_hi"):
        assert row[key] == clean[key], key


def test_leaderboard_skips_damaged_run_without_point_results(tmp_path, demo_runs):
    runs, parquet = _copy_runs(demo_runs[0], tmp_path / "runs")
    damage_json = next(runs.glob("*/points/*/result.json"))
    damage_json.write_bytes(b'{"model": "copy", "fid": 1.')  # cut mid-write
    _garbage(parquet)
    proc = run_cli(
        "leaderboard", "--runs", str(runs), "--format", "json", "--no-published", env=WIDE
    )
    assert "Traceback" not in proc.stderr
    assert str(parquet) in proc.stderr and str(damage_json) in proc.stderr
    assert json.loads(proc.stdout) == []


def test_check_names_damaged_baseline_and_uses_point_results(tmp_path, demo_runs):
    runs, parquet = _copy_runs(demo_runs[0], tmp_path / "runs")
    baseline = tmp_path / "baseline.parquet"
    baseline.write_bytes(parquet.read_bytes())
    # measured side damaged: checked from the points' result.json rows, against the intact copy
    _truncate(parquet)
    proc = run_cli("check", "--runs", str(runs), "--baseline", str(baseline), env=WIDE)
    assert str(parquet) in proc.stderr and "Traceback" not in proc.stderr
    assert {f["metric"] for f in json.loads(proc.stdout)} == {"fid", "kid", "precision", "recall"}
    # a damaged baseline file with nothing to fall back to is an error naming it, never a pass
    _garbage(baseline)
    proc = run_cli("check", "--runs", str(runs), "--baseline", str(baseline), check=False, env=WIDE)
    assert proc.returncode == 2
    assert str(baseline) in proc.stderr and "damaged" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_reader_uses_point_results(tmp_path, demo_runs, caplog):
    from varbench.runs.views import load_runs

    runs, parquet = _copy_runs(demo_runs[0], tmp_path / "runs")
    _garbage(parquet)
    with caplog.at_level("WARNING"):
        (run,) = load_runs(runs)
    assert str(parquet) in caplog.text
    (clean,) = demo_runs[1]
    assert [r["fid"] for r in run.rows] == [clean["fid"]]
    assert run.points and run.points[0].index  # sample index still found


def test_flipped_byte_in_results_parquet_is_detected(tmp_path, demo_runs):
    """Every single-bit flip either leaves the rows unchanged or is reported (content hash)."""
    from varbench.runs.results import DamagedResultsError, read_results

    _, parquet = _copy_runs(demo_runs[0], tmp_path / "runs")
    clean = read_results(parquet)
    raw = parquet.read_bytes()
    detected = 0
    for pos in range(4, len(raw) - 8, 97):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        parquet.write_bytes(bytes(flipped))
        try:
            got = read_results(parquet)
        except DamagedResultsError as exc:
            assert str(parquet) in str(exc)
            detected += 1
            continue
        assert got.equals(clean), pos
    assert detected > 0
