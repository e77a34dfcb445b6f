"""Scoring two image folders (or a folder against a reference statistics file) without a run."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from varbench.core.env import default_cache_dir
from varbench.metrics import metric_options, metric_registry
from varbench.score.contexts import FolderContext, folder_prep
from varbench.score.point import check_weights, resolve_metric_names
from varbench.score.statsfile import score_against_file

log = logging.getLogger(__name__)


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
    if Path(real_dir).is_file():  # a reference batch / statistics file (varbench.score.statsfile)
        return score_against_file(
            real_dir, fake_dir, metrics, encoder, weights, sets, device, cache_dir, prepare,
            resolution,
        )  # fmt: skip
    prep = folder_prep(prepare, resolution)
    names = resolve_metric_names(metrics)
    options = metric_options(sets or {})
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
    check_weights(ctx, names)
    values: dict[str, Any] = {}
    for name in names:
        values.update(metric_registry.get(name)().compute(ctx))
    return values
