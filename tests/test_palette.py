"""RIVAL's palette distance against the Pylette versions it follows and scikit-learn's KMeans.

``palette_mode="rival"`` (default) against a transcription of Pylette's extraction as it stood
until February 2024 (PyPI 0.4 and the repository's 2022 "1.0.0": RGB, ``img.resize((256, 256))``,
``KMeans(n_clusters=10)`` with scikit-learn's default n_init=10 of the time; seeded here);
``palette_mode="pylette6"`` against the installed Pylette 6 package itself.
"""

from __future__ import annotations

import warnings
from itertools import permutations

import numpy as np
import pytest

from varbench.errors import UsageError
from varbench.metrics.palette import (
    PALETTE_MODES,
    palette,
    palette_distance,
    palette_match,
    pixels,
)


def _pylette(img: np.ndarray) -> np.ndarray:
    """Pylette's default 10-colour palette of an image, in [0, 1], most frequent first."""
    from pylette import extract_colors

    with warnings.catch_warnings():  # scikit-learn warns when an image has < 10 colours
        warnings.simplefilter("ignore")
        colours = extract_colors(img, palette_size=10).colors
    return np.array([c.rgb for c in colours]) / 255.0


def _pylette_2023(img: np.ndarray, size: int = 256) -> np.ndarray:
    """Pylette 0.4 / git 1.0.0 (2022) ``extract_colors(image, palette_size=10, sort_mode=None)``,
    transcribed (k_means_extraction), with ``random_state=2024`` added; in [0, 1]."""
    from PIL import Image
    from sklearn.cluster import KMeans

    im = Image.fromarray(img).convert("RGB")
    im = im.resize((size, size))  # Pillow's default filter, as Pylette called it
    w, h = im.size
    arr = np.reshape(np.asarray(im), (w * h, -1))
    with warnings.catch_warnings():  # fewer distinct colours than clusters
        warnings.simplefilter("ignore")
        model = KMeans(n_clusters=10, n_init=10, init="k-means++", random_state=2024)
        labels = model.fit_predict(arr)
    pal = np.array(model.cluster_centers_, dtype=int)
    count = np.bincount(labels)
    colours = [(tuple(c), f) for c, f in zip(pal, count / float(np.sum(count)), strict=False)]
    colours.sort(key=lambda cf: cf[1], reverse=True)  # Color.__lt__ compares freq
    return np.array([c for c, _ in colours]) / 255.0


def _blocks(colours, size=256, seed=0):
    """A size x size image of vertical bands of the given colours, band widths varied."""
    rng = np.random.default_rng(seed)
    w = rng.integers(10, 40, len(colours)).astype(float)
    edges = np.round(np.cumsum(w) / w.sum() * size).astype(int)
    img = np.zeros((size, size, 3), np.uint8)
    start = 0
    for c, e in zip(colours, edges, strict=True):
        img[:, start:e] = c
        start = e
    return img


def _natural(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A photo-like image: smooth colour gradients, a few soft-edged blobs, grain, not square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.empty((h, w, 3))
    for c in range(3):
        a, b = rng.uniform(-1, 1, 2)
        img[..., c] = 128 + rng.uniform(30, 100) * np.sin(2 * np.pi * (a * xx + b * yy) * 1.5)
    for _ in range(3):
        cy, cx = rng.uniform(0, 1, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.002, 0.03))[..., None]
        img = img * (1 - 0.7 * blob) + 0.7 * blob * rng.uniform(0, 255, 3)
    img += rng.normal(0, rng.uniform(3, 15), img.shape)  # sensor-like grain
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def test_palette_equals_pylette_on_natural_images():
    """Bit for bit, in Pylette's order (most frequent first), on gradients + blobs + grain."""
    refs = []
    for seed in (0, 1):
        img = _natural(seed)
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 5000  # not a few flat clusters
        refs.append(_pylette(img))
        np.testing.assert_array_equal(palette(img, mode="pylette6"), refs[-1])
    # the distance is the Hungarian L1 of Pylette's own palettes, in [0, 30]
    d = palette_distance(_natural(0), _natural(1), mode="pylette6")
    assert d == pytest.approx(palette_match(*refs), rel=1e-12)
    assert 0.0 < d <= 30.0


def test_kmeans_transcription_equals_scikit_learn_bit_for_bit():
    """Centres (floats, before Pylette's truncation) and labels equal scikit-learn's KMeans."""
    from sklearn.cluster import KMeans

    from varbench.metrics.kmeans import kmeans_sklearn

    px = pixels(_natural(7, 64, 64), mode="pylette6")
    ref = KMeans(n_clusters=10, init="k-means++", n_init="auto", random_state=2024).fit(px)
    centres, labels = kmeans_sklearn(px, 10, 2024)
    np.testing.assert_array_equal(centres, ref.cluster_centers_)
    np.testing.assert_array_equal(labels, ref.labels_)


@pytest.mark.parametrize("case", ["flat", "two_colours", "three_unequal", "one_pixel"])
def test_palette_equals_pylette_on_degenerate_images(case):
    """Fewer colours than 10 (Pylette drops clusters after the last used one), one pixel."""
    rng = np.random.default_rng(5)
    img = {
        "flat": np.full((16, 16, 3), 37, np.uint8),
        "two_colours": np.concatenate([np.zeros((8, 16, 3)), np.full((8, 16, 3), 200)]),
        "three_unequal": np.repeat(
            np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0]]), [10, 3, 13], axis=0
        )[:, None].repeat(26, 1),
        "one_pixel": rng.integers(0, 256, (1, 1, 3)),
    }[case].astype(np.uint8)
    np.testing.assert_array_equal(palette(img, mode="pylette6"), _pylette(img))
    np.testing.assert_array_equal(palette(img, size=64), _pylette_2023(img, 64))  # rival


def test_palette_distance_is_the_hungarian_l1_of_pylette_palettes():
    rng = np.random.default_rng(13)
    cols_a = rng.integers(0, 256, (10, 3))
    cols_b = rng.integers(0, 256, (10, 3))
    a, b = _blocks(cols_a, seed=1), _blocks(cols_b, seed=2)
    for img, cols in ((a, cols_a), (b, cols_b)):  # clear clusters: the palette is the colours
        assert sorted(map(tuple, palette(img, mode="pylette6"))) == sorted(map(tuple, cols / 255.0))
    # the Hungarian matching is the brute-force minimum over assignments (small case)
    pa, pb = palette(a, mode="pylette6")[:6], palette(b, mode="pylette6")[:6]
    brute = min(np.abs(pa - pb[list(p)]).sum() for p in permutations(range(6)))
    assert palette_match(pa, pb) == pytest.approx(brute, rel=1e-12)
    expected = palette_match(cols_a / 255.0, cols_b / 255.0)
    assert palette_distance(a, b, "pylette6") == pytest.approx(expected, rel=1e-12)
    assert palette_distance(a, a, "pylette6") == 0.0


def test_rival_mode_equals_pylette_2023_on_natural_images():
    """The default extraction (RGB, 10 restarts) bit for bit against the 2023-era transcription:
    photo-like images resized to 64 x 64 (2^12 pixels: exact means, as 2^16 at 256) for speed."""
    a, b = _natural(0), _natural(1)
    pa, pb = palette(a, size=64), palette(b, size=64)
    np.testing.assert_array_equal(pa, _pylette_2023(a, size=64))
    np.testing.assert_array_equal(pb, _pylette_2023(b, size=64))
    assert palette_match(pa, pb) == pytest.approx(
        palette_match(_pylette_2023(a, 64), _pylette_2023(b, 64)), rel=1e-12
    )
    assert pixels(a).shape == (256 * 256, 3) and pixels(a, mode="pylette6").shape[1] == 4


@pytest.mark.slow
def test_rival_mode_at_pylette_size():
    """At Pylette's 256 x 256 (the default): ten restarts on 65,536 pixels, ~10-20 s."""
    img = _natural(4, 40, 48)
    np.testing.assert_array_equal(palette(img), _pylette_2023(img))


def test_palette_mode_option_and_errors():
    from varbench.metrics import METRIC_OPTIONS

    (param,) = [p for p in METRIC_OPTIONS if p.name == "palette_mode"]
    assert param.choices == PALETTE_MODES and PALETTE_MODES[0] == "rival"
    with pytest.raises(UsageError, match="palette_mode"):
        palette(np.zeros((4, 4, 3), np.uint8), mode="pylette1")


def test_palette_metric_reads_palette_mode(monkeypatch):
    """The metric passes ``palette_mode`` to the extraction (default rival) and records it
    (extraction at 16 x 16 here for speed: the wiring is under test, not the k-means)."""
    from types import SimpleNamespace

    from varbench.metrics import palette as palette_mod

    seen = []

    def small(image, mode):
        seen.append(mode)
        return palette(image, size=16, mode=mode)

    monkeypatch.setattr(palette_mod, "palette", small)
    a, b = _natural(5, 24, 24), _natural(6, 24, 24)
    images = {"c": a, "f0": b, "f1": a}
    for options, mode in (({}, "rival"), ({"palette_mode": "pylette6"}, "pylette6")):
        ctx = SimpleNamespace(
            options=options,
            fake_cond_index=np.array([0, 0]),
            fake_hashes=["f0", "f1"],
            cond_hashes=["c"],
            image=images.__getitem__,
        )
        seen.clear()
        metric = palette_mod.PaletteMetric()
        out = metric.compute(ctx)
        assert seen == [mode] * 3 and metric.artifacts(ctx)["mode"] == mode
        ref = palette_match(small(b, mode), small(a, mode))
        assert out["palette_distance_mean"] == pytest.approx(ref / 2, rel=1e-12)
