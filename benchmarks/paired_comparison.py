"""Paired comparison of two runs by simulation: coverage of the true difference and the width
gain over unpaired intervals, for FID, precision and recall.

Usage: python benchmarks/paired_comparison.py [--pairs 200] [--classes 12] [--per-class 8]
       [--dim 8] [--replicates 40] [--seed 0]

A K-shot design (class means fixed; references, one conditioning image per class and two
models' samples of it drawn afresh each time) whose true E[T_A - T_B] is the average over
``--truth`` fresh draws. Each simulated pair of runs shares its references and conditioning
images, as two varbench runs of one manifest do. Prints ``key=value`` lines:
``paired_coverage_<m>`` (share of pairs whose paired 95 % interval holds the truth),
``paired_width_ratio_<m>`` (mean paired width / mean unpaired width, sd = sqrt(sd_A^2 + sd_B^2)
from the same half-samples, i.e. what two separate intervals imply), and the headlines
``paired_coverage`` (lowest over metrics) and ``paired_width_ratio`` (highest over metrics).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from varbench.compare import METRICS, estimates, paired_interval, unpaired_interval
from varbench.metrics.bootstrap import statistics


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
    args = ap.parse_args()
    t0 = time.perf_counter()
    means = np.random.default_rng(123).normal(0, 2.0, (args.classes, args.dim))
    cls = np.repeat(np.arange(args.classes), args.per_class)
    rng = np.random.default_rng(args.seed)
    truth = np.mean(
        [statistics(r, a, 3) - statistics(r, b, 3)
         for r, a, b in (draw(rng, means, args.per_class) for _ in range(args.truth))],
        axis=0,
    )  # fmt: skip
    hits = np.zeros(3)
    w_paired, w_unpaired = np.zeros(3), np.zeros(3)
    for t in range(args.pairs):
        real, a, b = draw(rng, means, args.per_class)
        seed = args.seed * 1_000_003 + t
        est_a, _, reps_a = estimates(real, a, cls, cls, args.replicates, seed)
        est_b, _, reps_b = estimates(real, b, cls, cls, args.replicates, seed)
        _, lo, hi = paired_interval(est_a, reps_a, est_b, reps_b)
        _, lo_u, hi_u = unpaired_interval(est_a, reps_a, est_b, reps_b)
        hits += (lo <= truth) & (truth <= hi)
        w_paired += hi - lo
        w_unpaired += hi_u - lo_u
    coverage = hits / args.pairs
    ratio = w_paired / w_unpaired
    for i, m in enumerate(METRICS):
        print(f"true_difference_{m}={truth[i]:.6g}")
        print(f"paired_coverage_{m}={coverage[i]:.4f}")
        print(f"paired_width_ratio_{m}={ratio[i]:.4f}")
    print(f"paired_coverage={coverage.min():.4f}")
    print(f"paired_width_ratio={ratio.max():.4f}")
    print(f"pairs={args.pairs} seconds={time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
