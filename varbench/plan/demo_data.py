"""The embedded demo dataset: 10 procedurally drawn shape/texture classes, nothing downloaded.

Each image is a pure function of (class, seed): random pose, colour, scale and background, so
the oracle baseline can draw fresh images of a class and the dataset is identical everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from varbench.core.files import atomic_write_json, atomic_write_png
from varbench.core.hashing import derive_seed

DEMO_VERSION = 1
DEMO_SIZE = 64
DEMO_PER_CLASS = 20
DEMO_SEED = 1234
CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "stripes",
    "checker",
    "dots",
    "crescent",
)
_SS = 2  # supersampling factor for smooth edges


def _colour(rng: np.random.Generator, light: bool) -> tuple[int, int, int]:
    lo, hi = (150, 256) if light else (0, 110)
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * i / n),
            cy + r * math.sin(angle + 2 * math.pi * i / n),
        )
        for i, r in enumerate(radii)
    ]


def demo_image(class_index: int, seed: int) -> np.ndarray:
    """Draw one 64x64 RGB image of class ``class_index`` from ``seed``."""
    rng = np.random.default_rng(derive_seed("demo", class_index, seed))
    size = DEMO_SIZE * _SS
    light_bg = bool(rng.integers(0, 2))
    bg, fg = _colour(rng, light_bg), _colour(rng, not light_bg)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    r = rng.uniform(0.18, 0.32) * size
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASSES[class_index]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, [r * 1.2] * 4, angle), fill=fg)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, [r * 1.3] * 3, angle), fill=fg)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.3, r * 0.5] * 5, angle), fill=fg)
    elif name == "ring":
        w = r * rng.uniform(0.25, 0.45)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        draw.ellipse([cx - r + w, cy - r + w, cx + r - w, cy + r - w], fill=bg)
    elif name == "cross":
        w = r * 0.35
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon(
                [
                    (cx - dx * r * 1.3 + px, cy - dy * r * 1.3 + py),
                    (cx + dx * r * 1.3 + px, cy + dy * r * 1.3 + py),
                    (cx + dx * r * 1.3 - px, cy + dy * r * 1.3 - py),
                    (cx - dx * r * 1.3 - px, cy - dy * r * 1.3 - py),
                ],
                fill=fg,
            )
    elif name == "stripes":
        period = rng.uniform(8, 16) * _SS
        yy, xx = np.mgrid[0:size, 0:size]
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        mask = (phase % 1.0) < 0.5
        arr = np.where(mask[..., None], np.array(fg), np.array(bg)).astype(np.uint8)
        img = Image.fromarray(arr)
    elif name == "checker":
        cell = rng.uniform(8, 16) * _SS
        yy, xx = np.mgrid[0:size, 0:size]
        mask = ((xx // cell + yy // cell) % 2).astype(bool)
        arr = np.where(mask[..., None], np.array(fg), np.array(bg)).astype(np.uint8)
        img = Image.fromarray(arr)
    elif name == "dots":
        for _ in range(int(rng.integers(6, 14))):
            x, y = rng.uniform(0, size, size=2)
            d = rng.uniform(0.03, 0.07) * size
            draw.ellipse([x - d, y - d, x + d, y + d], fill=fg)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        ox, oy = cx + math.cos(angle) * r * 0.5, cy + math.sin(angle) * r * 0.5
        draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=bg)
    img = img.resize((DEMO_SIZE, DEMO_SIZE), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.uint8).copy()
    noise = rng.integers(-6, 7, size=arr.shape)  # sensor-like noise so no two images tie
    return np.clip(arr.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def demo_root(cache_dir: str | Path) -> Path:
    """Write the demo dataset under ``cache_dir`` once (atomically per file); return its root."""
    root = Path(cache_dir) / "demo" / f"v{DEMO_VERSION}"
    marker = root / ".complete.json"
    if marker.is_file():
        return root
    for ci, name in enumerate(CLASSES):
        for i in range(DEMO_PER_CLASS):
            path = root / name / f"{i:03d}.png"
            if not path.is_file():
                atomic_write_png(path, demo_image(ci, DEMO_SEED + i))
    atomic_write_json(marker, {"version": DEMO_VERSION, "per_class": DEMO_PER_CLASS})
    return root
