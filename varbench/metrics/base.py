"""Metric interface: a thin wrapper that pulls cached features from a context and calls pure functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    real_hashes: list[str]  # pixel hash of each reference image (rows of ``real()``)
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


HIGHER, LOWER, NEITHER = 1, -1, 0  # ResultKey.better


@dataclass(frozen=True)
class ResultKey:
    """One result column a metric fills, declared once where the metric is defined.

    ``better`` is +1 (higher is better), -1 (lower is better) or 0 (a statistic to read, not to
    rank: interval bounds, counts, two-sided scores); check, compare, report, leaderboard and
    plots read it from here and nowhere else.
    """

    name: str
    better: int
    label: str = ""  # display name, e.g. "FID"
    unit: str = ""  # e.g. "%", "" for unitless

    def __post_init__(self) -> None:
        if self.better not in (HIGHER, LOWER, NEITHER):
            raise ValueError(f"result key {self.name}: better must be +1, -1 or 0")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def direction_text(self) -> str:
        """ "lower is better" / "higher is better" / "" for figure and table captions."""
        return {HIGHER: "higher is better", LOWER: "lower is better"}.get(self.better, "")


def higher(name: str, label: str = "", unit: str = "") -> ResultKey:
    """A result key where higher is better."""
    return ResultKey(name, HIGHER, label, unit)


def lower(name: str, label: str = "", unit: str = "") -> ResultKey:
    """A result key where lower is better."""
    return ResultKey(name, LOWER, label, unit)


def neither(name: str, label: str = "", unit: str = "") -> ResultKey:
    """A result key with no better direction (bounds, counts, two-sided scores)."""
    return ResultKey(name, NEITHER, label, unit)


class Metric(ABC):
    """A registered metric family; ``results`` declares the columns it fills, ``keys`` their names."""

    name: ClassVar[str] = ""
    results: ClassVar[tuple[ResultKey, ...]] = ()
    keys: ClassVar[tuple[str, ...]] = ()  # derived from ``results``
    encoders: ClassVar[tuple[str, ...]] = ()  # encoders needed besides the protocol default

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "keys" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: declare ``results`` (ResultKey), not ``keys``")
        cls.keys = tuple(k.name for k in cls.results)

    @abstractmethod
    def compute(self, ctx: MetricContext) -> dict[str, float]:
        """Result values keyed by names in ``keys``."""

    def artifacts(self, ctx: MetricContext) -> dict[str, object]:
        """Per-sample arrays and histograms (JSON-ready) kept beside the result; after ``compute``."""
        return {}
