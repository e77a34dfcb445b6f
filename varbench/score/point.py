"""Scoring one sweep point: which metrics, their options, the cached result row and its key."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from varbench.core.files import atomic_write_json, read_json_or
from varbench.core.hashing import sha256_json
from varbench.core.registry import suggest
from varbench.errors import UsageError
from varbench.metrics import metric_registry
from varbench.runs.store import RunStore
from varbench.score.contexts import FeatureContext, PointContext, ScoreSetup

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


def score_point(
    setup: ScoreSetup,
    ctx: PointContext,
    store: RunStore,
    pid: str,
    encoders: Mapping[str, Any],
    row: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]],
    provenance: Callable[[dict[str, Any] | None], dict[str, Any]],
) -> dict[str, Any]:
    """Compute (or reuse) the result row of one finished sweep point.

    ``row(values, extra)`` builds the row from the metric values; ``provenance(stored)`` gives
    the source's provenance (the stored one when nothing new is known). A stored row is reused
    only while metrics, options, encoders and the samples' pixel hashes are unchanged.
    """
    metric_names = list(setup.spec.metrics)
    config = {
        "metrics": metric_names,
        "metric_options": dict(setup.metric_options),
        "encoders": {n: e.cache_key() for n, e in encoders.items()},
    }
    # the samples' pixel hashes are part of the key: a changed sample is never trusted
    config_key = sha256_json({**config, "samples": sha256_json(ctx.fake_hashes)})
    stored = store.read_point_result(pid)
    if stored and stored.get("_config_key") == config_key:
        return {k: v for k, v in stored.items() if not k.startswith("_")}
    from varbench.core.cluster import Ranks

    ctx.prefetch(Ranks())  # same feature chunks as a torchrun job splits across ranks
    values: dict[str, Any] = {}
    for name in metric_names:
        metric = metric_registry.get(name)()
        values.update(metric.compute(ctx))
        artifacts = metric.artifacts(ctx)
        if artifacts:
            atomic_write_json(store.point_dir(pid) / "artifacts" / f"{name}.json", artifacts)
    extra = provenance((stored or {}).get("_extra"))
    out = row(values, extra)
    atomic_write_json(
        store.point_result_path(pid),
        {
            **out,
            "_config_key": config_key,
            "_extra": extra,
            "_metric_options": dict(setup.metric_options),  # read by PointContext.from_run
        },
    )
    return out


def point_bookkeeping(store: RunStore, pid: str) -> tuple[dict, int, list]:
    """(timing, NaN sample count, generation warnings) recorded while a point was generated."""
    point_dir = store.point_dir(pid)
    timing = read_json_or(point_dir / "timing.json", {"seconds": 0.0, "images": 0})
    n_nan = len(read_json_or(point_dir / "nan.json", []))
    return timing, n_nan, read_json_or(point_dir / "warnings.json", [])


def check_weights(ctx: FeatureContext, names: Sequence[str]) -> None:
    """Create the default encoder and every encoder the metrics declare: missing weights fail
    within seconds, before any image is encoded."""
    for name in [ctx.default_encoder, *(e for n in names for e in metric_registry.get(n).encoders)]:
        ctx.encoder(name)
