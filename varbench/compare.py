"""Is A better than B? Paired differences of two runs of one protocol and manifest.

Two runs of the same protocol and manifest share every reference and conditioning image, so
most of the sampling noise of their metrics is common to both and cancels in the difference.
The interval of T_A - T_B therefore uses the SAME class half-samples for both runs (the draws of
``varbench.metrics.bootstrap.half_samples``, which depend only on the class layout and the
protocol seed, so each run's own interval used them too): each replicate b gives
d_b = T_A(half b) - T_B(half b), and the 95 % interval is d +- 1.96 sd(d_b), as for one run.
The verdict says which run is better when the interval excludes 0, respecting each metric's
direction (lower FID is better; higher precision/recall is better); otherwise "undecided".
Coverage of the true difference and the width gain over unpaired intervals were checked by
simulation (tests/test_compare.py, benchmarks/paired_comparison.py, docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from varbench.errors import UsageError
from varbench.metrics.bootstrap import (
    DEFAULT_REPLICATES,
    Z95,
    half_sample_replicates,
)
from varbench.metrics.fid import fid_from_features
from varbench.metrics.prdc import PrecisionRecallPlan

log = logging.getLogger(__name__)

METRICS = ("fid", "precision", "recall")  # the half-sampled statistics, in their column order
DIRECTION = {"fid": -1, "precision": 1, "recall": 1}  # +1: higher is better
A_BETTER, B_BETTER, UNDECIDED = "A better", "B better", "undecided"


# -- pure functions on arrays ---------------------------------------------------------------
def estimates(
    real: np.ndarray,
    fake: np.ndarray,
    real_class: np.ndarray,
    fake_class: np.ndarray,
    replicates: int,
    seed: int,
    k: int = 3,
) -> tuple[np.ndarray, str, np.ndarray]:
    """(full-sample (FID, precision, recall), method, (B, 3) half-sample values) of one run."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    plan = PrecisionRecallPlan(real, fake)
    pr = plan(k=k)
    estimate = np.array([fid_from_features(real, fake), pr["precision"], pr["recall"]])
    method, reps = half_sample_replicates(
        real, fake, real_class, fake_class, replicates, seed, k, plan
    )
    return estimate, method, reps


def paired_interval(
    est_a: np.ndarray, reps_a: np.ndarray, est_b: np.ndarray, reps_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A - B, lo, hi) per statistic; ``reps_a``/``reps_b`` must come from the same half-samples."""
    diff = np.asarray(est_a, np.float64) - np.asarray(est_b, np.float64)
    d = np.asarray(reps_a, np.float64) - np.asarray(reps_b, np.float64)
    sd = d.std(axis=0, ddof=1) if len(d) > 1 else np.zeros_like(diff)
    return diff, diff - Z95 * sd, diff + Z95 * sd


def unpaired_interval(
    est_a: np.ndarray, reps_a: np.ndarray, est_b: np.ndarray, reps_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A - B, lo, hi) treating the runs as independent: sd = sqrt(sd_A^2 + sd_B^2).

    What two separate intervals imply; kept for the simulation that measures the paired gain.
    """
    diff = np.asarray(est_a, np.float64) - np.asarray(est_b, np.float64)
    sd = np.sqrt(reps_a.std(axis=0, ddof=1) ** 2 + reps_b.std(axis=0, ddof=1) ** 2)
    return diff, diff - Z95 * sd, diff + Z95 * sd


def verdict(metric: str, lo: float, hi: float) -> str:
    """A better / B better / undecided from the interval of A - B and the metric's direction."""
    if lo > 0:
        return A_BETTER if DIRECTION[metric] > 0 else B_BETTER
    if hi < 0:
        return B_BETTER if DIRECTION[metric] > 0 else A_BETTER
    return UNDECIDED


# -- one finished run's features ----------------------------------------------------------
@dataclass(frozen=True)
class PointFeatures:
    """What a paired comparison needs of one finished sweep point (all from the run folder)."""

    run_id: str
    pid: str
    manifest_sha256: str
    real_hashes: tuple[str, ...]
    real: np.ndarray
    fake: np.ndarray
    real_class: np.ndarray
    fake_class: np.ndarray
    fake_cond: tuple[str, ...]  # conditioning file of each sample, in canonical order
    seed: int  # the protocol seed: the half-sample draws of the run's own intervals
    replicates: int


def point_features(
    run_dir: Path,
    pid: str,
    row: Mapping[str, Any],
    cache_dir: Path | None = None,
    weights: Mapping[str, str] | None = None,
    device: str = "cpu",
) -> PointFeatures:
    """Reference and sample features of one finished point, through the content-keyed cache.

    The one place that reads a run's internals (for the lead to rewire onto the score room):
    ``run.json`` (``protocol.prepare``, ``protocol.seed``), ``manifest.json`` (references, classes,
    pixel hashes, data root), ``points/<pid>/index.json`` (sample files, classes, conditioning
    files, in canonical order), ``points/<pid>/hashes.json`` (sample pixel hashes, trusted only
    while size and mtime match, as ``runner.sample_hashes`` does), the row's ``encoder`` and
    ``interval_replicates``, and ``FeatureCache(cache, encoder, "features", prep)``: the same
    cache key as the run's metric context, so finished runs cost no encoding.
    """
    from varbench.encoders import encoder_registry
    from varbench.features import FeatureCache
    from varbench.hashing import pixel_sha256
    from varbench.io import read_rgb
    from varbench.manifest import read_manifest
    from varbench.prepare import ImagePrep
    from varbench.results import default_cache_dir

    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    manifest = read_manifest(run_dir / "manifest.json")
    point_dir = run_dir / "points" / pid
    try:
        index = json.loads((point_dir / "index.json").read_text())
    except (OSError, ValueError):
        raise UsageError(
            f"{point_dir}: no readable index.json (the point is not finished); re-run "
            f"`varbench run` for {info.get('model')} to finish it"
        ) from None
    try:
        known = json.loads((point_dir / "hashes.json").read_text())
    except (OSError, ValueError):
        known = {}
    protocol = info.get("protocol") or {}
    prep_id = protocol.get("prepare") or {}
    prep = ImagePrep(prep_id.get("name", "none"), prep_id.get("resolution"))
    root = Path(info.get("data_root") or manifest.root)
    paths: dict[str, Path] = {}
    refs = manifest.references
    real_hashes = [manifest.pixel_sha256[r] for _, r in refs]
    for (_, r), digest in zip(refs, real_hashes, strict=True):
        paths.setdefault(digest, root / r)
    class_index = {c.name: c.index for c in manifest.classes}
    fake_hashes = []
    for entry in index:
        path = point_dir / entry["file"]
        rel = entry["file"].removeprefix("samples/")
        hit = known.get(rel)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UsageError(
                f"{path}: sample listed in {point_dir / 'index.json'} is missing; re-run "
                f"`varbench run` for {info.get('model')} to regenerate it"
            ) from None
        if isinstance(hit, list) and len(hit) == 4 and hit[:2] == [st.st_size, st.st_mtime_ns]:
            digest = str(hit[2])
        else:
            digest = pixel_sha256(read_rgb(path))
        paths.setdefault(digest, path)
        fake_hashes.append(digest)
    name = str(row.get("encoder") or "")
    if name not in encoder_registry:
        raise UsageError(f"run {run_dir.name}: unknown encoder {name!r} in its results")
    encoder = encoder_registry.get(name)(weights=(weights or {}).get(name), device=device)
    cache = FeatureCache(Path(cache_dir or default_cache_dir()), encoder, "features", prep)

    def load(digest: str) -> np.ndarray:
        return read_rgb(paths[digest])

    if set(real_hashes + fake_hashes) - cache._load().keys():
        encoder.check_available()
    reps = row.get("interval_replicates")
    return PointFeatures(
        run_id=run_dir.name,
        pid=pid,
        manifest_sha256=manifest.sha256,
        real_hashes=tuple(real_hashes),
        real=cache.features(real_hashes, load, "reference features"),
        fake=cache.features(fake_hashes, load, "sample features"),
        real_class=np.array([c.index for c, _ in refs]),
        fake_class=np.array([class_index[e["class"]] for e in index]),
        fake_cond=tuple(str(e["cond"]) for e in index),
        seed=int(protocol.get("seed", 0)),
        replicates=int(reps) if reps and reps == reps and reps > 0 else DEFAULT_REPLICATES,
    )


# -- comparing two finished points ---------------------------------------------------------
def compare_points(
    a: PointFeatures, b: PointFeatures, metrics: Sequence[str] = METRICS, k: int = 3
) -> dict[str, dict[str, Any]]:
    """Per metric: values of A and B, A - B with its paired 95 % interval, and the verdict."""
    if a.manifest_sha256 != b.manifest_sha256 or a.real_hashes != b.real_hashes:
        raise UsageError(
            f"runs {a.run_id} and {b.run_id} have different manifests "
            f"({a.manifest_sha256[:12]} vs {b.manifest_sha256[:12]}): a paired comparison needs "
            "the same protocol, data and manifest"
        )
    if a.fake_cond != b.fake_cond or not np.array_equal(a.fake_class, b.fake_class):
        raise UsageError(
            f"runs {a.run_id} and {b.run_id} lay out their samples differently (another "
            "samples_per_cond?): their samples cannot be paired"
        )
    replicates = max(a.replicates, b.replicates)
    est_a, method, reps_a = estimates(
        a.real, a.fake, a.real_class, a.fake_class, replicates, a.seed, k
    )
    est_b, _, reps_b = estimates(b.real, b.fake, b.real_class, b.fake_class, replicates, a.seed, k)
    diff, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
    out = {}
    for m in metrics:
        c = METRICS.index(m)
        out[m] = {
            "a": float(est_a[c]),
            "b": float(est_b[c]),
            "diff": float(diff[c]),
            "lo": float(lo[c]),
            "hi": float(hi[c]),
            "verdict": verdict(m, float(lo[c]), float(hi[c])),
            "method": f"paired_{method}",
            "replicates": replicates,
        }
    return out


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The requested metrics, each one a paired comparison supports (else one clear error)."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UsageError(
            f"--metrics {','.join(bad)}: no paired interval for these; supported: "
            f"{', '.join(METRICS)} (the statistics the class half-samples recompute)"
        )
    return list(dict.fromkeys(metrics)) or list(METRICS)


def _run_of(runs, model: str, protocol: str):
    found = [r for r in runs if r.model == model]
    if not found:
        have = sorted({r.model for r in runs})
        raise UsageError(
            f"--models: no finished run of {model!r} for protocol {protocol} "
            f"(runs found for: {', '.join(have) or 'none'})"
        )
    if len(found) > 1:
        raise UsageError(
            f"--models: {len(found)} runs of {model!r} for protocol {protocol} "
            f"({', '.join(r.run_id for r in found)}); pass --runs a folder holding one of them"
        )
    return found[0]


def compare_runs(
    runs_dir: Path,
    protocol: str,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = METRICS,
    cache_dir: Path | None = None,
    weights: Mapping[str, str] | None = None,
    k: int = 3,
) -> list[dict[str, Any]]:
    """One row per matched sweep point and metric: A - B, its paired interval, the verdict."""
    from varbench.runview import load_runs

    metrics = check_metrics(metrics)
    runs = load_runs(runs_dir, [protocol])
    ra, rb = _run_of(runs, model_a, protocol), _run_of(runs, model_b, protocol)
    points_b = {p.pid: p for p in rb.points}
    matched = [(p, points_b[p.pid]) for p in ra.points if p.pid in points_b]
    if not matched:
        raise UsageError(
            f"no sweep point in common: {model_a} has {', '.join(p.pid for p in ra.points)}; "
            f"{model_b} has {', '.join(points_b)}"
        )
    rows = []
    for pa, pb in matched:
        fa = point_features(ra.folder, pa.pid, pa.row, cache_dir, weights)
        fb = point_features(rb.folder, pb.pid, pb.row, cache_dir, weights)
        for m, r in compare_points(fa, fb, metrics, k).items():
            rows.append({"protocol": protocol, "point": pa.pid, "metric": m,
                         "model_a": model_a, "model_b": model_b, **r})  # fmt: skip
    return rows


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain text: one line per point and metric."""
    head = ["point", "metric", "A", "B", "A-B", "95% interval", "verdict"]
    lines = ["\t".join(head)]
    for r in rows:
        lines.append("\t".join([
            r["point"], r["metric"], f"{r['a']:.6g}", f"{r['b']:.6g}", f"{r['diff']:+.6g}",
            f"[{r['lo']:+.6g}, {r['hi']:+.6g}]",
            {A_BETTER: f"{r['model_a']} better", B_BETTER: f"{r['model_b']} better"}.get(
                r["verdict"], UNDECIDED),
        ]))  # fmt: skip
    return "\n".join(lines) + "\n"


# -- best point of each model against the best model (leaderboard json, report) -------------
def best_point_comparisons(
    runs, cache_dir: Path | None = None, weights: Mapping[str, str] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """(run_id, params) -> paired comparison of that run's best point against the best model's.

    Per protocol and manifest: each run's best point is its lowest-FID point, the best model is
    the run whose best point has the lowest FID. A run whose features cannot be read (weights
    or data missing here) gets an ``error`` entry instead of numbers.
    """
    from varbench.runview import finite

    out: dict[tuple[str, str], dict[str, Any]] = {}
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        pts = [p for p in run.points if finite(p.row.get("fid")) is not None]
        if pts:
            best = min(pts, key=lambda p: float(p.row["fid"]))
            key = (run.protocol, str(best.row.get("manifest_sha256", "")))
            groups.setdefault(key, []).append((run, best))
    for members in groups.values():
        if len(members) < 2:
            continue
        top_run, top = min(members, key=lambda m: float(m[1].row["fid"]))
        try:
            ft = point_features(top_run.folder, top.pid, top.row, cache_dir, weights)
        except Exception as exc:  # noqa: BLE001 - a display aid must not break the leaderboard
            log.warning("paired comparison skipped for %s: %s", top_run.run_id, exc)
            continue
        for run, best in members:
            if run is top_run:
                continue
            key = (run.run_id, str(best.row.get("params")))
            try:
                fp = point_features(run.folder, best.pid, best.row, cache_dir, weights)
                res = compare_points(fp, ft)
            except Exception as exc:  # noqa: BLE001 - shown as an error entry, not a crash
                out[key] = {"against": top_run.model, "error": str(exc)}
                continue
            for r in res.values():
                r["better"] = {A_BETTER: run.model, B_BETTER: top_run.model}.get(
                    r["verdict"], UNDECIDED
                )
            out[key] = {"against": top_run.model, "against_point": top.pid, **res}
    return out


def attach_to_leaderboard(df, runs_dir: Path, cache_dir: Path | None = None):
    """A ``vs_best`` column (dict or None) on measured rows, for ``leaderboard --format json``."""
    from varbench.runview import load_runs

    try:
        runs = load_runs(runs_dir)
    except UsageError:
        return df
    found = best_point_comparisons(runs, cache_dir)
    df = df.copy()
    if "run_id" not in df.columns:
        return df
    df["vs_best"] = [
        found.get((str(rid), str(params)))
        for rid, params in zip(df["run_id"], df["params"], strict=True)
    ]
    return df
