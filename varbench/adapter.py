"""The adapter interface: typed requests in, images out, in order.

Every model is wrapped as an ``Adapter`` subclass that declares its parameters (``Param``), which
of them are sweep axes, and its guidance convention. The runner hands it one generation group at
a time (a list of ``Request``s, one per conditioning image in the group); each request carries
per-sample seeds derived from (protocol seed, conditioning id, sample index). An adapter makes one
model call per group and draws each sample's noise from its own generator, so images depend only
on the protocol, the seeds and the group size, never on --batch-size, shards or resumes.

This module is the plugin API: adapters (built-in and third-party) import only it and
``varbench.errors``. It re-exports what they need besides the interface: ``read_rgb`` (image
reading), ``derive_seed`` and ``sha256_text`` (seeds), ``DEMO_CLASSES`` and ``demo_image`` (the
embedded demo's images) and ``weights_only_loads`` (safe torch loading).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from varbench.core.files import read_rgb
from varbench.core.hashing import derive_seed, sha256_text
from varbench.core.options import Param
from varbench.core.registry import Registry, suggest
from varbench.encoders.weights import weights_only_loads
from varbench.errors import UsageError
from varbench.plan.demo_data import CLASSES as DEMO_CLASSES
from varbench.plan.demo_data import demo_image

if TYPE_CHECKING:
    from varbench.plan.datasets import DatasetListing
    from varbench.plan.manifest import Manifest
    from varbench.plan.protocol import ProtocolSpec

GUIDANCE_CONVENTIONS = {
    "sd": "eps = eps(none) + g * (eps(c) - eps(none)); g = 1 is unguided",
    "one_plus_w": "eps = (1 + w) * eps(c) - w * eps(none); w = 0 is unguided",
    "none": "no classifier-free guidance",
}


@dataclass(frozen=True)
class Request:
    """Generate ``len(sample_indices)`` variations of one conditioning image."""

    cond_image: np.ndarray  # HxWx3 uint8 RGB, as decoded from the dataset
    cond_id: str  # manifest-relative path of the conditioning image
    class_name: str  # folder-derived class name (e.g. an ImageNet wnid)
    class_label: str  # human-readable class name (for text prompts)
    class_index: int
    sample_indices: tuple[int, ...]
    seeds: tuple[int, ...]  # one per sample index
    point: Mapping[str, Any]  # the sweep point (e.g. {"guidance": 4.0})
    resolution: int  # output side length in pixels

    def __post_init__(self) -> None:
        if len(self.sample_indices) != len(self.seeds):
            raise ValueError("sample_indices and seeds must have equal length")


@dataclass
class RunContext:
    """What an adapter may look at besides its requests (dataset, manifest, protocol)."""

    protocol: ProtocolSpec
    manifest: Manifest
    dataset: DatasetListing
    device: str
    dtype: str
    cache_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter(ABC):
    """Base class of every model wrapper; subclasses set the class attributes below."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    guidance_convention: ClassVar[str] = "none"
    hub_ids: ClassVar[tuple[str, ...]] = ()  # what `varbench fetch --model` downloads
    licence: ClassVar[str] = ""
    # Samples of this model may be exact copies of real images (baselines), nothing else implied.
    needs_weights: ClassVar[bool] = False
    # Generation groups (issue 8): the runner calls ``generate`` once per group of consecutive
    # sample slots in manifest order, of at most ``images_per_call`` samples (one sweep point;
    # with ``group_by_condition``, one conditioning image). Group composition depends only on
    # the protocol and these settings, never on --batch-size, shards or interruptions.
    images_per_call: ClassVar[int] = 8
    group_by_condition: ClassVar[bool] = False
    # What ``--dtype auto`` means on a GPU for this model (CPU is always float32).
    gpu_auto_dtype: ClassVar[str] = "float16"

    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        model_path: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.options = dict(options)
        self.model_path = model_path
        self.device = device
        self.dtype = dtype

    # -- declared parameters -------------------------------------------------------------
    @classmethod
    def param_map(cls) -> dict[str, Param]:
        """Parameters by name."""
        return {p.name: p for p in cls.params}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """Defaults of every declared parameter."""
        return {p.name: p.default for p in cls.params}

    @classmethod
    def sweep_axes(cls) -> list[str]:
        """Names of the list-valued parameters that span the sweep, in declared order."""
        return [p.name for p in cls.params if p.sweep]

    @classmethod
    def resolve_options(
        cls,
        overrides: Mapping[str, str],
        protocol_defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Defaults < protocol per-adapter defaults < ``--set`` strings; unknown keys are errors."""
        pmap = cls.param_map()
        options = cls.default_options()
        for key, value in (protocol_defaults or {}).items():
            if key not in pmap:
                raise UsageError(
                    f"protocol sweep for {cls.name!r} sets unknown parameter {key!r}."
                    f"{suggest(key, list(pmap))}"
                )
            options[key] = pmap[key].coerce(value, f"protocol sweep {cls.name}.{key}")
        for key, text in overrides.items():
            if key not in pmap:
                raise UsageError(
                    f"--set {key}=…: {cls.name!r} has no parameter {key!r}.{suggest(key, list(pmap))}"
                    f" Parameters: {', '.join(pmap) or '(none)'}."
                )
            options[key] = pmap[key].parse(text)
        return options

    @classmethod
    def sweep_points(cls, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Cartesian product of the sweep axes' values, in declared order."""
        axes = cls.sweep_axes()
        values = [tuple(options[a]) for a in axes]
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*values)]

    @classmethod
    def fixed_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options that are not sweep axes (they go into the run id)."""
        axes = set(cls.sweep_axes())
        return {k: v for k, v in options.items() if k not in axes}

    # -- lifecycle -----------------------------------------------------------------------
    def check_available(self) -> None:
        """Fail fast (seconds, no generation) if weights are missing; default: nothing needed."""

    def fetch(self) -> list[str]:
        """Download weights into the local caches; return what was fetched."""
        return []

    def setup(self, context: RunContext) -> None:
        """Load weights and anything the run needs; called once before ``generate``."""
        self.context = context

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        """Return, per request and in order, one HxWx3 uint8 image per sample index."""

    def provenance(self) -> dict[str, Any]:
        """Extra facts recorded with every result row (e.g. safety checker off)."""
        return {}

    def warn(self, message: str) -> None:
        """Record an event that makes numbers differ from a normal run (e.g. OOM back-off)."""
        self.__dict__.setdefault("_warnings", []).append(message)

    def drain_warnings(self) -> list[str]:
        """Warnings recorded since the last call (the runner stores them with the point)."""
        return self.__dict__.pop("_warnings", [])


adapter_registry: Registry[type[Adapter]] = Registry(
    kind="model", base=Adapter, entry_point_group="varbench.adapters"
)


def get_adapter_class(name: str) -> type[Adapter]:
    """Resolve an adapter class by registered name (built-ins and entry points)."""
    cls = adapter_registry.get(name)
    if cls.name != name:
        cls.name = name  # entry-point name is authoritative
    return cls


__all__ = [
    "DEMO_CLASSES",
    "GUIDANCE_CONVENTIONS",
    "Adapter",
    "Param",
    "Request",
    "RunContext",
    "adapter_registry",
    "demo_image",
    "derive_seed",
    "get_adapter_class",
    "read_rgb",
    "sha256_text",
    "weights_only_loads",
]
