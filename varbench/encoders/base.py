"""Encoder interface: each feature network owns its preprocessing and declares its outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from varbench.core.hashing import sha256_json


class Encoder(ABC):
    """Maps decoded HxWx3 uint8 images to feature vectors; ``config()`` fully names the mapping."""

    name: ClassVar[str] = ""
    resize_mode: ClassVar[str] = ""  # named resize (part of every cache key)
    batch_size: ClassVar[int] = 64  # images per forward pass on CPU (never the user's flag)
    gpu_batch_size: ClassVar[int] = 256  # images per forward pass on CUDA
    outputs: ClassVar[tuple[str, ...]] = ("features",)

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        self.weights = weights
        self.device = device
        self.options = options

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the features: weights hash, resize mode, dtype, version."""

    def chunk_size(self) -> int:
        """Images per forward pass on this encoder's device."""
        return self.gpu_batch_size if str(self.device).startswith("cuda") else self.batch_size

    def cache_key(self) -> str:
        """Hash of the fully resolved configuration."""
        return sha256_json({"encoder": self.name, **self.config()})

    def check_available(self) -> None:
        """Raise ``WeightsUnavailableError`` within seconds if weights are missing."""

    @abstractmethod
    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        """Features (N, D) for a batch of images, in order."""

    def encode_many(
        self, images: Sequence[np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Several outputs at once; networks override this to share one forward pass."""
        return {o: self.encode(images, o) for o in outputs}
