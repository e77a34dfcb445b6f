"""Drives one run: protocol -> manifest -> adapter.generate -> sample store -> metrics -> results.

Resumable by construction: samples on disk are skipped, features come from the content cache, and
finished sweep points keep their stored result. Numbers depend only on the inputs and seeds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from varbench.adapter import Adapter, Request, RunContext, get_adapter_class
from varbench.cluster import Ranks, rank_device, torchrun_ranks
from varbench.datasets import DatasetListing, list_dataset
from varbench.demo_data import demo_root
from varbench.encoders import encoder_registry
from varbench.errors import ManifestMismatchError, UsageError
from varbench.features import FeatureCache
from varbench.hashing import pixel_sha256, sha256_json
from varbench.io import atomic_write_json, atomic_write_png, read_rgb
from varbench.locks import FileLock, LockHeldError
from varbench.manifest import Manifest, build_manifest, check_same, read_manifest, write_manifest
from varbench.metrics import METRIC_OPTIONS, metric_registry
from varbench.progress import progress_bar
from varbench.protocol import OVERRIDABLE, ProtocolSpec, load_protocol
from varbench.registry import suggest
from varbench.results import environment, json_field, write_results
from varbench.store import RunStore, SampleSlot, generation_groups, point_id, sample_slots

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Everything `varbench run` was asked to do."""

    model: str
    protocol: str
    out: Path
    data: Path | None = None
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
    sets: Mapping[str, str], adapter_cls: type[Adapter]
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Route ``--set`` keys to the protocol, the metrics or the adapter; unknown keys are errors."""
    proto, metric, adapter = {}, {}, {}
    pmap = adapter_cls.param_map()
    for key, value in sets.items():
        if key in pmap:
            adapter[key] = value
        elif key in OVERRIDABLE:
            proto[key] = value
        elif key in METRIC_OPTIONS:
            metric[key] = value
        else:
            known = sorted(set(pmap) | set(OVERRIDABLE) | set(METRIC_OPTIONS))
            raise UsageError(
                f"--set {key}=…: unknown key.{suggest(key, known)} "
                f"{adapter_cls.name!r} takes: {', '.join(pmap) or '(none)'}; "
                f"protocols take: {', '.join(OVERRIDABLE)}; metrics take: {', '.join(METRIC_OPTIONS)}."
            )
    for key, value in metric.items():
        try:
            METRIC_OPTIONS[key](value)
        except ValueError:
            raise UsageError(f"--set {key}={value!r}: expected an integer") from None
    return proto, metric, adapter


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> dict; malformed items are a usage error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE (e.g. --set guidance=1,4)")
        out[key.strip()] = value.strip()
    return out


def load_dataset(spec: ProtocolSpec, data: Path | None, cache_dir: Path) -> DatasetListing:
    """The demo's generated folder, or the user's ``--data``."""
    if spec.layout == "demo":
        if data is not None:
            log.warning(
                "protocol %s uses the embedded demo images; --data %s is ignored", spec.name, data
            )
        return list_dataset(demo_root(cache_dir), "imagefolder")
    if data is None:
        raise UsageError(
            f"protocol {spec.name!r} needs --data PATH ({spec.layout} layout); see `varbench list protocols`"
        )
    if spec.layout == "lsun":
        from varbench.lsun import list_lsun

        return list_lsun(data, spec, cache_dir)
    return list_dataset(data, spec.layout, spec.class_names)


def _as_uint8(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Accept uint8 or float [0, 1] HxWx3 output; NaNs become 0 and are reported."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr, False
    has_nan = bool(np.isnan(arr).any())
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8), has_nan


class Run:
    """One `varbench run`: resolved spec, adapter options, manifest and store."""

    def __init__(self, cfg: RunConfig):
        from varbench.results import default_cache_dir

        self.cfg = cfg
        self.cache_dir = Path(cfg.cache_dir or default_cache_dir())
        self.adapter_cls = get_adapter_class(cfg.model)
        proto_sets, self.metric_options, adapter_sets = split_sets(cfg.sets, self.adapter_cls)
        spec = load_protocol(cfg.protocol)
        self.spec = spec.with_overrides(proto_sets) if proto_sets else spec
        self.options = self.adapter_cls.resolve_options(
            adapter_sets, self.spec.sweeps.get(self.adapter_cls.name, {})
        )
        self.points = self.adapter_cls.sweep_points(self.options)
        if not (0 <= cfg.shard[0] < cfg.shard[1]):
            raise UsageError(f"--shard {cfg.shard[0]}/{cfg.shard[1]}: need 0 <= index < count")
        self.ranks: Ranks = torchrun_ranks()
        self.device = check_device(rank_device(resolve_device(cfg.device), self.ranks))
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

    # -- identity ----------------------------------------------------------------------
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

    def run_id(self, manifest: Manifest) -> str:
        """``<model>-<protocol>-<hash>`` of the base key and manifest hash."""
        digest = sha256_json({**self.base_key(), "manifest": manifest.sha256})[:12]
        return f"{self.adapter_cls.name}-{self.spec.name}-{digest}"

    def _check_drift(self, manifest: Manifest, root: str) -> None:
        """A changed dataset is an error: look for runs of this config on the same data root."""
        key = sha256_json(self.base_key())
        out = Path(self.cfg.out)
        if not out.is_dir():
            return
        for run_json in sorted(out.glob("*/run.json")):
            try:
                info = json.loads(run_json.read_text())
            except (OSError, ValueError):
                continue
            if (
                info.get("base_key") == key
                and info.get("data_root") == root
                and info.get("manifest_sha256") != manifest.sha256
            ):
                stored = read_manifest(run_json.parent / "manifest.json")
                check_same(stored, manifest, run_json.parent)

    # -- stages --------------------------------------------------------------------------
    def prepare(self) -> tuple[DatasetListing, Manifest, RunStore]:
        """List and validate the dataset, build the manifest and verify it against the run's."""
        listing = load_dataset(self.spec, self.cfg.data, self.cache_dir)
        manifest, _ = build_manifest(self.spec, listing, self.cache_dir)
        self._check_drift(manifest, str(listing.root))
        store = RunStore(Path(self.cfg.out) / self.run_id(manifest))
        if store.manifest_path.is_file():
            check_same(read_manifest(store.manifest_path), manifest, store.root)
        return listing, manifest, store

    def _write_run_files(
        self, listing: DatasetListing, manifest: Manifest, store: RunStore
    ) -> None:
        """Create the run folder (manifest and configuration) once every check has passed."""
        if not store.manifest_path.is_file():
            write_manifest(store.manifest_path, manifest)
        if not store.run_json.is_file():
            atomic_write_json(
                store.run_json,
                {
                    "run_id": store.root.name,
                    "model": self.adapter_cls.name,
                    "options": self.options,
                    "protocol": self.spec.identity(),
                    "protocol_label": self.spec.label,
                    "manifest_sha256": manifest.sha256,
                    "base_key": sha256_json(self.base_key()),
                    "data_root": str(listing.root),
                    "model_path": self.cfg.model_path,
                    "points": [point_id(p) for p in self.points],
                    "samples_per_point": sum(len(c.conditioning) for c in manifest.classes)
                    * self.spec.samples_per_cond,
                    "generation": self.generation(),
                    "created_at": _now(),
                },
            )

    def encoders_needed(self) -> list[str]:
        """Default encoder plus any a metric declares."""
        names = [self.spec.encoder]
        for m in self.spec.metrics:
            names += [e for e in metric_registry.get(m).encoders if e not in names]
        return names

    def make_encoder(self, name: str):
        """Instantiate an encoder with its local weights file, if given."""
        return encoder_registry.get(name)(weights=self.cfg.weights.get(name), device=self.device)

    def shard(self) -> tuple[int, int]:
        """(index, count) of this process: ``--shard`` refined by the torchrun rank."""
        index, count = self.cfg.shard
        return index * self.ranks.world + self.ranks.rank, count * self.ranks.world

    def execute(self) -> list[dict[str, Any]]:
        """Generate this process's shard of every point, then score the finished points.

        Returns the result rows (empty for a shard whose points are not all finished, and for
        torchrun ranks other than 0).
        """
        try:
            return self._execute()
        finally:
            self.ranks.close()

    def _execute(self) -> list[dict[str, Any]]:
        listing, manifest, store = self.prepare()
        encoders = {n: self.make_encoder(n) for n in self.encoders_needed()}
        for enc in encoders.values():
            enc.check_available()  # fail within seconds, before generating anything
        slots = sample_slots(manifest, self.spec.samples_per_cond, self.spec.seed)
        groups = generation_groups(slots, self.images_per_call, self.adapter_cls.group_by_condition)
        index, count = self.shard()
        my_groups = [g for gi, g in enumerate(groups) if gi % count == index]
        mine = [s for g in my_groups for s in g]
        for p in self.points:  # damaged samples are deleted here, so they count as missing
            verify_samples(store, point_id(p), mine)
        adapter: Adapter | None = None
        if any(store.missing(point_id(p), mine) for p in self.points):
            adapter = self.adapter_cls(
                self.options, model_path=self.cfg.model_path, device=self.device, dtype=self.dtype
            )
            adapter.check_available()  # weights missing: fail now, before the run folder exists
        self._write_run_files(listing, manifest, store)
        ready = False
        for point in self.points:
            pid = point_id(point)
            if store.missing(pid, mine):
                lock = FileLock(
                    store.point_dir(pid) / "locks" / f"generate-{index}of{count}.lock",
                    what=f"run {store.root.name}, point {pid}, shard {index}/{count}",
                )
                with lock:
                    store.remove_orphan_temps(pid, mine)  # a killed writer's partial files
                    missing = store.missing(pid, mine)  # the previous holder may have finished
                    if missing and not ready:
                        ready = True
                        adapter.setup(
                            RunContext(
                                protocol=self.spec,
                                manifest=manifest,
                                dataset=listing,
                                device=self.device,
                                dtype=self.dtype,
                                cache_dir=str(self.cache_dir),
                            )
                        )
                    if missing:
                        self._generate(adapter, listing, store, pid, point, my_groups)
            store.mark_shard_done(pid, index, count, len(mine))
        self.ranks.barrier()
        return self._score_finished(listing, manifest, store, slots, encoders, adapter)

    def _score_finished(self, listing, manifest, store, slots, encoders, adapter):
        """Score every finished point once (a lock per point), then write results.parquet."""
        finished = [p for p in self.points if not store.missing(point_id(p), slots)]
        for p in self.points:
            if p not in finished:
                log.info("point %s: waiting for other shards to finish", point_id(p))
        if self.ranks.distributed:  # every rank encodes its share of the feature chunks
            for point in finished:
                pid = point_id(point)
                ctx = _Context(self, listing, manifest, store, pid, slots, encoders)
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
                store.write_index(pid, slots)
                scored.append(
                    self._score(listing, manifest, store, pid, point, slots, encoders, adapter)
                )
            finally:
                lock.release()
        rows = [store.read_point_result(point_id(p)) for p in self.points]
        if all(rows):
            rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
            write_results(store.results_path, rows)
            return rows
        return scored

    def _generate(
        self,
        adapter: Adapter,
        listing: DatasetListing,
        store: RunStore,
        pid: str,
        point: dict[str, Any],
        groups: list[tuple[SampleSlot, ...]],
    ) -> None:
        """One ``adapter.generate`` call per group with a missing sample; each PNG written atomically.

        A group is regenerated whole (its other samples come out bit-identical) so that every
        sample is always made in the same model call as in an uninterrupted run.
        """
        resolution = int(self.options.get("resolution") or self.spec.resolution)
        cond_cache: dict[str, np.ndarray] = {}
        point_dir = store.point_dir(pid)
        timing_path = point_dir / "timing.json"
        nan_path = point_dir / "nan.json"
        warnings_path = point_dir / "warnings.json"
        timing = _read_json(timing_path, {"seconds": 0.0, "images": 0})
        nan_slots = set(_read_json(nan_path, []))
        todo = [(g, store.missing(pid, list(g))) for g in groups]
        todo = [(g, miss) for g, miss in todo if miss]
        total = sum(len(miss) for _, miss in todo)
        with progress_bar(f"generating {self.adapter_cls.name} {pid}", total) as advance:
            for group, missing in todo:
                requests = []
                for cond_id in dict.fromkeys(s.cond_id for s in group):
                    members = [s for s in group if s.cond_id == cond_id]
                    if cond_id not in cond_cache:
                        cond_cache = {cond_id: read_rgb(listing.path(cond_id))}
                    first = members[0]
                    requests.append(
                        Request(
                            cond_image=cond_cache[cond_id],
                            cond_id=cond_id,
                            class_name=first.class_name,
                            class_label=first.class_label,
                            class_index=first.class_index,
                            sample_indices=tuple(s.sample_index for s in members),
                            seeds=tuple(s.seed for s in members),
                            point=dict(point),
                            resolution=resolution,
                        )
                    )
                t0 = time.perf_counter()
                outputs = adapter.generate(requests)
                elapsed = time.perf_counter() - t0
                events = adapter.drain_warnings()
                if events:
                    for event in events:
                        log.warning("%s %s: %s", self.adapter_cls.name, pid, event)
                    atomic_write_json(warnings_path, _read_json(warnings_path, []) + events)
                if len(outputs) != len(requests):
                    raise RuntimeError(
                        f"adapter {self.adapter_cls.name} returned {len(outputs)} results for {len(requests)} requests"
                    )
                wanted = {s.relpath for s in missing}
                images: list[tuple[SampleSlot, np.ndarray]] = []
                for req, imgs in zip(requests, outputs, strict=True):
                    if len(imgs) != len(req.sample_indices):
                        raise RuntimeError(
                            f"adapter {self.adapter_cls.name} returned {len(imgs)} images for {len(req.sample_indices)} samples"
                        )
                    members = [s for s in group if s.cond_id == req.cond_id]
                    for slot, img in zip(members, imgs, strict=True):
                        arr, had_nan = _as_uint8(img)
                        if arr.ndim != 3 or arr.shape[2] != 3:
                            raise RuntimeError(
                                f"adapter {self.adapter_cls.name} returned an image of shape {arr.shape}; expected HxWx3"
                            )
                        if slot.relpath not in wanted:
                            continue  # on disk already, and bit-identical to this one
                        if had_nan:
                            nan_slots.add(slot.relpath)
                        images.append((slot, arr))
                if nan_slots:
                    atomic_write_json(nan_path, sorted(nan_slots))  # before the PNGs exist
                for slot, arr in images:
                    atomic_write_png(store.sample_path(pid, slot), arr)
                timing["seconds"] += elapsed
                timing["images"] += len(group)
                atomic_write_json(timing_path, timing)
                advance(len(images))

    def _score(
        self,
        listing: DatasetListing,
        manifest: Manifest,
        store: RunStore,
        pid: str,
        point: dict[str, Any],
        slots: list[SampleSlot],
        encoders: dict[str, Any],
        adapter: Adapter | None,
    ) -> dict[str, Any]:
        """Compute (or reuse) the result row of one finished sweep point."""
        metric_names = list(self.spec.metrics)
        config = {
            "metrics": metric_names,
            "metric_options": self.metric_options,
            "encoders": {n: e.cache_key() for n, e in encoders.items()},
        }
        ctx = _Context(self, listing, manifest, store, pid, slots, encoders)
        # the samples' pixel hashes are part of the key: a changed sample is never trusted
        config_key = sha256_json({**config, "samples": sha256_json(ctx.fake_hashes)})
        stored = store.read_point_result(pid)
        if stored and stored.get("_config_key") == config_key:
            return {k: v for k, v in stored.items() if not k.startswith("_")}
        ctx.prefetch(Ranks())  # same feature chunks as a torchrun job splits across ranks
        values: dict[str, Any] = {}
        for name in metric_names:
            metric = metric_registry.get(name)()
            values.update(metric.compute(ctx))
            artifacts = metric.artifacts(ctx)
            if artifacts:
                atomic_write_json(store.point_dir(pid) / "artifacts" / f"{name}.json", artifacts)
        timing = _read_json(store.point_dir(pid) / "timing.json", {"seconds": 0.0, "images": 0})
        n_nan = len(_read_json(store.point_dir(pid) / "nan.json", []))
        gen_warnings = _read_json(store.point_dir(pid) / "warnings.json", [])
        extra = adapter.provenance() if adapter is not None else (stored or {}).get("_extra", {})
        row = {
            "run_id": store.root.name,
            "model": self.adapter_cls.name,
            "protocol": self.spec.label,
            "protocol_version": self.spec.version,
            "params": json_field(point),
            "options": json_field(self.adapter_cls.fixed_options(self.options)),
            "guidance_convention": self.adapter_cls.guidance_convention,
            "encoder": self.spec.encoder,
            "prepare": self.spec.image_prep.label,
            "n_samples": len(slots),
            "n_real": len(manifest.references),
            "n_classes": len(manifest.classes),
            "n_black": ctx.n_black,
            "n_nan": n_nan,
            "source": "varbench",
            "seed": self.spec.seed,
            "manifest_sha256": manifest.sha256,
            "device": self.device,
            "dtype": self.dtype,
            "wall_time_s": float(timing["seconds"]),
            "images_per_s": float(timing["images"] / timing["seconds"])
            if timing["seconds"] > 0
            else None,
            **environment(),
            "created_at": _now(),
            "images_per_call": self.images_per_call,
            "generation_warnings": len(gen_warnings),
            "model_path": self.cfg.model_path or "",
            "extra": json_field({**extra, "generation": self.generation()}),
            "notes": "; ".join(
                ["NOT bit-identical to a run without these events: " + " | ".join(gen_warnings)]
                if gen_warnings
                else []
            ),
            **values,
        }
        atomic_write_json(
            store.point_result_path(pid), {**row, "_config_key": config_key, "_extra": extra}
        )
        return row


class _Context:
    """MetricContext over one finished point: features through the content-keyed cache."""

    def __init__(self, run: Run, listing, manifest, store, pid, slots, encoders):
        self.run = run
        self.prep = run.spec.image_prep  # every scored image passes through it
        self.default_encoder = run.spec.encoder
        self.seed = run.spec.seed
        self.options = run.metric_options
        self.listing = listing
        self.encoders = encoders
        self._caches: dict[tuple[str, str], FeatureCache] = {}
        refs = manifest.references
        self.real_hashes = [manifest.pixel_sha256[r] for _, r in refs]
        self.real_class = np.array([c.index for c, _ in refs])
        conds = [(c, f) for c in manifest.classes for f in c.conditioning]
        self.cond_hashes = [manifest.pixel_sha256[f] for _, f in conds]
        cond_row = {f: i for i, (_, f) in enumerate(conds)}
        self.fake_cond_index = np.array([cond_row[s.cond_id] for s in slots])
        self.fake_class = np.array([s.class_index for s in slots])
        self.class_labels = [c.label for c in sorted(manifest.classes, key=lambda c: c.index)]
        self._manifest = manifest
        self.paths: dict[str, Path] = {}
        for _, r in refs:
            self.paths[manifest.pixel_sha256[r]] = listing.path(r)
        self.fake_hashes, self.n_black = self._hash_samples(store, pid, slots)

    def _hash_samples(self, store: RunStore, pid: str, slots) -> tuple[list[str], int]:
        known = sample_hashes(store, pid, slots)
        out, n_black = [], 0
        for s in slots:
            digest, black = known[s.relpath]
            self.paths.setdefault(digest, store.sample_path(pid, s))
            out.append(digest)
            n_black += int(black)
        return out, n_black

    def _cache(self, name: str, output: str) -> FeatureCache:
        key = (name, output)
        if key not in self._caches:
            self._caches[key] = FeatureCache(
                self.run.cache_dir, self.encoder(name), output, self.prep
            )
        return self._caches[key]

    def prefetch(self, ranks: Ranks) -> None:
        """Encode the default encoder's missing features in fixed chunks, rank r taking r::world.

        Sets go in a fixed order (references, samples, conditioning images) and each set's
        missing hashes are sorted and cut into ``chunk_size`` chunks, so every chunk holds the
        same images whether one process or a torchrun job computes it.
        """
        cache = self._cache(self.default_encoder, "features")
        size = cache.encoder.chunk_size()
        for what, hashes in (
            ("reference features", self.real_hashes),
            ("sample features", self.fake_hashes),
            ("conditioning features", self.cond_hashes),
        ):
            rows = cache._load()
            missing = sorted(set(hashes) - rows.keys())
            chunks = [missing[i : i + size] for i in range(0, len(missing), size)]
            share = [h for c in chunks[ranks.rank :: ranks.world] for h in c]
            if share:
                cache.features(share, lambda h: read_rgb(self.paths[h]), what)
            ranks.barrier()

    def encoder(self, name: str | None = None):
        """The encoder instance (e.g. for CLIP text embeddings or LPIPS distances)."""
        name = name or self.default_encoder
        if name not in self.encoders:
            self.encoders[name] = self.run.make_encoder(name)
        return self.encoders[name]

    def _features(
        self, hashes: list[str], encoder: str | None, output: str, what: str
    ) -> np.ndarray:
        name = encoder or self.default_encoder
        return self._cache(name, output).features(hashes, lambda h: read_rgb(self.paths[h]), what)

    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self._features(self.real_hashes, encoder, output, "reference features")

    def image(self, digest: str) -> np.ndarray:
        """Prepared image (HxWx3 uint8) of a reference, sample, conditioning or held-out hash."""
        return self.prep(read_rgb(self.paths[digest]))

    def features_of(
        self, hashes: Sequence[str], encoder: str | None = None, output: str = "features"
    ) -> np.ndarray:
        """Cached features of any images this context knows by hash (e.g. ``heldout``)."""
        return self._features(list(hashes), encoder, output, "features")

    def heldout(self, per_class: int) -> tuple[list[str], np.ndarray]:
        """Pixel hashes and class indices of the first ``per_class`` held-out images per class."""
        hashes, classes = [], []
        for c in self._manifest.classes:
            for rel in c.heldout[:per_class]:
                path = self.listing.path(rel)
                digest = pixel_sha256(read_rgb(path))
                self.paths.setdefault(digest, path)
                hashes.append(digest)
                classes.append(c.index)
        return hashes, np.array(classes, dtype=int)

    def fake(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self._features(self.fake_hashes, encoder, output, "sample features")

    def cond(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self._features(self.cond_hashes, encoder, output, "conditioning features")


def _read_json(path: Path, default: Any) -> Any:
    """A JSON file's content; ``default`` when absent, and with a warning when damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    except OSError as exc:
        log.warning("cannot read %s (%s); it is rebuilt", path, exc)
        return default
    try:
        value = json.loads(data)
    except ValueError:
        log.warning("damaged %s (not JSON); it is rebuilt from the files it describes", path)
        return default
    if not isinstance(value, type(default)):
        log.warning("damaged %s (unexpected content); it is rebuilt", path)
        return default
    return value


def sample_hashes(
    store: RunStore, pid: str, slots: Sequence[SampleSlot], drop_damaged: bool = False
) -> dict[str, tuple[str, bool]]:
    """relpath -> (pixel hash, all black) of the slots' samples on disk, via ``hashes.json``.

    An entry is trusted only while the file's size and mtime match it; otherwise the PNG is
    decoded in full. A sample that does not decode raises, or with ``drop_damaged`` is deleted
    with a warning naming it (it then counts as missing and its group is regenerated).
    """
    hashes_path = store.point_dir(pid) / "hashes.json"
    known = _read_json(hashes_path, {})
    out: dict[str, tuple[str, bool]] = {}
    changed = False
    for s in slots:
        path = store.sample_path(pid, s)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        hit = known.get(s.relpath)
        if isinstance(hit, list) and len(hit) == 4 and hit[:2] == stamp:
            out[s.relpath] = (str(hit[2]), bool(hit[3]))
            continue
        try:
            arr = read_rgb(path)
        except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged sample
            if not drop_damaged:
                raise RuntimeError(f"damaged sample {path}: {exc}") from exc
            log.warning("damaged sample %s (%s): deleted; its group is regenerated", path, exc)
            path.unlink(missing_ok=True)
            known.pop(s.relpath, None)
            changed = True
            continue
        digest, black = pixel_sha256(arr), bool(arr.max() == 0)
        known[s.relpath] = [*stamp, digest, black]
        out[s.relpath] = (digest, black)
        changed = True
    if changed:
        atomic_write_json(hashes_path, known)
    return out


def verify_samples(store: RunStore, pid: str, slots: Sequence[SampleSlot]) -> None:
    """Delete (with a warning) any of these samples that no longer decode."""
    if store.point_dir(pid).is_dir():
        sample_hashes(store, pid, slots, drop_damaged=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: RunConfig) -> list[dict[str, Any]]:
    """Entry point used by the CLI and tests."""
    return Run(cfg).execute()


__all__ = ["RunConfig", "Run", "run", "parse_sets", "ManifestMismatchError"]
