"""Protocol specs: versioned TOML files in ``protocols/`` loaded into a frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from varbench.core.options import Param, parse_options
from varbench.core.registry import suggest
from varbench.errors import UsageError
from varbench.plan.imageprep import ImagePrep, preparation_registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAYOUTS = ("demo", "imagefolder", "sun397", "lsun")
# Keys a user may override with --set on any protocol; the label then records the change.
OVERRIDABLE: tuple[Param, ...] = (
    Param("n_per_class", int, help="reference images per class"),
    Param("k", int, help="conditioning images per class"),
    Param("seed", int, help="seed of the reference and conditioning draw"),
    Param("resolution", int, help="generation resolution (pixels)"),
    Param("n_classes", int, help="classes used"),
    Param("prepare", str, help="named preparation of every scored image"),
)


@dataclass(frozen=True)
class ProtocolSpec:
    """A K-shot protocol: which images are references, which condition, how many samples."""

    name: str
    version: int
    description: str
    layout: str  # demo | imagefolder | sun397 | lsun
    n_per_class: int  # reference images per class
    k: int  # conditioning images per class, drawn from the references
    seed: int
    resolution: int  # generation resolution (pixels, square)
    encoder: str  # default feature space of fid/kid/precision/recall
    metrics: tuple[str, ...]
    n_classes: int | None = None  # expected class count (None: whatever the data has)
    class_names: str | None = None  # "imagenet": map wnids to names for prompts
    example: str = ""
    sweeps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prepare: str = "none"  # named preparation of every scored image (varbench.plan.imageprep)
    category: str | None = None  # lsun: LSUN category (<category>_train_lmdb/, the class)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set values applied
    # the full-set (K = n) counterpart of a few-shot protocol, for Fig. 3's contrast; not part
    # of the identity (it changes no image used or made)
    full_set: str | None = None

    @property
    def samples_per_cond(self) -> int:
        """Samples generated for each conditioning image (n_per_class / k)."""
        return self.n_per_class // self.k

    @property
    def image_prep(self) -> ImagePrep:
        """The preparation applied to every scored image, at the protocol resolution."""
        return ImagePrep(self.prepare, self.resolution)

    @property
    def needs_data(self) -> bool:
        """Whether the user must pass ``--data`` (everything but the embedded demo)."""
        return self.layout != "demo"

    @property
    def label(self) -> str:
        """Name shown on leaderboards; overridden protocols say what changed."""
        if not self.overrides:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.name}[{inner}]"

    def identity(self) -> dict[str, Any]:
        """Everything that changes which images are used or made (hashed into run ids)."""
        return {
            "name": self.name,
            "version": self.version,
            "layout": self.layout,
            "n_per_class": self.n_per_class,
            "k": self.k,
            "seed": self.seed,
            "resolution": self.resolution,
            "n_classes": self.n_classes,
            "prepare": self.image_prep.identity(),
            # only when set, so the run ids of the other protocols stay what they were
            **({"category": self.category} if self.category is not None else {}),
        }

    def validate(self) -> None:
        """Raise ``UsageError`` naming every inconsistent field."""
        problems = []
        if self.layout not in LAYOUTS:
            problems.append(f"layout={self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.version < 1:
            problems.append("version must be >= 1")
        if self.n_per_class < 1:
            problems.append("n_per_class must be >= 1")
        if self.k < 1 or self.k > self.n_per_class:
            problems.append(f"k={self.k} must be between 1 and n_per_class={self.n_per_class}")
        elif self.n_per_class % self.k:
            problems.append(f"n_per_class={self.n_per_class} must be a multiple of k={self.k}")
        if self.resolution < 8:
            problems.append("resolution must be >= 8")
        if self.n_classes is not None and self.n_classes < 1:
            problems.append("n_classes must be >= 1")
        if (self.layout == "lsun") != (self.category is not None):
            problems.append("category must be set exactly when layout is 'lsun'")
        elif self.category is not None and not self.category.replace("_", "").isalnum():
            problems.append(f"category={self.category!r} must be letters, digits and _")
        if self.full_set is not None and self.full_set == self.name:
            problems.append("full_set must name another protocol (the K = n counterpart)")
        if not self.metrics:
            problems.append("metrics must name at least one metric")
        if self.prepare not in preparation_registry:
            names = preparation_registry.names()
            problems.append(
                f"unknown preparation prepare={self.prepare!r}.{suggest(self.prepare, names)} "
                f"Known: {', '.join(names)}"
            )
        from varbench.encoders import encoder_registry
        from varbench.metrics import metric_registry

        for m in self.metrics:
            if m not in metric_registry:
                problems.append(f"unknown metric {m!r}.{suggest(m, metric_registry.names())}")
        if self.encoder not in encoder_registry:
            problems.append(
                f"unknown encoder {self.encoder!r}.{suggest(self.encoder, encoder_registry.names())}"
            )
        if problems:
            raise UsageError(f"protocol {self.name!r} is invalid: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The spec in its file form (TOML-shaped, JSON-ready); ``parse_protocol`` reads it back
        to an equal spec. Runs record it in run.json (``RUN_KEY``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
            out[f.name] = value
        return out

    def with_overrides(self, sets: Mapping[str, str]) -> ProtocolSpec:
        """Apply ``--set`` values (strings or typed) that name protocol keys; a new validated spec."""
        changes = parse_options(sets, OVERRIDABLE, "protocols")
        changed = {k: v for k, v in changes.items() if getattr(self, k) != v}
        spec = dataclasses.replace(self, **changes, overrides={**self.overrides, **changed})
        spec.validate()
        return spec


def _protocol_dir() -> Path:
    return Path(str(resources.files("varbench_protocols")))


def protocol_files() -> dict[str, Path]:
    """Protocol name -> TOML file shipped in ``protocols/``."""
    return {p.stem: p for p in sorted(_protocol_dir().glob("*.toml"))}


def parse_protocol(
    data: Mapping[str, Any], origin: str, recorded: tuple[str, ...] = ()
) -> ProtocolSpec:
    """Build a spec from parsed TOML (or a run's record), naming the file in every error.

    ``recorded=("overrides",)`` accepts the ``--set`` record a run's ``to_dict`` carries (a
    protocol file may not set it: overrides come from the command line).
    """
    known = {f.name for f in dataclasses.fields(ProtocolSpec)} - ({"overrides"} - set(recorded))
    unknown = set(data) - known
    if unknown:
        key = sorted(unknown)[0]
        raise UsageError(f"{origin}: unknown key {key!r}.{suggest(key, sorted(known))}")
    required = ["name", "version", "layout", "n_per_class", "k", "seed", "resolution", "encoder"]
    missing = [k for k in required if k not in data]
    if missing:
        raise UsageError(f"{origin}: missing required key(s) {', '.join(missing)}")
    try:
        spec = ProtocolSpec(
            name=str(data["name"]),
            version=int(data["version"]),
            description=str(data.get("description", "")),
            layout=str(data["layout"]),
            n_per_class=int(data["n_per_class"]),
            k=int(data["k"]),
            seed=int(data["seed"]),
            resolution=int(data["resolution"]),
            encoder=str(data["encoder"]),
            metrics=tuple(data.get("metrics", ("fid", "kid", "precision_recall"))),
            n_classes=int(data["n_classes"]) if data.get("n_classes") is not None else None,
            class_names=data.get("class_names"),
            example=str(data.get("example", "")),
            sweeps={k: dict(v) for k, v in data.get("sweeps", {}).items()},
            prepare=str(data.get("prepare", "none")),
            category=str(data["category"]) if data.get("category") is not None else None,
            full_set=str(data["full_set"]) if data.get("full_set") else None,
            overrides=dict(data.get("overrides") or {}),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{origin}: {exc}") from None
    spec.validate()
    return spec


RUN_KEY = "protocol_spec"  # run.json: the run's spec, ``ProtocolSpec.to_dict()``


def protocol_of_run(info: Mapping[str, Any], origin: str, encoder: str = "") -> ProtocolSpec:
    """The protocol a run used, read back from its run.json through ``parse_protocol``.

    Runs made before run.json recorded the spec carry only its identity (the fields that choose
    images): those are read through the same parser, with the encoder the run's results name and
    ``metrics`` left at the parser's default (not recorded then; readers use the identity only).
    """
    if info.get(RUN_KEY) is not None:
        return parse_protocol(info[RUN_KEY], origin, recorded=("overrides",))
    ident = dict(info.get("protocol") or {})
    if not ident:
        raise UsageError(f"{origin}: no protocol recorded; re-run `varbench run` for this run")
    ident["prepare"] = (ident.get("prepare") or {}).get("name", "none")
    ident.setdefault("encoder", encoder)
    return parse_protocol(ident, origin)


def load_protocol_file(path: str | Path) -> ProtocolSpec:
    """Load and validate one protocol TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read protocol file {path}: {exc}") from None
    spec = parse_protocol(data, str(path))
    if spec.name != path.stem and path.parent == _protocol_dir():
        raise UsageError(f"{path}: name {spec.name!r} must match the file name {path.stem!r}")
    return spec


def load_protocol(name_or_path: str) -> ProtocolSpec:
    """A shipped protocol by name, or any protocol TOML file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return load_protocol_file(name_or_path)
    files = protocol_files()
    if name_or_path not in files:
        raise UsageError(
            f"unknown protocol {name_or_path!r}.{suggest(name_or_path, list(files))} "
            f"Known: {', '.join(files)}. See `varbench list protocols`."
        )
    return load_protocol_file(files[name_or_path])
