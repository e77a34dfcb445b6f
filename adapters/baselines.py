"""Weight-free baselines that bracket every real model: copy, augment, oracle and blend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from varbench.adapter import DEMO_CLASSES as CLASSES
from varbench.adapter import (
    Adapter,
    Param,
    Request,
    demo_image,
    derive_seed,
    read_rgb,
    sha256_text,
)
from varbench.errors import UsageError


class CopyAdapter(Adapter):
    """Returns the conditioning image unchanged: perfect fidelity, no diversity."""

    name = "copy"
    description = "returns the conditioning image (pixels unchanged, whatever the resolution)"

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        return [[r.cond_image.copy() for _ in r.sample_indices] for r in requests]


def _augment(image: np.ndarray, seed: int, size: int, strength: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    area = h * w * rng.uniform(1.0 - 0.65 * strength, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(round(min(w, np.sqrt(area * ratio))))
    ch = int(round(min(h, np.sqrt(area / ratio))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    im = Image.fromarray(image).crop((x0, y0, x0 + cw, y0 + ch))
    im = im.resize((size, size), Image.Resampling.BICUBIC)
    if rng.uniform() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhancer(im).enhance(float(rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)))
    arr = np.asarray(im.convert("HSV"), dtype=np.int16).copy()
    arr[..., 0] = (arr[..., 0] + int(rng.integers(-12, 13) * strength)) % 256
    return np.asarray(Image.fromarray(arr.astype(np.uint8), mode="HSV").convert("RGB"))


class AugmentAdapter(Adapter):
    """Random resized crop, flip and colour jitter of the conditioning image, seeded per sample."""

    name = "augment"
    description = "random resized crop + flip + colour jitter of the conditioning image"
    params = (
        Param("strength", float, 1.0, "augmentation strength in [0, 1]"),
        Param("resolution", int, 0, "output size in pixels (0: the protocol's resolution)"),
    )

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        size = int(self.options.get("resolution") or 0)
        strength = float(self.options.get("strength", 1.0))
        return [
            [_augment(r.cond_image, seed, size or r.resolution, strength) for seed in r.seeds]
            for r in requests
        ]


class OracleAdapter(Adapter):
    """Real images of the same class outside the reference set (demo: fresh generator draws)."""

    name = "oracle"
    description = "real same-class images outside the references (demo: fresh draws)"

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        ctx = self.context
        out = []
        for r in requests:
            if ctx.protocol.layout == "demo":
                ci = CLASSES.index(r.class_name)
                out.append([demo_image(ci, seed) for seed in r.seeds])
                continue
            cls = next(c for c in ctx.manifest.classes if c.name == r.class_name)
            if not cls.heldout:
                raise RuntimeError(
                    f"oracle: class {cls.name!r} has no images outside its references; "
                    "the oracle needs more than n_per_class images per class"
                )
            pool = sorted(
                cls.heldout,
                key=lambda f: sha256_text(f"{ctx.protocol.seed}\x1foracle\x1f{cls.name}\x1f{f}"),
            )
            rank = cls.conditioning.index(r.cond_id)
            per = ctx.protocol.samples_per_cond
            imgs = []
            for s in r.sample_indices:
                pos = rank * per + s
                if pos >= len(pool):  # more samples than held-out images: draw by seed
                    pos = derive_seed("oracle", r.cond_id, s) % len(pool)
                imgs.append(read_rgb(ctx.dataset.path(pool[pos])))
            out.append(imgs)
        return out


class BlendAdapter(OracleAdapter):
    """(1 - w) x the oracle's image + w x the conditioning image: w = 0 is ``oracle``, 1 ``copy``.

    A dial between copying and not copying for testing novelty metrics: the same oracle image
    per slot seed, mixed in float and rounded to uint8, so w = 0 and w = 1 give exactly the
    oracle's and the copy's pixels. An oracle image of another size is first resized to the
    conditioning image's (PIL bicubic; never on the demo, whose images are all 64 px).
    """

    name = "blend"
    description = "(1 - w) oracle image + w conditioning image; w = 0 oracle, w = 1 copy"
    params = (
        Param("w", float, (0.5,), "weight of the conditioning image in [0, 1]", sweep=True),
        Param("other", str, "augment", "what w = 0 is", choices=("augment", "oracle")),
    )

    def check_available(self) -> None:
        """A weight outside [0, 1] is a usage error before anything is generated."""
        bad = [w for w in self.options.get("w", ()) if not 0.0 <= float(w) <= 1.0]
        if bad:
            raise UsageError(f"blend: w must be in [0, 1], got {', '.join(map(str, bad))}")

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        if self.options.get("other", "augment") == "augment":
            others = [
                [_augment(r.cond_image, s, r.resolution, 1.0) for s in r.seeds] for r in requests
            ]
        else:
            others = super().generate(requests)
        return [
            [_blend(o, r.cond_image, float(r.point["w"])) for o in imgs]
            for r, imgs in zip(requests, others, strict=True)
        ]


def _blend(other: np.ndarray, cond: np.ndarray, w: float) -> np.ndarray:
    if w == 1.0:
        return cond.copy()
    if other.shape != cond.shape:
        size = (cond.shape[1], cond.shape[0])
        other = np.asarray(Image.fromarray(other).resize(size, Image.Resampling.BICUBIC))
    if w == 0.0:
        return other.copy()
    mixed = (1.0 - w) * other.astype(np.float64) + w * cond.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
