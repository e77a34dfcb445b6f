"""Scoring room: one metric context over images known by pixel hash, used by runs and folders.

A run's finished sweep point (generated or imported samples) and `varbench metrics` on two
folders are scored the same way: features through the content-keyed cache, registered metrics
on them, one result row. Nothing here generates; nothing here knows the runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from varbench.core.files import read_json_or, read_rgb
from varbench.core.hashing import pixel_sha256
from varbench.core.images import policy_warnings_silenced, read_dataset_image
from varbench.encoders import encoder_registry
from varbench.errors import DatasetError, UsageError
from varbench.metrics import metric_options, metric_registry
from varbench.plan.datasets import IMAGE_EXTENSIONS, check_image_file
from varbench.plan.imageprep import ImagePrep, check_preparation
from varbench.plan.manifest import Manifest
from varbench.plan.planner import listing_of_run
from varbench.plan.protocol import ProtocolSpec, protocol_of_run
from varbench.plan.slots import SampleSlot
from varbench.runs.store import RunStore, sample_hashes
from varbench.score.features import FeatureCache

log = logging.getLogger(__name__)


def folder_prep(prepare: str | None, resolution: int | None) -> ImagePrep:
    """The preparation named by ``--prepare``/``--resolution``; a mismatch names both flags."""
    name = check_preparation(prepare or "none", "--prepare")
    if name == "none":
        if resolution is not None:
            raise UsageError(
                f"--resolution {resolution} needs --prepare NAME (e.g. --prepare adm_center_crop)"
            )
        return ImagePrep()
    if resolution is None:
        raise UsageError(f"--prepare {name} needs --resolution R (e.g. --resolution 512)")
    return ImagePrep(name, resolution)


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted); an empty folder is a usage error."""
    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: not a folder")
    files = sorted(
        Path(root) / f
        for root, _, names in os.walk(folder)
        for f in names
        if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


class FeatureContext:
    """Features and prepared images of images known by pixel hash, via the content-keyed cache."""

    def __init__(
        self,
        prep: ImagePrep,
        default_encoder: str,
        seed: int,
        options: Mapping[str, Any],
        cache_dir: Path,
        make_encoder: Callable[[str], Any],
        encoders: dict[str, Any] | None = None,
        decode: Callable[[Path], np.ndarray] = read_rgb,
    ):
        self.prep = prep  # every scored image passes through it
        self.default_encoder = default_encoder
        self.seed = seed
        self.options = dict(options)
        self.cache_dir = Path(cache_dir)
        self._make_encoder = make_encoder
        self.encoders: dict[str, Any] = encoders if encoders is not None else {}
        self._decode_file = decode
        self._caches: dict[tuple[str, str], FeatureCache] = {}
        self.shared: dict[Any, Any] = {}  # per-point plans the metrics share (metrics/shared.py)
        self.paths: dict[str, Path] = {}  # pixel hash -> a file holding those pixels

    def encoder(self, name: str | None = None):
        """The encoder instance (e.g. for CLIP text embeddings or LPIPS distances)."""
        name = name or self.default_encoder
        if name not in self.encoders:
            self.encoders[name] = self._make_encoder(name)
        return self.encoders[name]

    def _cache(self, name: str, output: str) -> FeatureCache:
        key = (name, output)
        if key not in self._caches:
            self._caches[key] = FeatureCache(self.cache_dir, self.encoder(name), output, self.prep)
        return self._caches[key]

    def _decoded(self, digest: str) -> np.ndarray:
        return self._decode_file(self.paths[digest])

    def image(self, digest: str) -> np.ndarray:
        """Prepared image (HxWx3 uint8) of any image this context knows by hash."""
        return self.prep(self._decoded(digest))

    def features_of(
        self,
        hashes: Sequence[str],
        encoder: str | None = None,
        output: str = "features",
        what: str = "features",
    ) -> np.ndarray:
        """Cached features of images known by hash, in order."""
        name = encoder or self.default_encoder
        return self._cache(name, output).features(list(hashes), self._decoded, what)


class FolderContext(FeatureContext):
    """MetricContext over two folders (no conditioning images, no classes)."""

    def __init__(
        self,
        real_dir: Path,
        fake_dir: Path,
        encoder: str,
        weights: Mapping[str, str],
        device: str,
        cache_dir: Path,
        options: Mapping[str, Any],
        seed: int = 0,
        prep: ImagePrep | None = None,
    ):
        self.weights = dict(weights)
        self.device = device
        super().__init__(
            prep or ImagePrep(),
            encoder,
            seed,
            options,
            cache_dir,
            self._checked_encoder,
            decode=read_dataset_image,
        )
        self.real_hashes = self._hash(real_dir)
        self.fake_hashes = self._hash(fake_dir)
        self.real_class = np.zeros(len(self.real_hashes), dtype=int)
        self.fake_class = np.zeros(len(self.fake_hashes), dtype=int)
        self.fake_cond_index = np.full(len(self.fake_hashes), -1)

    def _checked_encoder(self, name: str):
        """The encoder created with its local weights file, if one was given; missing weights fail."""
        enc = encoder_registry.get(name)(weights=self.weights.get(name), device=self.device)
        enc.check_available()
        return enc

    def _hash(self, folder: Path) -> list[str]:
        """Pixel hashes of the folder's images in order, each decoded under the image policy
        (``varbench.core.images``, as for datasets); every rejected file is listed in one error."""
        from concurrent.futures import ThreadPoolExecutor

        files = list_images(folder)
        with (
            policy_warnings_silenced(),
            ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool,
        ):
            out = list(pool.map(check_image_file, files))
        problems = sorted(problem for _, problem in out if problem)
        if problems:
            raise DatasetError(str(folder), problems, "nothing was scored")
        for f, (digest, _) in zip(files, out, strict=True):
            self.paths.setdefault(digest, f)
        return [digest for digest, _ in out]

    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.real_hashes, encoder, output, output)

    def fake(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.fake_hashes, encoder, output, output)

    def cond(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        raise UsageError(
            "this metric needs conditioning images, which two folders do not have; "
            "score it inside `varbench run`"
        )

    def heldout(self, per_class: int) -> tuple[list[str], np.ndarray]:
        raise UsageError("this metric needs held-out real images; score it inside `varbench run`")


@dataclass(frozen=True)
class ScoreSetup:
    """What scoring a run needs from its configuration (passed down by the runner)."""

    spec: ProtocolSpec
    metric_options: Mapping[str, Any]
    cache_dir: Path
    device: str
    weights: Mapping[str, str]

    def make_encoder(self, name: str):
        """Instantiate an encoder with its local weights file, if given."""
        return encoder_registry.get(name)(weights=self.weights.get(name), device=self.device)

    def encoders_needed(self) -> list[str]:
        """Default encoder plus any a metric declares."""
        names = [self.spec.encoder]
        for m in self.spec.metrics:
            names += [e for e in metric_registry.get(m).encoders if e not in names]
        return names


class PointContext(FeatureContext):
    """MetricContext over one finished sweep point of a run: references, samples, conditioning."""

    def __init__(
        self,
        setup: ScoreSetup,
        listing,
        manifest: Manifest,
        store: RunStore,
        pid: str,
        slots: Sequence[SampleSlot],
        encoders: dict[str, Any],
    ):
        spec = setup.spec
        super().__init__(
            spec.image_prep,
            spec.encoder,
            spec.seed,
            setup.metric_options,
            setup.cache_dir,
            setup.make_encoder,
            encoders,
        )
        self.listing = listing
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
        for _, r in refs:
            self.paths[manifest.pixel_sha256[r]] = listing.path(r)
        self.fake_hashes, self.n_black = self._hash_samples(store, pid, slots)

    @classmethod
    def from_run(
        cls,
        run_dir: Path,
        pid: str,
        cache_dir: Path | None = None,
        weights: Mapping[str, str] | None = None,
        device: str = "cpu",
    ) -> PointContext:
        """The context a finished point of a run folder was scored with, rebuilt from the folder
        (``run.json``, ``manifest.json``, the point's ``result.json``) for later readers such as
        ``varbench compare``: same images, preparation, default encoder, seed and metric options,
        hence the same feature cache keys (a finished run costs no encoding)."""
        from varbench.core.env import default_cache_dir
        from varbench.plan.manifest import read_manifest
        from varbench.plan.slots import sample_slots

        run_dir = Path(run_dir)
        store = RunStore(run_dir)
        info = read_json_or(run_dir / "run.json", {})
        stored = store.read_point_result(pid) if info else None
        if not stored:
            raise UsageError(
                f"{store.point_dir(pid)}: not a finished, scored point (no run.json or "
                "result.json); re-run `varbench run` for this model to finish it"
            )
        spec = protocol_of_run(info, str(run_dir / "run.json"), str(stored.get("encoder") or ""))
        if spec.encoder not in encoder_registry:
            raise UsageError(f"run {run_dir.name}: unknown encoder {spec.encoder!r} in its results")
        recorded = stored.get("_metric_options")
        if recorded is None:  # scored before varbench recorded them: the defaults were in force
            log.warning(
                "%s: no recorded metric options (scored by an older varbench); assuming the "
                "defaults (e.g. prc_k=3); to record them, delete %s and re-run the same "
                "`varbench run` command (it re-scores, regenerating nothing)",
                store.point_dir(pid),
                store.point_dir(pid) / "result.json",
            )
            recorded = {}
        options = metric_options(recorded, str(store.point_result_path(pid)))
        setup = ScoreSetup(
            spec, options, Path(cache_dir or default_cache_dir()), device, dict(weights or {})
        )
        manifest = read_manifest(run_dir / "manifest.json")
        root = str(info.get("data_root") or manifest.root)
        listing = listing_of_run(info, spec, root, setup.cache_dir)
        slots = sample_slots(manifest, spec.samples_per_cond, spec.seed)
        gone = store.missing(pid, slots)
        if gone:
            raise UsageError(
                f"{store.sample_path(pid, gone[0])}: sample missing ({len(gone)} in all); re-run "
                f"`varbench run` for {info.get('model')} to regenerate it"
            )
        return cls(setup, listing, manifest, store, pid, slots, {})

    def _hash_samples(self, store: RunStore, pid: str, slots) -> tuple[list[str], int]:
        known = sample_hashes(store, pid, slots)
        out, n_black = [], 0
        for s in slots:
            digest, black = known[s.relpath]
            self.paths.setdefault(digest, store.sample_path(pid, s))
            out.append(digest)
            n_black += int(black)
        return out, n_black

    def prefetch(self, ranks) -> None:
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
                cache.features(share, self._decoded, what)
            ranks.barrier()

    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.real_hashes, encoder, output, "reference features")

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
        return self.features_of(self.fake_hashes, encoder, output, "sample features")

    def cond(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.cond_hashes, encoder, output, "conditioning features")
