"""The study's images: every candidate stored at one size and one format, each image once.

Candidates are centre-cropped to a square and resized to ``px`` x ``px`` whatever the run's
resolution, and all images use one format, so neither size nor compression tells a rater which
system made an image. Attention checks use a heavily corrupted copy of a sample.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from varbench.errors import UsageError

FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
JPEG_QUALITY = 92


def corrupt(image: Image.Image, seed: int) -> Image.Image:
    """A heavily corrupted copy: 4x4 tiles shuffled, colours inverted, strong noise."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    rng = np.random.default_rng(seed)
    h, w = arr.shape[0] // 4 * 4, arr.shape[1] // 4 * 4
    tiles = [
        arr[i : i + h // 4, j : j + w // 4]
        for i in range(0, h, h // 4)
        for j in range(0, w, w // 4)
    ]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[r * 4 + c]] for c in range(4)], axis=1) for r in range(4)]
    out = 255.0 - np.concatenate(rows, axis=0)
    out += rng.normal(0, 90, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def square(image: Image.Image, px: int) -> Image.Image:
    """Centre crop to a square, then resize to ``px`` x ``px`` (Lanczos)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if image.size == (px, px) else image.resize((px, px), Image.LANCZOS)


class ImageStore:
    """Images written into the study's ``images`` table at one size and format."""

    def __init__(self, con: sqlite3.Connection, px: int, fmt: str = "jpeg"):
        if fmt not in FORMATS:
            raise UsageError(f"--image-format {fmt}: expected {' or '.join(FORMATS)}")
        self.con, self.px, self.fmt = con, px, fmt
        self._ids: dict[tuple[str, int, bool], int] = {}
        self.sizes: dict[str, set[tuple[int, int]]] = defaultdict(set)  # system -> sizes seen

    def _put(self, image: Image.Image) -> int:
        buf = io.BytesIO()
        pil_format, mime = FORMATS[self.fmt]
        extra = {"quality": JPEG_QUALITY} if pil_format == "JPEG" else {}
        image.convert("RGB").save(buf, format=pil_format, **extra)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        row = self.con.execute("SELECT id FROM images WHERE sha256 = ?", (digest,)).fetchone()
        if row:
            return int(row[0])
        return int(
            self.con.execute(
                "INSERT INTO images (sha256, mime, data) VALUES (?, ?, ?)", (digest, mime, data)
            ).lastrowid
        )

    def _open(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{path}: cannot read this image ({exc}); re-run the run that made it"
            ) from None

    def candidate(self, path: Path, system: str, corrupt_seed: int = -1) -> int:
        """Id of the stored candidate ``path`` (corrupted with ``corrupt_seed`` when >= 0)."""
        key = (str(path), corrupt_seed, True)
        if key not in self._ids:
            image = self._open(path)
            self.sizes[system].add(image.size)
            image = square(image, self.px)
            self._ids[key] = self._put(corrupt(image, corrupt_seed) if corrupt_seed >= 0 else image)
        return self._ids[key]

    def conditioning(self, path: Path) -> int:
        """Id of the stored conditioning image (aspect kept, longest side ``px``)."""
        key = (str(path), -1, False)
        if key not in self._ids:
            image = self._open(path)
            scale = self.px / max(image.size)
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            self._ids[key] = self._put(image.resize(size, Image.LANCZOS))
        return self._ids[key]

    def size_warning(self) -> str | None:
        """A warning naming each system's sizes when they differ, else None."""
        seen = {s: sorted(v) for s, v in self.sizes.items()}
        if len({tuple(v) for v in seen.values()}) <= 1 and all(len(v) <= 1 for v in seen.values()):
            return None
        found = "; ".join(f"{s}: {', '.join(f'{w}x{h}' for w, h in v)}" for s, v in seen.items())
        return (f"the systems' samples differ in size ({found}); every candidate is stored at "
                f"{self.px}x{self.px} {self.fmt.upper()} so size and compression do not tell "
                "them apart")  # fmt: skip
