"""Shared base of the diffusers image-variation adapters (sd_iv, versatile_diffusion, ip_adapter).

It owns what the three have in common: the run-time parameters (steps, resolution, dtype,
scheduler), locating weights (``--model-path``, the HF cache, else a download of
exactly the files needed), the scheduler swap, device/dtype placement with the safety checker off,
the sampling loop (``adapters.hf.sample_requests``) and the provenance record. Subclasses say which
files they need, how to load the pipeline and how to call it on one ``SampleJob``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from varbench.adapter import Adapter, Param, Request, RunContext
from varbench.errors import UsageError, WeightsUnavailableError

from . import hf

log = logging.getLogger(__name__)

SCHEDULERS = ("default", "ddim", "pndm", "dpm")
DTYPE_CHOICES = ("auto", *hf.DTYPES)


def common_params(scheduler: str = "default") -> tuple[Param, ...]:
    """Run-time parameters every diffusers adapter takes (``--set KEY=VALUE``)."""
    return (
        Param("steps", int, 50, "number of denoising steps"),
        Param("resolution", int, 0, "output side in pixels, a multiple of 8 (0: the protocol's)"),
        Param(
            "dtype",
            str,
            "auto",
            "weights dtype: auto follows --dtype (float16 on GPU); CPU always runs float32",
            choices=DTYPE_CHOICES,
        ),
        Param(
            "scheduler",
            str,
            scheduler,
            "sampler: default (the checkpoint's own), ddim (eta 0), pndm (PLMS) or dpm (DPM-Solver++)",
            choices=SCHEDULERS,
        ),
    )


def swap_scheduler(pipe: Any, name: str) -> None:
    """Replace ``pipe.scheduler`` by the named sampler built from the checkpoint's noise schedule."""
    if name == "default":
        return
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    config = pipe.scheduler.config
    if name == "ddim":  # latent diffusion never clips x0 to [-1, 1]
        pipe.scheduler = DDIMScheduler.from_config(config, clip_sample=False)
    elif name == "pndm":
        pipe.scheduler = PNDMScheduler.from_config(config, skip_prk_steps=True)
    elif name == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++"
        )
    else:
        raise UsageError(f"--set scheduler={name}: choose one of {', '.join(SCHEDULERS)}")


FileSpec = str | tuple[str, ...]  # a file, or alternatives in order of preference


def _options(spec: FileSpec) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) else tuple(spec)


class WeightsSource:
    """One Hub repository (or local folder) an adapter loads from, and the files it needs."""

    def __init__(
        self,
        model: str,
        repo_id: str,
        revision: str | None,
        files: Sequence[FileSpec],
        extra_patterns: Sequence[str] = (),
        local: str | None = None,
        flag: str = "--model-path",
    ) -> None:
        self.model = model
        self.repo_id = repo_id
        self.revision = revision
        self.files = tuple(files)  # each must exist (one of the alternatives)
        self.extra_patterns = tuple(extra_patterns)  # also fetched (e.g. "tokenizer/*")
        self.local = local
        self.flag = flag

    def _missing(self, folder: Path) -> list[str]:
        return [
            " or ".join(_options(spec))
            for spec in self.files
            if not any((folder / rel).is_file() for rel in _options(spec))
        ]

    def cached(self) -> str | None:
        """The local folder (given or in the HF cache) holding every needed file, or None."""
        if self.local:
            path = Path(self.local).expanduser()
            if not path.is_dir():
                raise UsageError(f"{self.flag} {self.local}: no such folder")
            missing = self._missing(path)
            if missing:
                raise UsageError(
                    f"{self.flag} {self.local}: not a {self.repo_id} layout; missing {', '.join(missing)}"
                )
            return str(path)
        snap = hf.local_snapshot(self.repo_id, self.revision)
        return snap if snap is not None and not self._missing(Path(snap)) else None

    def check(self) -> None:
        """Fail within seconds unless the files are local or the Hub can serve them."""
        if self.cached() is None:
            hf.check_hub_reachable(self.model, self.repo_id, self.revision)

    def fetch(self) -> str:
        """Download the needed files (the first available of each alternative) into the HF cache."""
        if self.local:
            return str(Path(self.local).expanduser())
        hf.require_hub_for_fetch(self.repo_id, self.revision)
        from huggingface_hub import HfApi

        listed = set(HfApi().list_repo_files(self.repo_id, revision=self.revision))
        chosen, missing = [], []
        for spec in self.files:
            present = [rel for rel in _options(spec) if rel in listed]
            if present:
                chosen.append(present[0])
            else:
                missing.append(" or ".join(_options(spec)))
        if missing:
            raise WeightsUnavailableError(
                f"{self.repo_id} (revision {self.revision}) lacks files {self.model!r} needs: "
                f"{', '.join(missing)}"
            )
        return hf.fetch_snapshot(self.repo_id, self.revision, [*chosen, *self.extra_patterns])

    def path(self) -> str:
        """Local folder to load from: cached, else downloaded now (never a bare Hub id)."""
        found = self.cached()
        if found is not None:
            return found
        self.check()
        log.info("downloading %s (revision %s) for %s", self.repo_id, self.revision, self.model)
        return self.fetch()

    def describe(self, path: str | None) -> dict[str, Any]:
        """Provenance of the loaded weights: repo, revision, commit, folder."""
        return {
            "repo_id": self.repo_id if not self.local else None,
            "revision": self.revision if not self.local else None,
            "commit": hf.snapshot_commit(path) if path else None,
            "path": path,
        }


def single_repo_params(repo_id: str, revision: str) -> tuple[Param, ...]:
    """Guidance sweep 1, 4, 6, 8 (the paper's), the common keys and the repo's revision."""
    return (
        Param(
            "guidance",
            float,
            (1.0, 4.0, 6.0, 8.0),
            "guidance scale g (sd: 1 = unguided)",
            sweep=True,
        ),
        *common_params("default"),
        Param("revision", str, revision, "Hub revision of " + repo_id),
    )


class DiffusersVariationAdapter(Adapter):
    """Base of the diffusers adapters: subclasses implement ``sources``, ``load`` and ``call``."""

    guidance_convention = "sd"
    needs_weights = True
    # One pipeline call per generation group of 8 samples (may span conditioning images).
    images_per_call = 8

    pipe: Any = None

    # One Hub repo (sd_iv, versatile_diffusion): set these and ``sources`` needs no override.
    repo_id: ClassVar[str | None] = None
    default_revision: ClassVar[str] = "main"
    files: ClassVar[tuple] = ()

    # -- what subclasses provide -----------------------------------------------------------
    def sources(self) -> list[WeightsSource]:
        """The weights this adapter loads, in load order (default: the one ``repo_id``)."""
        if self.repo_id is None:
            raise NotImplementedError
        revision = str(self.options.get("revision") or self.default_revision)
        return [WeightsSource(self.name, self.repo_id, revision, self.files, local=self.model_path)]

    def load(self, paths: list[str], torch_dtype: Any) -> Any:
        """Build the pipeline from the local folders of ``sources()`` (safety checker off)."""
        raise NotImplementedError

    def call(self, job: hf.SampleJob, height: int, width: int) -> Sequence[np.ndarray]:
        """Run the pipeline on one job; return HxWx3 float images in [0, 1]."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    def __init__(self, options: Any, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        for g in self.options.get("guidance", ()):
            if float(g) < 1.0:
                raise UsageError(
                    f"--set guidance={g:g}: {self.name} uses the sd convention "
                    "eps(none) + g * (eps(c) - eps(none)), and diffusers switches guidance off "
                    "for g <= 1, so g < 1 would silently run unguided; use g >= 1 "
                    "(g = 1 is exactly unguided)"
                )

    def check_available(self) -> None:
        for source in self.sources():
            source.check()

    def fetch(self) -> list[str]:
        return [source.fetch() for source in self.sources()]

    def resolved_dtype(self) -> str:
        """float32 on CPU; else ``--set dtype`` or the runner's ``--dtype``."""
        wanted = str(self.options.get("dtype", "auto"))
        name = self.dtype if wanted == "auto" else wanted
        if self.device == "cpu" and name != "float32":
            log.warning("%s: %s requested on CPU; running float32", self.name, name)
            return "float32"
        return name

    def setup(self, context: RunContext) -> None:
        self.context = context
        import torch

        torch_dtype = hf.torch_dtype(self.resolved_dtype())
        self._paths = [source.path() for source in self.sources()]
        with warnings.catch_warnings():  # diffusers renames torch_dtype; older versions need it
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = self.load(self._paths, torch_dtype)
        swap_scheduler(pipe, str(self.options.get("scheduler", "default")))
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if getattr(pipe, "safety_checker", None) is not None:  # never: load() passes None
            raise RuntimeError("safety checker must be off (it blacks out images and skews FID)")
        self.pipe = pipe
        self._torch = torch
        log.info(
            "%s loaded on %s (%s), scheduler %s",
            self.name,
            self.device,
            self.resolved_dtype(),
            type(pipe.scheduler).__name__,
        )

    def output_size(self, job: hf.SampleJob) -> int:
        """Side of the generated images: ``--set resolution`` or the protocol's."""
        size = int(self.options.get("resolution") or 0) or int(job.resolution)
        if size <= 0 or size % 8:
            raise UsageError(f"--set resolution={size}: need a positive multiple of 8")
        return size

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        if self.pipe is None:
            raise RuntimeError(f"{self.name}: setup() must run before generate()")

        def run(job: hf.SampleJob) -> Sequence[np.ndarray]:
            size = self.output_size(job)
            with self._torch.inference_mode():
                return self.call(job, size, size)

        return hf.sample_requests(
            requests, run, group_by_condition=self.group_by_condition, on_backoff=self.warn
        )

    def attention_processors(self) -> list[str]:
        """Class names of the UNet's attention processors (AttnProcessor2_0 = torch SDPA)."""
        if self.pipe is None:
            return []
        unet = getattr(self.pipe, "unet", None) or getattr(self.pipe, "image_unet", None)
        return sorted({type(p).__name__ for p in unet.attn_processors.values()})

    def provenance(self) -> dict[str, Any]:
        import diffusers

        sources = self.sources()
        paths = getattr(self, "_paths", [None] * len(sources))
        return {
            "safety_checker": "off",
            "weights": [s.describe(p) for s, p in zip(sources, paths, strict=True)],
            "pipeline": type(self.pipe).__name__ if self.pipe is not None else None,
            "scheduler": type(self.pipe.scheduler).__name__ if self.pipe is not None else None,
            "steps": int(self.options.get("steps", 50)),
            "dtype": self.resolved_dtype(),
            "attention": self.attention_processors(),
            "noise": "one CPU torch.Generator per sample, seeded with the sample seed",
            "diffusers": diffusers.__version__,
        }
