"""Metric interface: a thin wrapper that pulls cached features from a context and calls pure functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np


class MetricContext(Protocol):
    """What a metric can ask for; features come from the content-keyed cache."""

    default_encoder: str
    seed: int
    options: Mapping[str, Any]  # metric options from --set (e.g. kid_subset_size)
    fake_cond_index: np.ndarray  # (M,) row of ``cond()`` each sample was conditioned on
    fake_class: np.ndarray  # (M,) class index of each sample
    real_class: np.ndarray  # (N,) class index of each reference image
    cond_hashes: list[str]  # pixel hash of each conditioning image (rows of ``cond()``)
    fake_hashes: list[str]  # pixel hash of each sample (rows of ``fake()``)
    class_labels: list[str]  # label of each class index

    def encoder(self, name: str | None = None) -> Any: ...
    def image(self, digest: str) -> np.ndarray: ...  # prepared HxWx3 uint8 image by pixel hash
    def features_of(
        self, hashes: Sequence[str], encoder: str | None = None, output: str = "features"
    ) -> np.ndarray: ...
    def heldout(self, per_class: int) -> tuple[list[str], np.ndarray]: ...  # hashes, classes
    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray: ...
    def fake(self, encoder: str | None = None, output: str = "features") -> np.ndarray: ...
    def cond(self, encoder: str | None = None, output: str = "features") -> np.ndarray: ...


class Metric(ABC):
    """A registered metric family; ``keys`` are the result columns it fills."""

    name: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    encoders: ClassVar[tuple[str, ...]] = ()  # encoders needed besides the protocol default

    @abstractmethod
    def compute(self, ctx: MetricContext) -> dict[str, float]:
        """Result values keyed by names in ``keys``."""

    def artifacts(self, ctx: MetricContext) -> dict[str, object]:
        """Per-sample arrays and histograms (JSON-ready) kept beside the result; after ``compute``."""
        return {}
