"""Scoring two image folders with registered metrics (`varbench metrics`), and `varbench fetch`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from varbench.datasets import IMAGE_EXTENSIONS, check_image_file
from varbench.encoders import encoder_registry
from varbench.errors import DatasetError, UsageError
from varbench.features import FeatureCache
from varbench.imageio import policy_warnings_silenced, read_dataset_image
from varbench.metrics import METRIC_OPTIONS, metric_registry
from varbench.prepare import ImagePrep, check_preparation
from varbench.registry import suggest

log = logging.getLogger(__name__)


def resolve_metric_names(requested: Sequence[str]) -> list[str]:
    """Registry names for names or result keys (``precision`` -> ``precision_recall``), in order."""
    by_key: dict[str, str] = {}
    for name in metric_registry.names():
        for key in metric_registry.get(name).keys:
            by_key.setdefault(key, name)
    out: list[str] = []
    for item in requested:
        name = item if item in metric_registry else by_key.get(item)
        if name is None:
            known = sorted(set(metric_registry.names()) | set(by_key))
            raise UsageError(
                f"--metrics: unknown metric {item!r}.{suggest(item, known)} Known: {', '.join(known)}"
            )
        if name not in out:
            out.append(name)
    return out


def parse_metric_options(sets: Mapping[str, str]) -> dict[str, Any]:
    """Typed metric options from ``--set``; unknown keys and bad values are usage errors."""
    out: dict[str, Any] = {}
    for key, value in sets.items():
        if key not in METRIC_OPTIONS:
            raise UsageError(
                f"--set {key}=…: unknown metric option.{suggest(key, list(METRIC_OPTIONS))} "
                f"Options: {', '.join(METRIC_OPTIONS)}."
            )
        try:
            out[key] = METRIC_OPTIONS[key](value)
        except ValueError:
            raise UsageError(
                f"--set {key}={value!r}: expected {METRIC_OPTIONS[key].__name__}"
            ) from None
    return out


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


class FolderContext:
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
        self.prep = prep or ImagePrep()
        self.default_encoder = encoder
        self.seed = seed
        self.options = dict(options)
        self.weights = dict(weights)
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.encoders: dict[str, Any] = {}
        self._caches: dict[tuple[str, str], FeatureCache] = {}
        self.paths: dict[str, Path] = {}
        self.real_hashes = self._hash(real_dir)
        self.fake_hashes = self._hash(fake_dir)
        self.real_class = np.zeros(len(self.real_hashes), dtype=int)
        self.fake_class = np.zeros(len(self.fake_hashes), dtype=int)
        self.fake_cond_index = np.full(len(self.fake_hashes), -1)

    def _hash(self, folder: Path) -> list[str]:
        """Pixel hashes of the folder's images in order, each decoded under the image policy
        (``varbench.imageio``, as for datasets); every rejected file is listed in one error."""
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

    def encoder(self, name: str | None = None):
        """The encoder instance, created with its local weights file if one was given."""
        name = name or self.default_encoder
        if name not in self.encoders:
            enc = encoder_registry.get(name)(weights=self.weights.get(name), device=self.device)
            enc.check_available()
            self.encoders[name] = enc
        return self.encoders[name]

    def image(self, digest: str) -> np.ndarray:
        """Prepared image by pixel hash."""
        return self.prep(read_dataset_image(self.paths[digest]))

    def _decoded(self, digest: str) -> np.ndarray:
        return read_dataset_image(self.paths[digest])

    def features_of(
        self, hashes: Sequence[str], encoder: str | None = None, output: str = "features"
    ) -> np.ndarray:
        """Cached features of images known by hash."""
        name = encoder or self.default_encoder
        key = (name, output)
        if key not in self._caches:
            self._caches[key] = FeatureCache(self.cache_dir, self.encoder(name), output, self.prep)
        return self._caches[key].features(list(hashes), self._decoded, output)

    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.real_hashes, encoder, output)

    def fake(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        return self.features_of(self.fake_hashes, encoder, output)

    def cond(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        raise UsageError(
            "this metric needs conditioning images, which two folders do not have; "
            "score it inside `varbench run`"
        )

    def heldout(self, per_class: int) -> tuple[list[str], np.ndarray]:
        raise UsageError("this metric needs held-out real images; score it inside `varbench run`")


def score_folders(
    real_dir: Path,
    fake_dir: Path,
    metrics: Sequence[str],
    encoder: str = "inception",
    weights: Mapping[str, str] | None = None,
    sets: Mapping[str, str] | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
    prepare: str | None = None,
    resolution: int | None = None,
) -> dict[str, Any]:
    """Values of the requested metrics between two folders (flat dict of result keys).

    ``prepare``/``resolution`` apply a named preparation to both folders' images first
    (default: none, so the numbers equal torch-fidelity's on the same folders).
    """
    from varbench.results import default_cache_dir

    if Path(real_dir).is_file():  # a reference batch / statistics file (varbench.statsfile)
        from varbench.statsfile import score_against_file

        return score_against_file(
            real_dir, fake_dir, metrics, encoder, weights, sets, device, cache_dir, prepare,
            resolution,
        )  # fmt: skip
    prep = folder_prep(prepare, resolution)
    names = resolve_metric_names(metrics)
    options = parse_metric_options(sets or {})
    ctx = FolderContext(
        real_dir,
        fake_dir,
        encoder,
        weights or {},
        device,
        Path(cache_dir or default_cache_dir()),
        options,
        prep=prep,
    )
    for name in [encoder, *(e for n in names for e in metric_registry.get(n).encoders)]:
        ctx.encoder(name)  # fail within seconds if any weights are missing
    values: dict[str, Any] = {}
    for name in names:
        values.update(metric_registry.get(name)().compute(ctx))
    return values


def fetch(
    encoders: Sequence[str] = (), protocol: str | None = None, model: str | None = None
) -> list[dict[str, str]]:
    """Download what the named encoders / protocol / model need into the usual caches."""
    names = list(encoders)
    if protocol:
        from varbench.protocol import load_protocol

        spec = load_protocol(protocol)
        names += [spec.encoder]
        for m in spec.metrics:
            names += list(metric_registry.get(m).encoders)
    if not names and not model:
        raise UsageError("nothing to fetch: pass --protocol P, --encoders a,b or --model M")
    done: list[dict[str, str]] = []
    for name in dict.fromkeys(names):
        enc = encoder_registry.get(name)()
        if not hasattr(enc, "fetch"):
            done.append({"encoder": name, "status": "no weights needed"})
            continue
        local = enc.weights_path() if hasattr(enc, "weights_path") else None
        if local is not None:
            done.append({"encoder": name, "status": "present", "path": str(local)})
            continue
        log.info("fetching weights of encoder %s", name)
        done.append({"encoder": name, "status": "fetched", "path": str(enc.fetch())})
    if model:
        from varbench.adapter import get_adapter_class

        cls = get_adapter_class(model)
        adapter = cls(cls.resolve_options({}), device="cpu", dtype="float32")
        for item in adapter.fetch():
            done.append({"model": model, "status": "fetched", "path": str(item)})
    return done
