"""Reference statistics files in and out: ADM reference batches, clean-fid and torch-fidelity
statistics, and varbench's own (``varbench stats``), so a run can be scored without the images.

Layouts read (all learnt from the packages' own code):

* ADM (guided-diffusion ``evaluations/evaluator.py``): ``.npz`` with images in ``arr_0``
  (N, H, W, 3) uint8 in [0, 255], and/or precomputed ``mu``/``sigma`` of Inception pool3
  (plus ``mu_s``/``sigma_s`` of the spatial features, not used here). When images are present
  they are encoded with the chosen encoder, so every metric works and the features are the
  same rows a folder of the same images gets (the cache is keyed by pixel hash).
* clean-fid ``make_custom_stats``: ``.npz`` with ``mu``, ``sigma`` (and a ``*_kid.npz`` with the
  features in ``feats``, which this module reads as features).
* torch-fidelity's cache: ``<input>-<extractor>-stat-fid-<layer>.pt`` (a dict with numpy
  ``mu``, ``sigma``, saved by ``torch.save``) and ``<input>-<extractor>-features-<layer>.pt``
  (a 2-D tensor of features); read with ``torch.load(weights_only=True)``, never unpickling code.
* varbench (``write_stats``): ``mu`` and ``sigma`` in the ADM layout (float64) plus a
  ``varbench`` JSON member naming the encoder, its cache key, the preparation and the count.

A file that does not say which encoder and preparation made it (every foreign layout) is taken
to hold Inception pool3 (2048-d) statistics: only the ``inception`` encoder may use it, and its
preparation cannot be checked (a warning says so).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from varbench.core.env import default_cache_dir
from varbench.core.files import atomic_write_bytes
from varbench.core.hashing import pixel_sha256
from varbench.core.images import read_dataset_image
from varbench.errors import UsageError
from varbench.metrics import metric_options, metric_registry
from varbench.metrics.fid import KEY_FID
from varbench.metrics.gaussian import fid_features_to_statistics, fid_statistics_to_metric
from varbench.plan.imageprep import ImagePrep
from varbench.score.contexts import FeatureContext, FolderContext, folder_prep
from varbench.score.point import check_weights, resolve_metric_names

log = logging.getLogger(__name__)

FORMAT = "varbench-reference-statistics"
FORMAT_VERSION = 1
META_KEY = "varbench"
FOREIGN_ENCODER = "inception"  # what ADM, clean-fid and torch-fidelity statistics hold
FOREIGN_DIM = 2048


class StatisticsMismatchError(UsageError):
    """A statistics file made with another encoder, preparation or dimension than the run."""


@dataclass
class ReferenceFile:
    """What one reference file holds: images, features, or only (mu, sigma), and its provenance."""

    path: Path
    layout: str
    images: np.ndarray | None = None  # (N, H, W, 3) uint8
    features: np.ndarray | None = None  # (N, D)
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # varbench's provenance, {} if foreign

    @property
    def stats_only(self) -> bool:
        return self.images is None and self.features is None

    @property
    def dim(self) -> int | None:
        if self.features is not None:
            return int(self.features.shape[1])
        if self.mu is not None:
            return int(self.mu.shape[0])
        return None

    def describe(self) -> str:
        """One phrase for errors: encoder, preparation and dimension the file was made with."""
        if self.meta:
            enc = (
                f"encoder {self.meta.get('encoder')} (key {str(self.meta.get('encoder_key'))[:12]})"
            )
            prep = f"preparation {self.meta.get('prepare_label')}"
        else:
            enc = f"encoder {FOREIGN_ENCODER} pool3 (assumed: a {self.layout} file does not say)"
            prep = "preparation unknown"
        return f"{self.path} holds {enc}, {prep}, dimension {self.dim}"


def is_reference_file(path: Path) -> bool:
    """True for a file argument to ``--real`` (a folder is scored as images)."""
    return Path(path).is_file()


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(
            f"--real {path}: not a readable .npz ({type(exc).__name__}: {exc}); expected an ADM "
            "reference batch (arr_0 or mu/sigma), clean-fid statistics or `varbench stats` output"
        ) from None


def _torch_members(path: Path) -> dict[str, np.ndarray]:
    import torch

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    safe = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    safe += [
        getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType") if hasattr(np, "dtypes")
    ]
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not one we can read
        raise UsageError(
            f"--real {path}: not a torch-fidelity statistics or features file that loads without "
            f"unpickling code ({type(exc).__name__}); expected a dict with mu/sigma or a 2-D tensor"
        ) from None
    if isinstance(obj, torch.Tensor):
        return {"features": obj.detach().cpu().numpy()}
    if isinstance(obj, Mapping):
        return {str(k): np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in obj.items()}
    raise UsageError(f"--real {path}: holds a {type(obj).__name__}, not mu/sigma or features")


def read_reference(path: Path) -> ReferenceFile:
    """Read a reference file of any supported layout; a malformed one is one clear error."""
    path = Path(path)
    if path.suffix == ".pt":
        members = _torch_members(path)
        layout = "torch-fidelity"
    elif path.suffix == ".npz":
        members = _npz_members(path)
        layout = "ADM" if ("arr_0" in members or "mu_s" in members) else "clean-fid/ADM mu-sigma"
    else:
        raise UsageError(
            f"--real {path}: a file must be .npz (ADM batch, clean-fid or varbench statistics) "
            "or .pt (torch-fidelity statistics); for images pass a folder"
        )
    meta: dict[str, Any] = {}
    if META_KEY in members:
        try:
            meta = json.loads(str(members[META_KEY]))
        except ValueError:
            raise UsageError(f"--real {path}: damaged '{META_KEY}' member (not JSON)") from None
        if meta.get("format") != FORMAT:
            raise UsageError(f"--real {path}: '{META_KEY}' member is not {FORMAT}")
        layout = "varbench"
    ref = ReferenceFile(path=path, layout=layout, meta=meta)
    if "arr_0" in members:
        imgs = members["arr_0"]
        if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8 or len(imgs) < 2:
            raise UsageError(
                f"--real {path}: arr_0 has shape {imgs.shape} and dtype {imgs.dtype}; an ADM "
                "reference batch holds (N >= 2, H, W, 3) uint8 images"
            )
        ref.images = imgs
    feats = members.get("feats", members.get("features"))
    if feats is not None and ref.images is None:
        if feats.ndim != 2 or len(feats) < 2:
            raise UsageError(
                f"--real {path}: features of shape {feats.shape}; expected (N >= 2, D)"
            )
        ref.features = np.asarray(feats, np.float64)
    if "mu" in members or "sigma" in members:
        if "mu" not in members or "sigma" not in members:
            raise UsageError(f"--real {path}: has only one of mu, sigma; both are needed")
        mu, sigma = np.asarray(members["mu"], np.float64), np.asarray(members["sigma"], np.float64)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise UsageError(
                f"--real {path}: mu {mu.shape} and sigma {sigma.shape} do not fit (need (D,), (D, D))"
            )
        ref.mu, ref.sigma = mu, sigma
    if ref.images is None and ref.features is None and ref.mu is None:
        raise UsageError(
            f"--real {path}: none of arr_0 (images), mu/sigma (statistics) or feats (features); "
            f"members: {', '.join(sorted(members)) or 'none'}"
        )
    if ref.images is not None and ref.mu is not None:
        log.info("%s: encoding its images (arr_0); its precomputed mu/sigma are not used", path)
        ref.mu = ref.sigma = None
    return ref


def check_compatible(ref: ReferenceFile, encoder, prep: ImagePrep, dim: int | None) -> None:
    """Raise one error naming both sides when a statistics/features file does not fit the run.

    Images are encoded by the run's encoder, so only statistics and features are checked.
    """
    if ref.images is not None:
        return
    problems = []
    if ref.meta:
        if ref.meta.get("encoder_key") != encoder.cache_key():
            problems.append("encoder")
        if ref.meta.get("prepare") != prep.identity():
            problems.append("preparation")
    else:
        if encoder.name != FOREIGN_ENCODER:
            problems.append("encoder")
        log.warning(
            "%s (%s layout) does not record how its images were prepared; varbench cannot check "
            "that it matches --prepare %s",
            ref.path,
            ref.layout,
            prep.label,
        )
    if dim is not None and ref.dim != dim:
        problems.append("dimension")
    if problems:
        raise StatisticsMismatchError(
            f"--real {ref.path}: {', '.join(problems)} mismatch: {ref.describe()}; this run uses "
            f"encoder {encoder.name} (key {encoder.cache_key()[:12]}), preparation {prep.label}, "
            f"dimension {dim}. Fix: recompute the file with `varbench stats --real DIR "
            f"--encoder {encoder.name}` and this run's --weights/--prepare/--resolution, "
            "or pass the image folder"
        )


class ReferenceContext(FolderContext):
    """MetricContext whose references come from a file (images or features) or folder."""

    def __init__(
        self,
        ref: ReferenceFile | None,
        real_dir: Path | None,
        fake_dir: Path | None,
        encoder: str,
        weights: Mapping[str, str],
        device: str,
        cache_dir: Path,
        options: Mapping[str, Any],
        prep: ImagePrep,
        seed: int = 0,
    ):
        self.weights = dict(weights)
        self.device = device
        FeatureContext.__init__(
            self,
            prep,
            encoder,
            seed,
            options,
            cache_dir,
            self._checked_encoder,
            decode=read_dataset_image,
        )
        self._arrays: dict[str, np.ndarray] = {}
        self.ref = ref
        self.metric = ""  # the metric being computed, named by the stats-only error
        if ref is not None and ref.images is not None:
            self.real_hashes = []
            for img in ref.images:
                digest = pixel_sha256(img)
                self._arrays.setdefault(digest, img)
                self.real_hashes.append(digest)
        elif real_dir is not None:
            self.real_hashes = self._hash(real_dir)
        else:
            self.real_hashes = []
        self.fake_hashes = self._hash(fake_dir) if fake_dir is not None else []
        n_real = len(self.real_hashes) or (
            len(ref.features) if ref and ref.features is not None else 0
        )
        self.real_class = np.zeros(n_real, dtype=int)
        self.fake_class = np.zeros(len(self.fake_hashes), dtype=int)
        self.fake_cond_index = np.full(len(self.fake_hashes), -1)

    def _decoded(self, digest: str) -> np.ndarray:
        if digest in self._arrays:
            return self._arrays[digest]
        return super()._decoded(digest)

    def image(self, digest: str) -> np.ndarray:
        return self.prep(self._decoded(digest))

    def real(self, encoder: str | None = None, output: str = "features") -> np.ndarray:
        """Reference features: encoded images, the file's own features, or a clear error."""
        ref = self.ref
        if ref is None or ref.images is not None:
            return super().real(encoder, output)
        name = encoder or self.default_encoder
        if ref.features is not None and name == self.default_encoder and output == "features":
            return ref.features
        what = "features" if ref.features is None else f"{name} {output}"
        raise UsageError(
            f"--metrics {self.metric}: needs reference {what}, but {ref.path} holds only "
            f"{'statistics (mu, sigma)' if ref.features is None else 'default-encoder features'}. "
            "Fix: pass the reference image folder or an ADM batch with images (arr_0) to --real, "
            "or ask only for fid"
        )


def _fid_from_statistics(ref: ReferenceFile, fake: np.ndarray) -> dict[str, float]:
    mu, sigma = fid_features_to_statistics(fake)
    return {KEY_FID: fid_statistics_to_metric(ref.mu, ref.sigma, mu, sigma)}


# Metrics computable from the references' (mu, sigma) alone, in the default feature space.
FROM_STATISTICS: dict[str, Callable[[ReferenceFile, np.ndarray], dict[str, float]]] = {
    "fid": _fid_from_statistics,
}


def score_against_file(
    ref_path: Path,
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
    """``varbench metrics`` with ``--real`` a reference file instead of a folder."""
    prep = folder_prep(prepare, resolution)
    names = resolve_metric_names(metrics)
    options = metric_options(sets or {})
    ref = read_reference(ref_path)
    ctx = ReferenceContext(
        ref, None, fake_dir, encoder, weights or {}, device,
        Path(cache_dir or default_cache_dir()), options, prep,
    )  # fmt: skip
    enc = ctx.encoder()
    check_compatible(ref, enc, prep, None)  # encoder and preparation before any encoding
    if ref.stats_only:
        needs = [n for n in names if n not in FROM_STATISTICS]
        if needs:
            raise UsageError(
                f"--metrics {','.join(needs)}: need reference features, but {ref_path} holds only "
                "statistics (mu, sigma), from which only "
                f"{', '.join(FROM_STATISTICS)} can be computed. Fix: pass the reference image "
                "folder or an ADM batch with images (arr_0) to --real, or drop these metrics"
            )
    check_weights(ctx, names)
    fake = ctx.fake()
    check_compatible(ref, enc, prep, int(fake.shape[1]))
    values: dict[str, Any] = {}
    for name in names:
        ctx.metric = name
        if ref.stats_only:
            values.update(FROM_STATISTICS[name](ref, fake))
        else:
            values.update(metric_registry.get(name)().compute(ctx))
    return values


def reference_statistics(
    real_dir: Path,
    encoder: str = "inception",
    weights: Mapping[str, str] | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
    prepare: str | None = None,
    resolution: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, provenance) of a folder's images in an encoder's feature space."""
    import varbench

    prep = folder_prep(prepare, resolution)
    ctx = ReferenceContext(
        None, Path(real_dir), None, encoder, weights or {}, device,
        Path(cache_dir or default_cache_dir()), {}, prep,
    )  # fmt: skip
    enc = ctx.encoder()
    feats = ctx.real()
    if len(feats) < 2:
        raise UsageError(
            f"--real {real_dir}: statistics need at least 2 images, found {len(feats)}"
        )
    mu, sigma = fid_features_to_statistics(feats)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": enc.name,
        "encoder_key": enc.cache_key(),
        "encoder_config": enc.config(),
        "prepare": prep.identity(),
        "prepare_label": prep.label,
        "n_images": len(feats),
        "dim": int(feats.shape[1]),
        "images_sha256": _hash_list(ctx.real_hashes),
        "varbench_version": getattr(varbench, "__version__", ""),
    }
    return mu, sigma, meta


def _hash_list(hashes: Sequence[str]) -> str:
    from varbench.core.hashing import sha256_json

    return sha256_json(sorted(hashes))


def write_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, meta: Mapping[str, Any]) -> Path:
    """Write ``mu``, ``sigma`` (ADM layout, float64) and varbench's provenance, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UsageError(f"--out {path}: must end in .npz (the ADM / clean-fid layout)")
    buf = io.BytesIO()
    np.savez(
        buf,
        mu=np.asarray(mu, np.float64),
        sigma=np.asarray(sigma, np.float64),
        **{META_KEY: np.array(json.dumps(dict(meta), sort_keys=True, default=str))},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = [
    "ReferenceFile",
    "StatisticsMismatchError",
    "read_reference",
    "check_compatible",
    "score_against_file",
    "reference_statistics",
    "write_stats",
]
