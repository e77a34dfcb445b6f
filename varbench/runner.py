"""Drives one run through the rooms: plan -> generate (or import) -> score -> results.parquet.

Resumable by construction: samples on disk are skipped, features come from the content cache, and
finished sweep points keep their stored result. Numbers depend only on the inputs and seeds.
The runner owns only what spans the rooms: the run's identity, its folder, locks and shards.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from varbench.adapter import Adapter, RunContext, get_adapter_class
from varbench.core.cluster import Ranks, rank_device, torchrun_ranks
from varbench.core.env import environment
from varbench.core.files import atomic_write_json, remove_dead_writers_temps
from varbench.core.hashing import sha256_json
from varbench.core.locks import FileLock, LockHeldError
from varbench.core.options import describe, parse_sets
from varbench.core.registry import suggest
from varbench.errors import ManifestMismatchError, UsageError
from varbench.metrics import METRIC_OPTIONS, metric_options
from varbench.plan.manifest import check_same, read_manifest, write_manifest
from varbench.plan.planner import DataArg, RunPlan, check_drift, load_dataset, make_plan, run_id
from varbench.plan.protocol import OVERRIDABLE, RUN_KEY, load_protocol
from varbench.plan.slots import SampleSlot, point_id
from varbench.runs.results import json_field, write_results
from varbench.runs.store import RunStore, verify_samples
from varbench.score.contexts import PointContext, ScoreSetup
from varbench.score.point import point_bookkeeping, score_point

log = logging.getLogger(__name__)

EXTERNAL = "external"  # `--model external`: score samples made outside varbench
EXTERNAL_KEYS = ("samples", "name")


@dataclass
class RunConfig:
    """Everything `varbench run` was asked to do."""

    model: str
    protocol: str
    out: Path
    data: DataArg = None  # --data as typed, or a DataSource with --labels and data_* options
    sets: dict[str, str] = field(default_factory=dict)
    model_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None  # retired: generation calls are fixed groups (images_per_call)
    images_per_call: int | None = None  # group size G; None: the adapter's default
    cache_dir: Path | None = None
    shard: tuple[int, int] = (0, 1)  # (index, count)
    weights: dict[str, str] = field(default_factory=dict)  # encoder name -> local weights file


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """Reject a CUDA device that this machine does not have, naming the flag."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: CUDA is not available here; use --device cpu (or auto)"
            )
    elif device not in ("cpu", "mps") and not device.startswith("xpu"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str, gpu_auto: str = "float16") -> str:
    """``auto`` -> the model's GPU dtype (float16 unless it says otherwise) on GPU, float32 on CPU."""
    if dtype != "auto":
        return dtype
    return gpu_auto if device.startswith("cuda") else "float32"


def split_sets(
    sets: Mapping[str, str], own: Mapping[str, Any] | type[Adapter], owner: str | None = None
) -> tuple[dict[str, str], dict[str, Any], dict[str, str]]:
    """Route ``--set`` keys to the protocol, the metrics or the source (adapter or import).

    ``own`` is the source's key map (an adapter class stands for its ``param_map()``); unknown
    keys are usage errors listing what each part takes; metric options come back typed.
    """
    if isinstance(own, type):
        owner, own = repr(own.name), own.param_map()
    proto_keys = {p.name for p in OVERRIDABLE}
    metric_keys = {p.name for p in METRIC_OPTIONS}
    proto, metric, mine = {}, {}, {}
    for key, value in sets.items():
        part = (
            mine
            if key in own
            else proto
            if key in proto_keys
            else metric
            if key in metric_keys
            else None
        )
        if part is None:
            known = sorted(set(own) | proto_keys | metric_keys)
            raise UsageError(
                f"--set {key}=…: unknown key.{suggest(key, known)} "
                f"{owner} takes: {', '.join(own) or '(none)'}; "
                f"protocols take: {describe(OVERRIDABLE)}; metrics take: {describe(METRIC_OPTIONS)}."
            )
        part[key] = value
    return proto, metric_options(metric), mine


class _RunBase(ABC):
    """What every run shares: identity, run folder, shards, scoring and results.parquet."""

    name: str  # the row's `model` and the run id's prefix

    def __init__(self, cfg: RunConfig, own: Mapping[str, Any], owner: str):
        from varbench.core.env import default_cache_dir

        self.cfg = cfg
        self.cache_dir = Path(cfg.cache_dir or default_cache_dir())
        proto_sets, self.metric_options, self.own_sets = split_sets(cfg.sets, own, owner)
        spec = load_protocol(cfg.protocol)
        self.spec = spec.with_overrides(proto_sets) if proto_sets else spec
        if not (0 <= cfg.shard[0] < cfg.shard[1]):
            raise UsageError(f"--shard {cfg.shard[0]}/{cfg.shard[1]}: need 0 <= index < count")
        self.ranks: Ranks = torchrun_ranks()
        self.device = check_device(rank_device(resolve_device(cfg.device), self.ranks))

    # -- hooks -----------------------------------------------------------------------------
    @abstractmethod
    def base_key(self) -> dict[str, Any]:
        """Identity of the run apart from the data."""

    @abstractmethod
    def run_info(self) -> dict[str, Any]:
        """The source's part of ``run.json``."""

    @abstractmethod
    def row_fields(self, store: RunStore, pid: str) -> dict[str, Any]:
        """The source's columns of a result row (options, convention, device, timing, notes)."""

    @abstractmethod
    def provenance(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        """The source's provenance for ``extra`` (the stored one when nothing new is known)."""

    points: list[dict[str, Any]]

    # -- shared stages ---------------------------------------------------------------------
    @property
    def setup(self) -> ScoreSetup:
        return ScoreSetup(
            self.spec, self.metric_options, self.cache_dir, self.device, self.cfg.weights
        )

    def run_id(self, plan: RunPlan) -> str:
        return run_id(self.name, self.spec, self.base_key(), plan.manifest)

    def plan_and_verify(self) -> tuple[RunPlan, RunStore]:
        """Plan the run, then verify the plan against the run folder's manifest."""
        plan = make_plan(self.spec, self.cfg.data, self.cache_dir)
        self.planned(plan)
        check_drift(self.cfg.out, self.base_key(), plan.manifest, str(plan.listing.root))
        store = RunStore(Path(self.cfg.out) / self.run_id(plan))
        if store.manifest_path.is_file():
            check_same(read_manifest(store.manifest_path), plan.manifest, store.root)
        return plan, store

    def planned(self, plan: RunPlan) -> None:
        """Hook between planning and the run's identity (imports validate their samples here)."""

    def write_run_files(self, plan: RunPlan, store: RunStore) -> None:
        """Create the run folder (manifest and configuration) once every check has passed."""
        if not store.manifest_path.is_file():
            write_manifest(store.manifest_path, plan.manifest)
        if not store.run_json.is_file():
            atomic_write_json(
                store.run_json,
                {
                    "run_id": store.root.name,
                    "model": self.name,
                    **self.run_info(),
                    "protocol": self.spec.identity(),
                    RUN_KEY: self.spec.to_dict(),
                    "protocol_label": self.spec.label,
                    "manifest_sha256": plan.manifest.sha256,
                    "base_key": sha256_json(self.base_key()),
                    "data_root": str(plan.listing.root),
                    "data_origin": dict(plan.listing.origin),
                    "points": [point_id(p) for p in self.points],
                    "samples_per_point": len(plan.slots),
                    "created_at": _now(),
                },
            )

    def shard(self) -> tuple[int, int]:
        """(index, count) of this process: ``--shard`` refined by the torchrun rank."""
        index, count = self.cfg.shard
        return index * self.ranks.world + self.ranks.rank, count * self.ranks.world

    def check_encoders(self) -> dict[str, Any]:
        """Every encoder the metrics need, checked within seconds, before any sample is made."""
        encoders = {n: self.setup.make_encoder(n) for n in self.setup.encoders_needed()}
        for enc in encoders.values():
            enc.check_available()
        return encoders

    def execute(self) -> list[dict[str, Any]]:
        """Produce this process's shard of every point, then score the finished points.

        Returns the result rows (empty for a shard whose points are not all finished, and for
        torchrun ranks other than 0).
        """
        try:
            return self._execute()
        finally:
            self.ranks.close()

    @abstractmethod
    def _execute(self) -> list[dict[str, Any]]: ...

    def fill_points(
        self,
        store: RunStore,
        mine: list[SampleSlot],
        verb: str,
        fill: Callable[[int, dict[str, Any], str], None],
    ) -> None:
        """Make this shard's missing samples of every point with ``fill(index, point, pid)``.

        Each point is filled under the shard's lock, after a killed writer's temp files are
        removed and only if samples are still missing (the previous holder may have finished);
        the shard is then marked done for `varbench status`.
        """
        index, count = self.shard()
        for i, point in enumerate(self.points):
            pid = point_id(point)
            if store.missing(pid, mine):
                lock = FileLock(
                    store.point_dir(pid) / "locks" / f"{verb}-{index}of{count}.lock",
                    what=f"run {store.root.name}, point {pid}, shard {index}/{count}",
                )
                with lock:
                    store.remove_orphan_temps(pid, mine)  # a killed writer's partial files
                    remove_dead_writers_temps(store.point_dir(pid))  # timing.json and the like
                    if store.missing(pid, mine):
                        fill(i, point, pid)
            store.mark_shard_done(pid, index, count, len(mine))
        self.ranks.barrier()

    def score_finished(
        self, plan: RunPlan, store: RunStore, encoders: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Score every finished point once (a lock per point), then write results.parquet."""
        slots = list(plan.slots)
        setup = self.setup
        finished = [p for p in self.points if not store.missing(point_id(p), slots)]
        for p in self.points:
            if p not in finished:
                log.info("point %s: waiting for other shards to finish", point_id(p))
        if self.ranks.distributed:  # every rank encodes its share of the feature chunks
            for point in finished:
                pid = point_id(point)
                ctx = PointContext(setup, plan.listing, plan.manifest, store, pid, slots, encoders)
                ctx.prefetch(self.ranks)
            if self.ranks.rank != 0:
                return []
        scored: list[dict[str, Any]] = []
        for point in finished:
            pid = point_id(point)
            lock = FileLock(
                store.point_dir(pid) / "locks" / "score.lock",
                what=f"scoring of run {store.root.name}, point {pid}",
            )
            try:
                lock.acquire()
            except LockHeldError as exc:
                log.warning("%s", exc)
                continue
            try:
                remove_dead_writers_temps(store.point_dir(pid))  # a killed scorer's result.json
                store.write_index(pid, slots)
                ctx = PointContext(setup, plan.listing, plan.manifest, store, pid, slots, encoders)

                def row(values, extra, pid=pid, point=point, ctx=ctx):
                    return self._row(plan, store, pid, point, ctx, values, extra)

                scored.append(score_point(setup, ctx, store, pid, encoders, row, self.provenance))
            finally:
                lock.release()
        rows = [store.read_point_result(point_id(p)) for p in self.points]
        if all(rows):
            rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
            remove_dead_writers_temps(store.root)  # a killed writer's results.parquet temp
            write_results(store.results_path, rows)
            return rows
        return scored

    def _row(
        self,
        plan: RunPlan,
        store: RunStore,
        pid: str,
        point: dict[str, Any],
        ctx: PointContext,
        values: Mapping[str, Any],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """One result row: identity, provenance and the metric values."""
        own = self.row_fields(store, pid)
        return {
            "run_id": store.root.name,
            "model": self.name,
            "protocol": self.spec.label,
            "protocol_version": self.spec.version,
            "params": json_field(point),
            "options": own.pop("options"),
            "guidance_convention": own.pop("guidance_convention"),
            "encoder": self.spec.encoder,
            "prepare": self.spec.image_prep.label,
            "n_samples": len(plan.slots),
            "n_real": len(plan.manifest.references),
            "n_classes": len(plan.manifest.classes),
            "n_black": ctx.n_black,
            "n_nan": own.pop("n_nan"),
            "source": "varbench",
            "seed": self.spec.seed,
            "manifest_sha256": plan.manifest.sha256,
            "data_source": json_field(dict(plan.listing.origin)),
            "device": own.pop("device"),
            "dtype": own.pop("dtype"),
            "wall_time_s": own.pop("wall_time_s"),
            "images_per_s": own.pop("images_per_s"),
            **environment(),
            "created_at": _now(),
            "images_per_call": own.pop("images_per_call"),
            "generation_warnings": own.pop("generation_warnings"),
            "model_path": own.pop("model_path"),
            "extra": json_field(extra),
            "notes": own.pop("notes"),
            **values,
        }


class Run(_RunBase):
    """One `varbench run` of an adapter: plan, generate its shard, score."""

    def __init__(self, cfg: RunConfig):
        self.adapter_cls = get_adapter_class(cfg.model)
        super().__init__(cfg, self.adapter_cls.param_map(), repr(self.adapter_cls.name))
        self.name = self.adapter_cls.name
        self.options = self.adapter_cls.resolve_options(
            self.own_sets, self.spec.sweeps.get(self.adapter_cls.name, {})
        )
        self.points = self.adapter_cls.sweep_points(self.options)
        self.dtype = resolve_dtype(cfg.dtype, self.device, self.adapter_cls.gpu_auto_dtype)
        if cfg.batch_size is not None:
            if cfg.batch_size < 1:
                raise UsageError("--batch-size must be >= 1")
            log.warning(
                "--batch-size no longer changes how samples are generated: each model call is one "
                "fixed group of up to --images-per-call samples (here %d), so it is ignored",
                cfg.images_per_call or self.adapter_cls.images_per_call,
            )
        self.images_per_call = int(cfg.images_per_call or self.adapter_cls.images_per_call)
        if self.images_per_call < 1:
            raise UsageError(f"--images-per-call {self.images_per_call}: need >= 1")
        self.adapter: Adapter | None = None

    def base_key(self) -> dict[str, Any]:
        """Identity of the run apart from the data (model, options, protocol)."""
        return {
            "model": self.adapter_cls.name,
            "options": self.adapter_cls.fixed_options(self.options),
            "protocol": self.spec.identity(),
            "model_path": str(Path(self.cfg.model_path).resolve()) if self.cfg.model_path else None,
            # the group size fixes which samples share a model call, so it changes the bits
            "generation": self.generation(),
        }

    def generation(self) -> dict[str, Any]:
        """How samples are grouped into model calls (part of the run id and of provenance)."""
        return {
            "images_per_call": self.images_per_call,
            "group_by_condition": bool(self.adapter_cls.group_by_condition),
        }

    def run_info(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "model_path": self.cfg.model_path,
            "generation": self.generation(),
        }

    def _execute(self) -> list[dict[str, Any]]:
        from varbench.generate.sampling import GenerationJob, generate_groups

        plan, store = self.plan_and_verify()
        encoders = self.check_encoders()  # fail within seconds, before generating anything
        groups = plan.groups(self.images_per_call, self.adapter_cls.group_by_condition)
        index, count = self.shard()
        my_groups = [g for gi, g in enumerate(groups) if gi % count == index]
        mine = [s for g in my_groups for s in g]
        for p in self.points:  # damaged samples are deleted here, so they count as missing
            verify_samples(store, point_id(p), mine)
        if any(store.missing(point_id(p), mine) for p in self.points):
            self.adapter = self.adapter_cls(
                self.options, model_path=self.cfg.model_path, device=self.device, dtype=self.dtype
            )
            self.adapter.check_available()  # weights missing: fail now, before the run folder exists
        self.write_run_files(plan, store)
        resolution = int(self.options.get("resolution") or self.spec.resolution)

        def generate_point(i: int, point: dict[str, Any], pid: str) -> None:
            if not self._ready:
                self._ready = True
                self.adapter.setup(self._adapter_context(plan))
            job = GenerationJob(self.name, plan.listing, store, pid, point, resolution)
            generate_groups(self.adapter, job, my_groups)

        self._ready = False
        self.fill_points(store, mine, "generate", generate_point)
        return self.score_finished(plan, store, encoders)

    def _adapter_context(self, plan: RunPlan) -> RunContext:
        return RunContext(
            protocol=self.spec,
            manifest=plan.manifest,
            dataset=plan.listing,
            device=self.device,
            dtype=self.dtype,
            cache_dir=str(self.cache_dir),
        )

    def row_fields(self, store: RunStore, pid: str) -> dict[str, Any]:
        timing, n_nan, gen_warnings = point_bookkeeping(store, pid)
        return {
            "options": json_field(self.adapter_cls.fixed_options(self.options)),
            "guidance_convention": self.adapter_cls.guidance_convention,
            "n_nan": n_nan,
            "device": self.device,
            "dtype": self.dtype,
            "wall_time_s": float(timing["seconds"]),
            "images_per_s": float(timing["images"] / timing["seconds"])
            if timing["seconds"] > 0
            else None,
            "images_per_call": self.images_per_call,
            "generation_warnings": len(gen_warnings),
            "model_path": self.cfg.model_path or "",
            "notes": "; ".join(
                ["NOT bit-identical to a run without these events: " + " | ".join(gen_warnings)]
                if gen_warnings
                else []
            ),
        }

    def provenance(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        extra = self.adapter.provenance() if self.adapter is not None else (stored or {})
        return {**extra, "generation": self.generation()}


class ExternalRun(_RunBase):
    """`varbench run --model external`: plan, import samples made elsewhere, score."""

    def __init__(self, cfg: RunConfig):
        from varbench.generate.external import check_name

        super().__init__(cfg, dict.fromkeys(EXTERNAL_KEYS), "'external'")
        self.name = check_name(self.own_sets.get("name"))
        path = self.own_sets.get("samples")
        if not path:
            raise UsageError(
                "--model external needs --set samples=PATH: a folder laid out as `varbench "
                "export` plans it, an .npz (arr_0 in plan order), or one of those per sweep point"
            )
        self.samples_path = Path(path).expanduser()
        self.samples = None

    def planned(self, plan: RunPlan) -> None:
        """Validate the samples against the plan: they decide the run id and the sweep points."""
        from varbench.generate.external import validate

        self.samples = validate(self.samples_path, plan.slots)
        self.points = [p.point for p in self.samples.points]

    def base_key(self) -> dict[str, Any]:
        return {
            "model": EXTERNAL,
            "name": self.name,
            "protocol": self.spec.identity(),
            "samples": self.samples.sha256,
        }

    def run_info(self) -> dict[str, Any]:
        return {"options": {}, "external": self.samples.provenance()}

    def _execute(self) -> list[dict[str, Any]]:
        from varbench.generate.external import import_point

        plan, store = self.plan_and_verify()  # validates every sample before anything is written
        samples = self.samples
        encoders = self.check_encoders()
        index, count = self.shard()
        slots = list(plan.slots)
        mine = [s for i, s in enumerate(slots) if i % count == index]
        for p in self.points:
            verify_samples(store, point_id(p), mine)
        self.write_run_files(plan, store)
        self.fill_points(
            store,
            mine,
            "import",
            lambda i, point, pid: import_point(samples, i, slots, mine, store, pid),
        )
        return self.score_finished(plan, store, encoders)

    def row_fields(self, store: RunStore, pid: str) -> dict[str, Any]:
        return {
            "options": json_field({}),
            "guidance_convention": "",
            "n_nan": 0,
            "device": "",
            "dtype": "",
            "wall_time_s": None,
            "images_per_s": None,
            "images_per_call": None,
            "generation_warnings": 0,
            "model_path": "",
            "notes": f"samples made outside varbench, imported from {self.samples_path}",
        }

    def provenance(self, stored: dict[str, Any] | None) -> dict[str, Any]:
        return {"source": EXTERNAL, "scored_on": self.device, **self.samples.provenance()}


def make_run(cfg: RunConfig) -> _RunBase:
    """The run for ``cfg.model``: an adapter's, or an import of external samples."""
    return ExternalRun(cfg) if cfg.model == EXTERNAL else Run(cfg)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: RunConfig) -> list[dict[str, Any]]:
    """Entry point used by the CLI and tests."""
    return make_run(cfg).execute()


__all__ = [
    "RunConfig",
    "Run",
    "ExternalRun",
    "run",
    "make_run",
    "parse_sets",
    "load_dataset",
    "ManifestMismatchError",
    "SampleSlot",
]
