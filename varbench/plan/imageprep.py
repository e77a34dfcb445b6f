"""Named image preparations: the one step every scored image passes before any feature network.

References, held-out reals, conditioning images (for alignment and LPIPS) and samples all go
through the protocol's preparation, so every feature space compares images prepared the same
way. Adapters are not affected: they receive the raw decoded conditioning image and apply their
authors' own preprocessing. A preparation's name, version and resolution are part of the
manifest, the run id and every feature-cache key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from varbench.core.registry import Registry, suggest
from varbench.errors import UsageError


class Preparation(ABC):
    """Maps a decoded HxWx3 uint8 image to the image the encoders see, at a target resolution."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    needs_resolution: ClassVar[bool] = True

    @staticmethod
    @abstractmethod
    def apply(image: np.ndarray, resolution: int) -> np.ndarray:
        """The prepared HxWx3 uint8 image."""


class NoPreparation(Preparation):
    """Images enter the encoders as decoded (each encoder's own resize then applies)."""

    name = "none"
    description = "no preparation: each encoder resizes the decoded image itself"
    needs_resolution = False

    @staticmethod
    def apply(image: np.ndarray, resolution: int) -> np.ndarray:
        return image


def adm_center_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """guided-diffusion's ``center_crop_arr``: BOX halvings, BICUBIC to the short side, centre square.

    While the short side is at least twice the target, halve both sides (floor) with PIL BOX;
    then resize with PIL BICUBIC so the short side equals ``resolution`` (both sides rounded);
    then take the centre square (offsets floored). An image already square at ``resolution``
    comes back unchanged (PIL returns a copy for a same-size resize).
    """
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    while min(im.size) >= 2 * resolution:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.Resampling.BOX)
    scale = resolution / min(im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(im)
    top = (arr.shape[0] - resolution) // 2
    left = (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top : top + resolution, left : left + resolution])


class AdmCenterCrop(Preparation):
    """The ADM evaluator's reference preparation (EDM2 ``center-crop-dhariwal``)."""

    name = "adm_center_crop"
    description = (
        "guided-diffusion center_crop_arr: PIL BOX halvings, PIL BICUBIC short side to the "
        "resolution, centre square"
    )

    @staticmethod
    def apply(image: np.ndarray, resolution: int) -> np.ndarray:
        return adm_center_crop(image, resolution)


preparation_registry: Registry[type[Preparation]] = Registry(kind="preparation", base=Preparation)
preparation_registry.register("none", NoPreparation)
preparation_registry.register("adm_center_crop", AdmCenterCrop)


@dataclass(frozen=True)
class ImagePrep:
    """A named preparation at a resolution: callable on images, with a hashable identity."""

    name: str = "none"
    resolution: int | None = None

    def __post_init__(self) -> None:
        cls = preparation_registry.get(self.name)
        if cls.needs_resolution and (self.resolution is None or self.resolution < 8):
            raise UsageError(
                f"preparation {self.name!r} needs a resolution >= 8 (got {self.resolution}); "
                "pass --resolution R"
            )

    @property
    def cls(self) -> type[Preparation]:
        return preparation_registry.get(self.name)

    @property
    def is_identity(self) -> bool:
        return self.name == NoPreparation.name

    def identity(self) -> dict[str, Any]:
        """Name, version and resolution (``resolution`` omitted when the step ignores it)."""
        cls = self.cls
        return {
            "name": cls.name,
            "version": cls.version,
            "resolution": self.resolution if cls.needs_resolution else None,
        }

    @property
    def label(self) -> str:
        """Short text for result rows and logs, e.g. ``adm_center_crop/v1@512``."""
        ident = self.identity()
        res = f"@{ident['resolution']}" if ident["resolution"] is not None else ""
        return f"{ident['name']}/v{ident['version']}{res}"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.cls.apply(image, int(self.resolution or 0))


def check_preparation(name: str, where: str) -> str:
    """Validate a preparation name, naming where it came from (a file or a flag)."""
    if name not in preparation_registry:
        raise UsageError(
            f"{where}: unknown preparation {name!r}.{suggest(name, preparation_registry.names())} "
            f"Known: {', '.join(preparation_registry.names())}."
        )
    return name


__all__ = [
    "Preparation",
    "ImagePrep",
    "adm_center_crop",
    "preparation_registry",
    "check_preparation",
]
