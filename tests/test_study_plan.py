"""The trial plan, checked by counting: exact side balance, fixed checks, repeat gaps."""

from __future__ import annotations

from collections import Counter
from itertools import product

import numpy as np
import pytest
from scipy import stats as sps

from varbench.errors import UsageError
from varbench.study.plan import Layout, order_slice, plan
from varbench.study.rules import ExclusionRule, fair_coin_p, tally

CASES = list(product((2, 3, 4), (1, 2, 4), (4, 10), (None, 6)))  # systems, groups, conds, slice


def _groups(n_conds: int, per: int) -> dict[str, list[list[int]]]:
    return {f"c{c}": [[i] for i in range(per)] for c in range(n_conds)}


@pytest.mark.parametrize("n_sys,per,n_conds,slice_trials", CASES)
def test_sides_balance_exactly_per_pair_image_and_slice(n_sys, per, n_conds, slice_trials):
    layout = Layout(trials=36, slice_trials=slice_trials, check_share=0.2, repeat_share=0.2,
                    repeat_gap=3, seed=n_sys * 10 + per)  # fmt: skip
    trials, n_slices, _ = plan(layout, n_sys, _groups(n_conds, per))
    main = [t for t in trials if t["kind"] == "main"]
    per_main, n_checks, n_reps = layout.per_slice()
    assert len(main) == n_slices * per_main >= 36
    for key in ("cond", "slice"):  # per (pair, image) and per (pair, slice): as often each side
        left = Counter((min(t["left"], t["right"]), max(t["left"], t["right"]), t[key], t["left"])
                       for t in main)  # fmt: skip
        for (a, b, k, _), n in left.items():
            assert left[(a, b, k, a)] == left[(a, b, k, b)] == n, (key, a, b, k)
    for s in range(n_slices):
        mine = [t for t in trials if t["slice"] == s]
        checks = [t for t in mine if t["kind"] == "check"]
        assert len(checks) == n_checks >= 2  # every rater's slice holds the same number
        sides = Counter(t["expected"] for t in checks)
        assert abs(sides["left"] - sides["right"]) <= 1
        assert all(t["corrupt"] != t["expected"] for t in checks)
        reps = [t for t in mine if t["kind"] == "repeat"]
        assert len(reps) == n_reps
        for r in reps:
            o = trials[r["repeat_of"]]
            assert o["slice"] == s and o["kind"] == "main"
            assert (o["left"], o["right"], o["group"]) == (r["right"], r["left"], r["group"])
    pair_counts = Counter((min(t["left"], t["right"]), max(t["left"], t["right"])) for t in main)
    assert max(pair_counts.values()) - min(pair_counts.values()) <= 2  # pairs balanced
    assert sum(t["kind"] == "practice" for t in trials) == 2


def test_one_sample_group_never_mirrors_a_comparison_within_a_slice():
    """Images with one sample group: twins swap halves, so no slice shows A|B and B|A."""
    layout = Layout(trials=16, slice_trials=4, check_share=0, repeat_share=0, seed=3)
    trials, _, warnings = plan(layout, 2, _groups(8, 1))
    main = [t for t in trials if t["kind"] == "main"]
    for s in {t["slice"] for t in main}:
        shown = Counter(t["cond"] for t in main if t["slice"] == s)
        assert max(shown.values()) == 1, shown
    assert not any("mirrored" in w for w in warnings)


@pytest.mark.parametrize("gap", [1, 3, 5, 8])
def test_every_rater_order_keeps_repeats_gap_trials_after_originals(gap):
    layout = Layout(trials=20, slice_trials=20, check_share=0.1, repeat_share=0.3,
                    repeat_gap=gap)  # fmt: skip
    trials, _, _ = plan(layout, 2, _groups(10, 4))
    ids = {i: (i + 1) for i in range(len(trials))}
    rows = [(ids[i], t["kind"], ids.get(t.get("repeat_of"))) for i, t in enumerate(trials)
            if t["slice"] == 0]  # fmt: skip
    first = []
    for key in range(300):
        order = order_slice(rows, [0, key], gap)
        assert sorted(order) == sorted(r[0] for r in rows)
        pos = {tid: k for k, tid in enumerate(order)}
        for tid, kind, orig in rows:
            if kind == "repeat":
                assert pos[tid] - pos[orig] >= gap
        first.append(order[0])
    assert len(set(first)) > 10  # orders differ between raters


def test_repeat_gap_too_large_names_the_flags():
    with pytest.raises(UsageError, match="--repeat-gap 30.*lower --repeat-gap"):
        Layout(trials=10, repeat_gap=30, repeat_share=0.5).validate()
    with pytest.raises(UsageError, match="--slice-trials 5: must be even"):
        Layout(trials=10, slice_trials=5).validate()


def test_exclusion_rule_counts_by_hand():
    rule = ExclusionRule(max_failed_checks=1, min_median_ms=500, max_side_share=0.9)
    rows = [("check", "left", "right", 300), ("check", "left", "right", 200),
            *[("main", "left", None, 400)] * 9, ("repeat", "right", None, 900)]  # fmt: skip
    failed, median, left, right = tally(rows)
    assert (failed, left, right) == (2, 9, 1)
    assert median == float(np.median([r[3] for r in rows]))
    reasons = rule.reasons(failed, median, left, right)
    assert len(reasons) == 2  # 2 failed checks, median 400 ms; 9 of 10 left is not above 90 %
    for n_left, n_right in [(15, 0), (14, 0), (20, 1), (21, 1), (30, 3), (9, 9), (0, 16)]:
        p = sps.binomtest(n_left, n_left + n_right, 0.5).pvalue
        assert fair_coin_p(n_left, n_right) == pytest.approx(p, rel=1e-12)
        share = max(n_left, n_right) / (n_left + n_right)
        flagged = bool(rule.reasons(0, 600, n_left, n_right))
        assert flagged == (share > 0.9 and p < 1e-4), (n_left, n_right)
    assert rule.reasons(0, 600, 15, 0) == [
        "chose left in 100 % of 15 votes (max 90 %, fair-coin p = 6e-05)"
    ]
    assert rule.catches_one_side_clicker(checks=4, side_votes=2)  # fails 2 checks
    assert rule.catches_one_side_clicker(checks=2, side_votes=15)  # by side
    assert not rule.catches_one_side_clicker(checks=2, side_votes=14)


def test_honest_raters_are_rarely_excluded_by_the_side_rule():
    """Counterbalanced sides make an honest rater's left count Binomial(n, 1/2): <= 1e-4."""
    rule = ExclusionRule()
    for n in range(1, 60):
        rate = sum(sps.binom.pmf(k, n, 0.5) for k in range(n + 1)
                   if rule.reasons(0, 1000, k, n - k))  # fmt: skip
        assert rate <= 1e-4, (n, rate)
