"""Is A better than B? Paired differences of two runs of one protocol and manifest.

Two runs of the same protocol and manifest share every reference and conditioning image, so
most of the sampling noise of their metrics is common to both and cancels in the difference.
The interval of T_A - T_B therefore uses the SAME class half-samples for both runs (the draws of
``varbench.metrics.bootstrap.half_samples``, which depend only on the class layout and the
protocol seed, so each run's own interval used them too): each replicate b gives
d_b = T_A(half b) - T_B(half b), and the 95 % interval is d +- 1.96 sd(d_b), as for one run.
The verdict says which run is better when the interval excludes 0, respecting each metric's
direction (lower FID is better; higher precision/recall is better); otherwise "undecided".
FID, precision and recall use the replicates of the runs' own intervals; density, coverage,
KID and FD-DINOv2 are recomputed on the same class half-samples. k-NN sizes and KID subsets are
the ones the runs were scored with (``PointContext.from_run`` reads them from the run folder).
Coverage of the true difference and the width gain over unpaired intervals were checked by
simulation (tests/test_compare.py, benchmarks/paired_comparison.py, docs/metrics.md).
"""

from __future__ import annotations

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
    statistics,
)
from varbench.metrics.gaussian import fid_from_features
from varbench.metrics.keys import rank_value, result_key
from varbench.metrics.prdc import SubsetPrecisionRecall

log = logging.getLogger(__name__)

METRICS = ("fid", "precision", "recall")  # the runs' own interval statistics (bootstrap metric)
# every statistic with a class half-sample path here: the default three, plus the same
# half-samples applied to density (dc_k), KID (kid_subsets, kid_subset_size) and FD-DINOv2 (the
# dinov2_l features). Coverage has the path (``extra_values``) but is refused: its paired
# interval covered the true difference in 94 % of 200 simulated pairs of one design (12 classes
# x 8, d = 8) but 56 % of another (8 x 5, d = 4), where most half-samples leave the proportion
# of covered reference balls unchanged and the interval collapses (benchmarks/
# paired_comparison.py --extra coverage).
SUPPORTED = (*METRICS, "density", "kid", "fd_dinov2")
REFUSED = {"coverage": "its paired interval under-covers in small designs (56 % in simulation)"}
FEATURE_SPACE = {"fd_dinov2": "dinov2_l"}  # metrics outside the run's default encoder
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
    plan = SubsetPrecisionRecall(real, fake)
    estimate = statistics(real, fake, k, plan)
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
        return A_BETTER if result_key(metric).better > 0 else B_BETTER
    if hi < 0:
        return B_BETTER if result_key(metric).better > 0 else A_BETTER
    return UNDECIDED


def extra_values(
    metrics: Sequence[str],
    feats: Mapping[str | None, tuple[np.ndarray, np.ndarray]],
    options: Mapping[str, Any],
    real_rows: np.ndarray | None = None,
    fake_rows: np.ndarray | None = None,
) -> list[float]:
    """Density, coverage, KID or FD-DINOv2 on real[real_rows] and fake[fake_rows] (None: all),
    each computed by the function its registered metric calls, with the run's options."""
    from varbench.metrics.kid import kid_features_to_metric
    from varbench.metrics.prdc import density_coverage

    out, dc = [], None
    for m in metrics:
        real, fake = feats[FEATURE_SPACE.get(m)]
        r = real if real_rows is None else real[real_rows]
        f = fake if fake_rows is None else fake[fake_rows]
        if m in ("density", "coverage"):
            dc = dc or density_coverage(r, f, k=int(options.get("dc_k", 5)))
            out.append(float(dc[m]))
        elif m == "kid":
            kid = kid_features_to_metric(
                f,
                r,
                subsets=int(options.get("kid_subsets", 100)),
                subset_size=int(options.get("kid_subset_size", 1000)),
            )
            out.append(float(kid["kid"]))
        elif m == "fd_dinov2":
            out.append(fid_from_features(r, f))
        else:
            raise ValueError(f"no replicate path for {m!r}")
    return out


def extra_estimates(
    metrics: Sequence[str],
    feats: Mapping[str | None, tuple[np.ndarray, np.ndarray]],
    real_class: np.ndarray,
    fake_class: np.ndarray,
    replicates: int,
    seed: int,
    options: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """(full-sample values, (B, len(metrics)) half-sample values) of ``extra_values`` metrics,
    on the class half-samples of ``bootstrap.half_samples`` (the same draws as ``estimates``)."""
    from varbench.metrics.bootstrap import half_samples

    est = np.array(extra_values(metrics, feats, options), dtype=np.float64)
    _, draws = half_samples(real_class, fake_class, replicates, seed)
    reps = [extra_values(metrics, feats, options, ir, jf) for ir, jf in draws]
    return est, np.array(reps, dtype=np.float64).reshape(replicates, len(metrics))


# -- one finished run's features ----------------------------------------------------------
@dataclass(frozen=True)
class PointFeatures:
    """What a paired comparison needs of one finished sweep point, from the scoring room's
    ``PointContext.from_run`` (features through the content-keyed cache)."""

    run_id: str
    pid: str
    manifest_sha256: str
    real_hashes: tuple[str, ...]
    real: np.ndarray
    fake: np.ndarray
    real_class: np.ndarray
    fake_class: np.ndarray
    fake_cond: tuple[str, ...]  # conditioning image (pixel hash) of each sample, canonical order
    seed: int  # the protocol seed: the half-sample draws of the run's own intervals
    replicates: int
    options: Mapping[str, Any]  # the metric options the run was scored with (prc_k, dc_k, ...)
    ctx: Any = None  # the PointContext, for features in other spaces (fd_dinov2)

    @property
    def prc_k(self) -> int:
        return int(self.options.get("prc_k", 3))

    def features(self, space: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(reference, sample) features in the default space (None) or another encoder's."""
        if space is None:
            return self.real, self.fake
        return self.ctx.real(space), self.ctx.fake(space)


def point_features(
    run_dir: Path,
    pid: str,
    row: Mapping[str, Any],
    cache_dir: Path | None = None,
    weights: Mapping[str, str] | None = None,
    device: str = "cpu",
) -> PointFeatures:
    """Reference and sample features of one finished point (``PointContext.from_run``)."""
    from varbench.score.contexts import PointContext

    ctx = PointContext.from_run(run_dir, pid, cache_dir, weights, device)
    cached = ctx._cache(ctx.default_encoder, "features")._load().keys()
    if set(ctx.real_hashes + ctx.fake_hashes) - cached:  # encoding needed: weights must be here
        ctx.encoder().check_available()
    reps = row.get("interval_replicates")
    return PointFeatures(
        run_id=Path(run_dir).name,
        pid=pid,
        manifest_sha256=ctx._manifest.sha256,
        real_hashes=tuple(ctx.real_hashes),
        real=ctx.real(),
        fake=ctx.fake(),
        real_class=ctx.real_class,
        fake_class=ctx.fake_class,
        fake_cond=tuple(ctx.cond_hashes[i] for i in ctx.fake_cond_index),
        seed=int(ctx.seed),
        replicates=int(reps) if reps and reps == reps and reps > 0 else DEFAULT_REPLICATES,
        options=dict(ctx.options),
        ctx=ctx,
    )


# -- comparing two finished points ---------------------------------------------------------
def compare_points(
    a: PointFeatures, b: PointFeatures, metrics: Sequence[str] = METRICS
) -> dict[str, dict[str, Any]]:
    """Per metric: values of A and B, A - B with its paired 95 % interval, and the verdict.

    k-NN sizes and KID subsets are the ones each run was scored with, which must agree.
    """
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
    wanted, used = set(metrics), set()
    if wanted & {"precision", "recall"}:
        used.add("prc_k")
    if wanted & {"density", "coverage"}:
        used.add("dc_k")
    if "kid" in wanted:
        used |= {"kid_subsets", "kid_subset_size"}
    differ = sorted(o for o in used if a.options.get(o) != b.options.get(o))
    if differ:
        raise UsageError(
            f"runs {a.run_id} and {b.run_id} were scored with different metric options ("
            + ", ".join(f"{o}: {a.options.get(o, 'default')} vs {b.options.get(o, 'default')}"
                        for o in differ)
            + "): re-score one with the other's --set values to compare them"
        )  # fmt: skip
    replicates = max(a.replicates, b.replicates)
    out = {}
    base = [m for m in metrics if m in METRICS]
    if base:
        k = a.prc_k
        est_a, method, reps_a = estimates(
            a.real, a.fake, a.real_class, a.fake_class, replicates, a.seed, k
        )
        est_b, _, reps_b = estimates(
            b.real, b.fake, b.real_class, b.fake_class, replicates, a.seed, k
        )
        diff, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
        for m in base:
            c = METRICS.index(m)
            out[m] = _entry(m, est_a[c], est_b[c], diff[c], lo[c], hi[c], method, replicates)
    extra = [m for m in metrics if m not in METRICS]
    if extra:
        from varbench.metrics.bootstrap import half_samples

        method = half_samples(a.real_class, a.fake_class, 0, a.seed)[0]
        spaces = {FEATURE_SPACE.get(m) for m in extra}
        fa = {sp: a.features(sp) for sp in spaces}
        fb = {sp: b.features(sp) for sp in spaces}
        est_a, reps_a = extra_estimates(
            extra, fa, a.real_class, a.fake_class, replicates, a.seed, a.options
        )
        est_b, reps_b = extra_estimates(
            extra, fb, b.real_class, b.fake_class, replicates, a.seed, b.options
        )
        diff, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
        for c, m in enumerate(extra):
            out[m] = _entry(m, est_a[c], est_b[c], diff[c], lo[c], hi[c], method, replicates)
    return {m: out[m] for m in metrics}


def _entry(m: str, a, b, diff, lo, hi, method: str, replicates: int) -> dict[str, Any]:
    return {
        "a": float(a),
        "b": float(b),
        "diff": float(diff),
        "lo": float(lo),
        "hi": float(hi),
        "verdict": verdict(m, float(lo), float(hi)),
        "method": f"paired_{method}",
        "replicates": replicates,
    }


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The requested metrics, each one a paired comparison supports (else one clear error)."""
    bad = [m for m in metrics if m not in SUPPORTED]
    if bad:
        why = "".join(f" ({m}: {REFUSED[m]})" for m in bad if m in REFUSED)
        raise UsageError(
            f"--metrics {','.join(bad)}: no paired interval for these{why}; supported: "
            f"{', '.join(SUPPORTED)} (the statistics the class half-samples recompute)"
        )
    return list(dict.fromkeys(metrics)) or list(METRICS)


def compare_runs(
    runs_dir: Path,
    protocol: str,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = METRICS,
    cache_dir: Path | None = None,
    weights: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per matched sweep point and metric: A - B, its paired interval, the verdict."""
    from varbench.runs.views import load_runs, only_run

    metrics = check_metrics(metrics)
    runs = load_runs(runs_dir, [protocol])
    ra = only_run(runs, model_a, protocol, runs_dir)
    rb = only_run(runs, model_b, protocol, runs_dir)
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
        for m, r in compare_points(fa, fb, metrics).items():
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

    Per protocol and manifest: each run's best point is its best by ``keys.RANK_BY`` (lowest FID,
    then KID), the best model is the run whose best point ranks first. A run whose features cannot be read (weights
    or data missing here) gets an ``error`` entry instead of numbers.
    """
    from varbench.runs.views import finite

    out: dict[tuple[str, str], dict[str, Any]] = {}
    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        pts = [p for p in run.points if finite(p.row.get("fid")) is not None]
        if pts:
            best = min(pts, key=lambda p: rank_value(p.row))
            key = (run.protocol, str(best.row.get("manifest_sha256", "")))
            groups.setdefault(key, []).append((run, best))
    for members in groups.values():
        if len(members) < 2:
            continue
        top_run, top = min(members, key=lambda m: rank_value(m[1].row))
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
    from varbench.runs.views import load_runs

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
