"""Interval validity by simulation: on a synthetic K-shot design whose expected FID, precision and
recall are known from many fresh draws, nominal 95 % intervals cover them >= 85 % of the time,
and are not too wide: their mean width is at most twice the oracle interval's (1.96 x the true
standard deviation of the statistic over fresh draws, each side)."""

from __future__ import annotations

import numpy as np

from varbench.metrics.bootstrap import (
    Z95,
    half_sample_replicates,
    recentred_intervals,
    statistics,
)

D, CLASSES, PER_CLASS = 8, 20, 10


def draw(rng: np.random.Generator, means: np.ndarray):
    """One protocol draw: references per class, one conditioning image among them, and
    PER_CLASS samples of it (a variation model: part conditioning image, part class, noise)."""
    real = (means[:, None, :] + rng.normal(0, 1, (CLASSES, PER_CLASS, D))).reshape(-1, D)
    cls = np.repeat(np.arange(CLASSES), PER_CLASS)
    cond = real[[c * PER_CLASS + rng.integers(PER_CLASS) for c in range(CLASSES)]]
    noise = rng.normal(0, 0.8, (CLASSES, PER_CLASS, D))
    fake = (0.6 * cond[:, None, :] + 0.4 * means[:, None, :] + noise).reshape(-1, D)
    return real, fake, cls, cls.copy()


def test_half_sampling_intervals_cover_the_expected_value():
    means = np.random.default_rng(123).normal(0, 2.0, (CLASSES, D))
    rng = np.random.default_rng(0)
    fresh = np.array([statistics(*draw(rng, means)[:2], 3) for _ in range(200)])
    truth = fresh.mean(axis=0)
    oracle_width = 2 * Z95 * fresh.std(axis=0, ddof=1)
    trials, hits, width = 40, np.zeros(3), np.zeros(3)
    for t in range(trials):
        real, fake, rc, fc = draw(rng, means)
        estimate = statistics(real, fake, 3)
        _, reps = half_sample_replicates(real, fake, rc, fc, 40, seed=t)
        iv = recentred_intervals(estimate, reps, len(fake), len(real))
        lo = np.array([iv["fid_lo"], iv["precision_lo"], iv["recall_lo"]])
        hi = np.array([iv["fid_hi"], iv["precision_hi"], iv["recall_hi"]])
        assert (lo <= estimate).all() and (estimate <= hi).all() and (lo < hi).all()
        hits += (lo <= truth) & (truth <= hi)
        width += (hi - lo) / trials
    coverage = hits / trials
    assert (coverage >= 0.85).all(), f"coverage fid/precision/recall = {coverage}"
    ratio = width / oracle_width
    assert (ratio <= 2.0).all(), f"mean width / oracle width, fid/precision/recall = {ratio}"


def test_demo_intervals_contain_their_estimates(tmp_path):
    from conftest import run_json

    for model in ("oracle", "copy"):
        (row,) = run_json(
            "run", "--model", model, "--protocol", "demo_1shot", "--out", str(tmp_path)
        )
        assert row["interval_method"] == "class_half_sampling" and row["interval_replicates"] == 50
        for name in ("fid", "precision", "recall"):
            assert row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"], (model, name)
            assert row[f"{name}_lo"] < row[f"{name}_hi"], (model, name)
