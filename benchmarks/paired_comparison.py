"""Paired comparison of two runs by simulation: coverage of the true difference and the width
gain over unpaired intervals, for FID, precision and recall.

Usage: python benchmarks/paired_comparison.py [--pairs 200] [--classes 12] [--per-class 8]
       [--dim 8] [--replicates 40] [--seed 0] [--extra density,kid,coverage]

A K-shot design (class means fixed; references, one conditioning image per class and two
models' samples of it drawn afresh each time) whose true E[T_A - T_B] is the average over
``--truth`` fresh draws. Each simulated pair of runs shares its references and conditioning
images, as two varbench runs of one manifest do. Prints ``key=value`` lines:
``paired_coverage_<m>`` (share of pairs whose paired 95 % interval holds the truth),
``paired_width_ratio_<m>`` (mean paired width / mean unpaired width, sd = sqrt(sd_A^2 + sd_B^2)
from the same half-samples, i.e. what two separate intervals imply), and the headlines
``paired_coverage`` (lowest over metrics) and ``paired_width_ratio`` (highest over metrics).
``--extra`` adds the statistics `varbench compare` recomputes on the same class half-samples
(``compare.extra_estimates``: density, kid, coverage), printed per metric as above; `compare`
refuses those whose coverage falls below 90 % here (coverage).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from varbench.metrics.bootstrap import statistics
from varbench.present.compare import (
    METRICS,
    estimates,
    extra_estimates,
    extra_values,
    paired_interval,
    unpaired_interval,
)


def draw(rng, means, per_class):
    """References, and samples of models A and B from one conditioning image per class."""
    c, d = means.shape
    real = (means[:, None, :] + rng.normal(0, 1, (c, per_class, d))).reshape(-1, d)
    cond = real[[i * per_class + rng.integers(per_class) for i in range(c)]]
    shape = (c, per_class, d)
    a = 0.6 * cond[:, None, :] + 0.4 * means[:, None, :] + rng.normal(0, 0.8, shape)
    b = 0.5 * cond[:, None, :] + 0.5 * means[:, None, :] + rng.normal(0, 0.9, shape)
    return real, a.reshape(-1, d), b.reshape(-1, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--truth", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--replicates", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="comma-separated: density, kid, coverage")
    args = ap.parse_args()
    extra = [m for m in args.extra.split(",") if m]
    opts = {"kid_subsets": 20}  # KID: 20 subsets per value keeps the simulation minutes long
    t0 = time.perf_counter()
    means = np.random.default_rng(123).normal(0, 2.0, (args.classes, args.dim))
    cls = np.repeat(np.arange(args.classes), args.per_class)
    rng = np.random.default_rng(args.seed)

    def values(r, f):
        ex = extra_values(extra, {None: (r, f)}, opts) if extra else []
        return np.concatenate([statistics(r, f, 3), ex])

    truth = np.mean(
        [values(r, a) - values(r, b)
         for r, a, b in (draw(rng, means, args.per_class) for _ in range(args.truth))],
        axis=0,
    )  # fmt: skip
    names = [*METRICS, *extra]
    hits = np.zeros(len(names))
    w_paired, w_unpaired = np.zeros(len(names)), np.zeros(len(names))
    for t in range(args.pairs):
        real, a, b = draw(rng, means, args.per_class)
        seed = args.seed * 1_000_003 + t
        est_a, _, reps_a = estimates(real, a, cls, cls, args.replicates, seed)
        est_b, _, reps_b = estimates(real, b, cls, cls, args.replicates, seed)
        if extra:
            xa = extra_estimates(extra, {None: (real, a)}, cls, cls, args.replicates, seed, opts)
            xb = extra_estimates(extra, {None: (real, b)}, cls, cls, args.replicates, seed, opts)
            est_a, reps_a = np.concatenate([est_a, xa[0]]), np.hstack([reps_a, xa[1]])
            est_b, reps_b = np.concatenate([est_b, xb[0]]), np.hstack([reps_b, xb[1]])
        _, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
        _, lo_u, hi_u = unpaired_interval(est_a, reps_a, est_b, reps_b)
        hits += (lo <= truth) & (truth <= hi)
        w_paired += hi - lo
        w_unpaired += hi_u - lo_u
    coverage = hits / args.pairs
    ratio = w_paired / w_unpaired
    for i, m in enumerate(names):
        print(f"true_difference_{m}={truth[i]:.6g}")
        print(f"paired_coverage_{m}={coverage[i]:.4f}")
        print(f"paired_width_ratio_{m}={ratio[i]:.4f}")
    n = len(METRICS)  # the headlines: the runs' own statistics, as before --extra existed
    print(f"paired_coverage={coverage[:n].min():.4f}")
    print(f"paired_width_ratio={ratio[:n].max():.4f}")
    print(f"pairs={args.pairs} seconds={time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
