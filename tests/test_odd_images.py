"""Odd image files (issue 10): each kind is converted like torch-fidelity or rejected by name.

The reference loader is torch-fidelity's and clean-fid's ``Image.open(path).convert("RGB")``
(torch_fidelity/datasets.py ``ImagesPathDataset.__getitem__``, cleanfid/utils.py
``ResizeDataset.__getitem__``), computed here independently of varbench for every accepted file.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_json
from PIL import Image, ImageOps

from varbench.core.files import read_rgb
from varbench.core.hashing import pixel_sha256
from varbench.core.images import ImageRejected, read_dataset_image
from varbench.errors import DatasetError
from varbench.plan.datasets import list_dataset, validate_files
from varbench.plan.manifest import build_manifest
from varbench.plan.protocol import load_protocol

RNG = np.random.default_rng(10)
# the reference loader itself warns on these files; the warnings are the point of some tests
pytestmark = [
    pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


def reference(path: Path) -> np.ndarray:
    """torch-fidelity / clean-fid: ``Image.open(path).convert("RGB")`` as uint8 HxWx3."""
    return np.asarray(Image.open(path).convert("RGB"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, depth: int, colour: int, raw: bytes) -> Path:
    """A PNG written by hand (Pillow cannot write 48-bit RGB or lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return path


def rgb(h: int = 20, w: int = 24) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- files that are converted exactly like the references -------------------------------------


def make_cmyk_jpeg(d: Path) -> Path:
    arr = RNG.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(arr, mode="CMYK").save(d / "cmyk.jpg", quality=95)
    return d / "cmyk.jpg"


def make_palette_transparency(d: Path) -> Path:
    im = Image.fromarray(RNG.integers(0, 16, (20, 24), dtype=np.uint8), mode="P")
    im.putpalette(RNG.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
    im.save(d / "palette_trns.png", transparency=3)
    return d / "palette_trns.png"


def make_palette_alpha_table(d: Path) -> Path:
    im = Image.fromarray(RNG.integers(0, 16, (20, 24), dtype=np.uint8), mode="P")
    im.putpalette(RNG.integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
    im.save(d / "palette_alpha.png", transparency=bytes(range(0, 256, 16)))
    return d / "palette_alpha.png"


def make_gray(d: Path) -> Path:
    Image.fromarray(RNG.integers(0, 256, (20, 24), dtype=np.uint8), mode="L").save(d / "gray.png")
    return d / "gray.png"


def make_bilevel(d: Path) -> Path:
    Image.fromarray(RNG.integers(0, 2, (20, 24), dtype=np.uint8) * 255).convert("1").save(
        d / "bilevel.png"
    )
    return d / "bilevel.png"


def make_la(d: Path) -> Path:
    arr = RNG.integers(0, 256, (20, 24, 2), dtype=np.uint8)
    arr[:10, :, 1] = 0  # fully transparent rows keep their grey values
    Image.fromarray(arr, mode="LA").save(d / "gray_alpha.png")
    return d / "gray_alpha.png"


def make_rgba(d: Path) -> Path:
    arr = RNG.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    arr[:10, :, 3] = 0
    Image.fromarray(arr, mode="RGBA").save(d / "rgba.png")
    return d / "rgba.png"


def make_exif_rotated(d: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb(16, 32)).save(d / "exif_rot.jpg", exif=exif, quality=95)
    return d / "exif_rot.jpg"


def make_single_gif(d: Path) -> Path:
    Image.fromarray(rgb()).save(d / "single.gif")
    return d / "single.gif"


def make_mpo(d: Path) -> Path:
    first, second = Image.fromarray(rgb()), Image.fromarray(rgb())
    first.save(d / "multi_picture.jpg", format="MPO", save_all=True, append_images=[second])
    return d / "multi_picture.jpg"


def make_rgb48(d: Path) -> Path:
    arr = RNG.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(arr.shape[0]))
    return write_png(d / "rgb48.png", 10, 12, 16, 2, raw)


CONVERTED = {
    "cmyk_jpeg": make_cmyk_jpeg,
    "palette_transparency": make_palette_transparency,
    "palette_alpha_table": make_palette_alpha_table,
    "grayscale_L": make_gray,
    "bilevel_1": make_bilevel,
    "LA": make_la,
    "RGBA": make_rgba,
    "exif_rotated_jpeg": make_exif_rotated,
    "single_frame_gif": make_single_gif,
    "mpo_jpeg": make_mpo,
    "rgb48_png": make_rgb48,
}


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_converted_like_the_references(tmp_path, kind):
    path = CONVERTED[kind](tmp_path)
    expected = reference(path)
    got = read_dataset_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape and got.shape[2] == 3
    np.testing.assert_array_equal(got, expected)
    # the run-time loader (varbench.core.files.read_rgb) gives the same pixels for every accepted file
    np.testing.assert_array_equal(read_rgb(path), expected)


def test_exif_orientation_is_not_applied(tmp_path):
    path = make_exif_rotated(tmp_path)
    got = read_dataset_image(path)
    assert got.shape == (16, 32, 3)  # stored orientation, as torch-fidelity and clean-fid
    assert ImageOps.exif_transpose(Image.open(path)).size == (16, 32)  # displayed: 32 high


def test_alpha_is_dropped_not_composited(tmp_path):
    path = make_rgba(tmp_path)
    stored = np.asarray(Image.open(path))
    np.testing.assert_array_equal(read_dataset_image(path), stored[..., :3])


def test_rgb48_keeps_the_high_byte(tmp_path):
    path = make_rgb48(tmp_path)
    with Image.open(path) as im:
        assert im.mode == "RGB"  # Pillow reduces 48-bit RGB itself, unlike 16-bit grey
    raw = zlib.decompress(path.read_bytes()[33 + 8 : -12])
    rows = [raw[y * 61 + 1 : (y + 1) * 61] for y in range(12)]
    arr16 = np.frombuffer(b"".join(rows), dtype=">u2").reshape(12, 10, 3)
    np.testing.assert_array_equal(read_dataset_image(path), (arr16 >> 8).astype(np.uint8))


# --- files that are rejected, by name, with a fix ----------------------------------------------


def make_gray16(d: Path) -> Path:
    arr = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130).astype(np.uint16)
    Image.fromarray(arr).save(d / "gray16.png")
    assert Image.open(d / "gray16.png").mode == "I;16"
    return d / "gray16.png"


def make_float_tiff(d: Path) -> Path:
    Image.fromarray(RNG.random((20, 24), dtype=np.float32)).save(d / "float.tiff")
    return d / "float.tiff"


def _frames() -> list[Image.Image]:
    return [Image.fromarray(rgb()) for _ in range(3)]


def make_animated_gif(d: Path) -> Path:
    first, *rest = _frames()
    first.save(d / "animated.gif", save_all=True, append_images=rest)
    return d / "animated.gif"


def make_animated_webp(d: Path) -> Path:
    first, *rest = _frames()
    first.save(d / "animated.webp", save_all=True, append_images=rest, lossless=True)
    return d / "animated.webp"


def make_apng(d: Path) -> Path:
    first, *rest = _frames()
    first.save(d / "animated.png", save_all=True, append_images=rest)
    return d / "animated.png"


def make_bomb_warning_zone(d: Path) -> Path:
    # 10000^2 pixels: above MAX_IMAGE_PIXELS (Pillow only warns), below twice it (Pillow raises)
    return write_png(d / "bomb_warn.png", 10000, 10000, 1, 0, b"\0" * 64)


def make_bomb_error_zone(d: Path) -> Path:
    return write_png(d / "bomb_error.png", 20000, 20000, 1, 0, b"\0" * 64)


def make_empty(d: Path) -> Path:
    (d / "empty.jpg").write_bytes(b"")
    return d / "empty.jpg"


def make_self_loop(d: Path) -> Path:
    os.symlink("self_loop.png", d / "self_loop.png")
    return d / "self_loop.png"


def make_two_link_loop(d: Path) -> Path:
    os.symlink("loop_b.png", d / "loop_a.png")
    os.symlink("loop_a.png", d / "loop_b.png")
    return d / "loop_a.png"


def make_broken_link(d: Path) -> Path:
    os.symlink("gone.png", d / "broken.png")
    return d / "broken.png"


def make_fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.png")  # opening it would block forever
    return d / "pipe.png"


def make_not_an_image(d: Path) -> Path:
    (d / "notes.jpg").write_text("not an image at all")
    return d / "notes.jpg"


def make_truncated(d: Path) -> Path:
    Image.fromarray(rgb(64, 64)).save(d / "truncated.jpg", quality=95)
    data = (d / "truncated.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return d / "truncated.jpg"


def make_tiny(d: Path) -> Path:
    Image.fromarray(rgb(4, 30)).save(d / "tiny.png")
    return d / "tiny.png"


# kind -> (maker, words the problem line must contain besides the file name)
REJECTED = {
    "gray16_png": (make_gray16, ["16-bit", "I;16", "8 bits"]),
    "float_tiff": (make_float_tiff, ["32-bit float", "8 bits"]),
    "animated_gif": (make_animated_gif, ["multi-frame", "3 frames", "single-frame"]),
    "animated_webp": (make_animated_webp, ["multi-frame", "3 frames"]),
    "apng": (make_apng, ["multi-frame", "3 frames"]),
    "bomb_warning_zone": (make_bomb_warning_zone, ["too large", "MAX_IMAGE_PIXELS", "downscale"]),
    "bomb_error_zone": (make_bomb_error_zone, ["too large", "MAX_IMAGE_PIXELS", "downscale"]),
    "zero_bytes": (make_empty, ["empty file"]),
    "symlink_self_loop": (make_self_loop, ["symlink loop"]),
    "symlink_two_link_loop": (make_two_link_loop, ["symlink loop"]),
    "broken_symlink": (make_broken_link, ["broken symlink", "gone.png"]),
    "fifo": (make_fifo, ["not a regular file"]),
    "not_an_image": (make_not_an_image, ["not a decodable image"]),
    "truncated": (make_truncated, ["truncated"]),
    "too_small": (make_tiny, ["too small", "30x4"]),
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_rejected_with_file_and_fix(tmp_path, kind):
    maker, words = REJECTED[kind]
    path = maker(tmp_path)
    with pytest.raises(ImageRejected) as exc:
        read_dataset_image(path)
    message = str(exc.value)
    assert str(path) in message and "fix:" in message
    for word in words:
        assert word in message, message


def test_bomb_is_rejected_from_the_header_without_decoding(tmp_path, recwarn):
    # the IDAT holds 64 bytes for 10000 rows: decoding would fail as truncated, so a "too large"
    # message proves the file was rejected from its header alone
    path = make_bomb_warning_zone(tmp_path)
    with pytest.raises(ImageRejected, match="too large"):
        read_dataset_image(path)


def test_16_bit_would_clip_under_the_reference_loader(tmp_path):
    """Why 16-bit grey is rejected: convert("RGB") clips instead of scaling."""
    path = make_gray16(tmp_path)
    stored = np.asarray(Image.open(path)).astype(np.int64)
    np.testing.assert_array_equal(reference(path)[..., 0], np.minimum(stored, 255))
    assert (reference(path) == 255).mean() > 0.9


def test_permission_denied_as_non_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 files stay readable (simulated in the next test)")
    path = tmp_path / "locked.png"
    Image.fromarray(rgb()).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageRejected, match="permission denied") as exc:
            read_dataset_image(path)
        assert str(path) in str(exc.value)
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for c in "ab":
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rgb()).save(data / c / f"{i}.png")
    locked = data / "a" / "1.png"
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    report = validate_files(list_dataset(data, "imagefolder"), ["a/0.png", "a/1.png"], None)
    assert len(report.problems) == 1 and str(locked) in report.problems[0]
    assert "permission denied" in report.problems[0] and "chmod a+r" in report.problems[0]
    assert list(report.pixel_hashes) == ["a/0.png"]


def test_unlistable_class_folder_is_a_named_problem(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for c in "ab":
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rgb()).save(data / c / f"{i}.png")
    real_scandir = os.scandir

    def guarded_scandir(path="."):
        if os.fspath(path) == os.fspath(data / "b"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    listing = list_dataset(data, "imagefolder")
    spec = load_protocol("folder_kshot").with_overrides({"n_per_class": "2"})
    with pytest.raises(DatasetError) as exc:
        build_manifest(spec, listing, None)
    text = str(exc.value)
    assert f"permission denied listing folder {data / 'b'}" in text and "chmod a+rx" in text


def test_sun397_folder_link_cycle_does_not_hang(tmp_path):
    d = tmp_path / "sun" / "SUN397" / "a" / "abbey"
    d.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rgb()).save(d / f"sun_{i}.jpg")
    os.symlink("..", d / "up")  # a folder link back to an ancestor
    os.symlink("self_dir", d / "self_dir")  # a link to itself
    listing = list_dataset(tmp_path / "sun", "sun397")
    assert listing.classes == {"a/abbey": ("SUN397/a/abbey/sun_0.jpg", "SUN397/a/abbey/sun_1.jpg")}
    assert any("symlink loop" in p and str(d / "up") in p for p in listing.problems)


# --- the whole flow: one DatasetError before anything is generated -----------------------------


def odd_dataset(root: Path, rejected: bool = True) -> tuple[Path, list[Path], list[Path]]:
    """Class folders with every converted kind, and (optionally) every rejected kind."""
    good, bad = [], []
    for i, kind in enumerate(sorted(CONVERTED)):
        d = root / f"class_{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        good.append(CONVERTED[kind](d))
    if rejected:
        for i, kind in enumerate(sorted(REJECTED)):
            d = root / f"class_{i % 3}"
            bad.append(REJECTED[kind][0](d))
            if kind == "symlink_two_link_loop":
                bad.append(d / "loop_b.png")  # the other half of the loop is listed too
    return root, good, bad


def test_manifest_collects_every_problem(tmp_path):
    data, good, bad = odd_dataset(tmp_path / "data")
    spec = load_protocol("folder_kshot").with_overrides({"n_per_class": "3"})
    with pytest.raises(DatasetError) as exc:
        build_manifest(spec, list_dataset(data, "imagefolder"), tmp_path / "cache")
    problems = exc.value.problems
    assert len(problems) == len(bad)
    for path in bad:
        assert sum(str(path.relative_to(data)) in p for p in problems) == 1, path
    assert all("fix:" in p for p in problems)
    # accepted files are validated with the reference pixels
    listing = list_dataset(data, "imagefolder")
    report = validate_files(listing, [p.relative_to(data).as_posix() for p in good], None)
    assert report.problems == []
    for p in good:
        assert report.pixel_hashes[p.relative_to(data).as_posix()] == pixel_sha256(reference(p))


def test_cli_run_fails_once_before_generation(tmp_path):
    data, _, bad = odd_dataset(tmp_path / "data")
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
        "n_per_class=2",
        "--out",
        str(out),
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"{len(bad)} problem(s)" in err and "nothing was generated" in err
    for path in bad:
        assert path.name in err, path.name
    assert not list(out.rglob("*.png"))


def test_cli_manifest_accepts_converted_kinds(tmp_path):
    data, good, _ = odd_dataset(tmp_path / "data", rejected=False)
    manifest = run_json(
        "manifest", "--protocol", "folder_kshot", "--data", str(data), "--set", "n_per_class=3"
    )
    by_rel = {p.relative_to(data).as_posix(): p for p in good}
    assert manifest["pixel_sha256"]
    for rel, digest in manifest["pixel_sha256"].items():
        assert digest == pixel_sha256(reference(by_rel[rel]))


def test_cli_run_on_converted_kinds_completes(tmp_path):
    """A run over only odd-but-accepted files finishes, and copies carry the reference pixels."""
    data, _, _ = odd_dataset(tmp_path / "data", rejected=False)
    # the demo encoder needs no weights (inception's are not available offline here)
    text = (Path(__file__).parents[1] / "protocols" / "folder_kshot.toml").read_text()
    text = text.replace('encoder = "inception"', 'encoder = "demo"')
    text = text.replace('name = "folder_kshot"', 'name = "folder_odd"')
    lines = [
        'metrics = ["fid", "precision_recall"]' if ln.startswith("metrics") else ln
        for ln in text.splitlines()
    ]
    proto = tmp_path / "folder_odd.toml"
    proto.write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    rows = run_json(
        "run",
        "--model",
        "copy",
        "--protocol",
        str(proto),
        "--data",
        str(data),
        "--set",
        "n_per_class=3",
        "--set",
        "resolution=64",
        "--out",
        str(out),
    )
    assert rows[0]["n_samples"] == 9 and rows[0]["precision"] == 1.0
    (run,) = [p.parent for p in out.rglob("manifest.json")]
    manifest = json.loads((run / "manifest.json").read_text())
    conditioning = {
        pixel_sha256(reference(data / c["conditioning"][0])) for c in manifest["classes"]
    }
    samples = {
        pixel_sha256(np.asarray(Image.open(p))) for p in run.rglob("*.png") if "samples" in p.parts
    }
    assert samples == conditioning and len(conditioning) == 3


def test_sun397_links_between_folders_loop_or_not(tmp_path):
    """Two folders linking into each other is a loop; two links to one folder are not."""
    root = tmp_path / "sun" / "SUN397"
    for cat in ["a/abbey", "a/arch", "b/barn"]:
        (root / cat).mkdir(parents=True)
        Image.fromarray(rgb()).save(root / cat / "sun_0.jpg")
    os.symlink("../arch", root / "a/abbey/to_arch")  # a/arch/... reachable twice: no loop
    os.symlink("../abbey", root / "a/arch/to_abbey")  # abbey -> arch -> abbey: loop
    listing = list_dataset(tmp_path / "sun", "sun397")
    assert "a/abbey/to_arch" in listing.classes  # the linked folder is followed
    loops = [p for p in listing.problems if "symlink loop" in p]
    assert loops and all("to_abbey" in p or "to_arch" in p for p in loops)
    assert not any("b/barn" in p for p in listing.problems)


def test_metrics_on_folders_uses_the_same_policy(tmp_path):
    """`varbench metrics`: rejected files listed in one error before any encoding; converted
    kinds are scored as their reference-loader pixels."""
    real, fake = tmp_path / "real", tmp_path / "fake"
    for d, offset in ((real, 0), (fake, 50)):
        d.mkdir()
        for i in range(6):
            Image.fromarray(RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                d / f"{offset + i:03d}.png"
            )
    make_cmyk_jpeg(fake)
    make_palette_transparency(fake)
    args = ["metrics", "--real", str(real), "--fake", str(fake), "--metrics", "fid"]
    args += ["--encoder", "demo"]
    ok = run_json(*args)
    assert np.isfinite(ok["fid"])
    bad = [make_empty(fake), make_gray16(fake)]
    proc = run_cli(*args, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nothing was scored" in proc.stderr
    for path in bad:
        assert str(path) in proc.stderr
