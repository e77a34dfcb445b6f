"""The study's trial plan, from the seed alone: counterbalanced twins, slices, checks, repeats.

Main trials come in *twins*: the same pair of systems on the same conditioning image, once with
each system on the left (two different sample groups of that image when it has them). Twins
are dealt whole into slices, so every pair of systems appears left and right equally often per
conditioning image and per slice. A slice is what one rater does: its main trials, a fixed
number of attention checks (half expecting each side) and repeats of its own main trials.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from varbench.errors import UsageError


@dataclass(frozen=True)
class Layout:
    """How many trials, how they are sliced, and the quality controls in each slice."""

    trials: int = 200  # main trials asked for (rounded up to whole slices of twins)
    slice_trials: int | None = None  # main trials per slice (None: one slice of all)
    raters_per_slice: int = 1  # planned raters for every slice
    check_share: float = 0.1  # attention checks per main trial of a slice (>= 2 when > 0)
    repeat_share: float = 0.1  # repeats (sides swapped) per main trial of a slice
    repeat_gap: int = 5  # a repeat comes at least this many positions after its original
    practice: int = 2  # unscored practice trials with feedback
    seed: int = 0

    def per_slice(self) -> tuple[int, int, int]:
        """(main, checks, repeats) of each slice."""
        main = self.slice_trials or self.trials + self.trials % 2
        checks = max(2, round(self.check_share * main)) if self.check_share > 0 else 0
        return main, checks, round(self.repeat_share * main)

    def validate(self) -> Layout:
        """Self, or a UsageError naming the flag and the fix."""
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials}: must be >= 1")
        if self.slice_trials is not None and (self.slice_trials < 2 or self.slice_trials % 2):
            raise UsageError(f"--slice-trials {self.slice_trials}: must be even and >= 2 (sides "
                             "are counterbalanced in twins of two trials)")  # fmt: skip
        if self.raters_per_slice < 1:
            raise UsageError(f"--raters-per-slice {self.raters_per_slice}: must be >= 1")
        for name, v in (("--check-share", self.check_share), ("--repeat-share", self.repeat_share)):
            if not 0 <= v <= 1:
                raise UsageError(f"{name} {v}: must be between 0 and 1")
        if self.repeat_gap < 1:
            raise UsageError(f"--repeat-gap {self.repeat_gap}: must be >= 1")
        if not 0 <= self.practice <= 10:
            raise UsageError(f"--practice {self.practice}: must be between 0 and 10")
        main, checks, repeats = self.per_slice()
        room = main + checks - self.repeat_gap + 1
        if repeats and room < repeats:
            raise UsageError(
                f"--repeat-gap {self.repeat_gap}: a slice of {main + checks} trials has room for "
                f"{max(room, 0)} repeats that far apart, not {repeats}; lower --repeat-gap or "
                "--repeat-share, or raise --slice-trials"
            )
        return self


def _twins(layout: Layout, n_systems: int, groups: dict[str, list[list[int]]],
           warnings: list[str]) -> list[list[dict]]:  # fmt: skip
    """Twins of main trials: rounds over the pairs, one seeded cycle through the images."""
    main, _, _ = layout.per_slice()
    n_slices = math.ceil(layout.trials / main)
    n_twins = n_slices * main // 2
    conds = sorted(groups)
    pairs = list(combinations(range(n_systems), 2))
    rng = np.random.default_rng(layout.seed)
    cycle: list[str] = []
    seen: dict[tuple, int] = defaultdict(int)
    twins: list[list[dict]] = []
    while len(twins) < n_twins:  # rounds visit every pair once: pairs stay balanced
        for pi in rng.permutation(len(pairs)):
            if len(twins) >= n_twins:
                break
            pair = pairs[int(pi)]
            if not cycle:  # one seeded cycle through the images: they stay balanced too
                cycle = [conds[int(i)] for i in rng.permutation(len(conds))]
            cond = cycle.pop()
            a, b = pair
            k = seen[(a, b, cond)]
            seen[(a, b, cond)] += 1
            g = groups[cond]
            if 2 * k + 2 > len(g) and len(g) > 1:
                warnings.append("more trials than distinct (pair, image, sample) combinations; "
                                "some trials repeat the same images")  # fmt: skip
            first, second = g[(2 * k) % len(g)], g[(2 * k + 1) % len(g)]
            if rng.random() < 0.5:
                a, b = b, a
            twins.append([{"kind": "main", "cond": cond, "group": first, "left": a, "right": b},
                          {"kind": "main", "cond": cond, "group": second, "left": b,
                           "right": a}])  # fmt: skip
    _split_mirrors(twins, warnings)
    return twins


def _split_mirrors(twins: list[list[dict]], warnings: list[str]) -> None:
    """Twins showing one image group mirrored exchange second halves with another such twin."""
    pending: dict[tuple, list[int]] = defaultdict(list)
    for i, (x, y) in enumerate(twins):
        if x["group"] != y["group"] or x["cond"] != y["cond"]:
            continue
        waiting = pending[tuple(sorted((x["left"], x["right"])))]
        j = next((j for j in waiting if twins[j][0]["cond"] != x["cond"]), None)
        if j is None:
            waiting.append(i)
            continue
        waiting.remove(j)
        other = twins[j]
        # keep orientation balance: each twin keeps one trial with each system on the left
        if other[1]["left"] != y["left"]:
            other[0], other[1] = other[1], other[0]
        twins[i][1], other[1] = other[1], twins[i][1]
    left_over = sum(len(v) for v in pending.values())
    if left_over:
        warnings.append(f"{left_over} twin(s) show one sample group mirrored to the same "
                        "rater (the image has one group of samples); lower --set-size or use "
                        "more samples per image")  # fmt: skip


def plan(layout: Layout, n_systems: int, groups: dict[str, list[list[int]]]) -> tuple[
    list[dict], int, list[str]]:  # fmt: skip
    """(trials, number of slices, warnings). Trials carry ``slice`` (0-based; None: practice)."""
    layout = layout.validate()
    warnings: list[str] = []
    main, n_checks, n_reps = layout.per_slice()
    twins = _twins(layout, n_systems, groups, warnings)
    n_slices = len(twins) * 2 // main
    if n_slices * main != layout.trials:
        warnings.append(f"--trials {layout.trials} rounded up to {n_slices * main} main trials "
                        f"({n_slices} slice(s) of {main}, in twins of two)")  # fmt: skip
    rng = np.random.default_rng([layout.seed, 1])
    slices: list[list[dict]] = [[] for _ in range(n_slices)]
    for i, twin in enumerate(twins):  # round-robin: every slice mixes pairs and images
        slices[i % n_slices].extend(twin)
    trials: list[dict] = []
    for s, mains in enumerate(slices):
        base = len(trials)
        trials.extend({**t, "slice": s} for t in mains)
        sides = ["left", "right"] * ((n_checks + 1) // 2)
        sides = [sides[k] for k in rng.permutation(len(sides))[:n_checks]]
        picks = rng.choice(len(mains), size=n_checks, replace=n_checks > len(mains))
        for expected, j in zip(sides, picks, strict=True):
            bad = "right" if expected == "left" else "left"
            trials.append({**mains[int(j)], "slice": s, "kind": "check", "corrupt": bad,
                           "expected": expected, "corrupt_seed": int(rng.integers(2**31))})  # fmt: skip
        for j in sorted(rng.choice(len(mains), size=min(n_reps, len(mains)), replace=False)):
            orig = base + int(j)
            t = trials[orig]
            trials.append({**t, "kind": "repeat", "left": t["right"], "right": t["left"],
                           "repeat_of": orig})  # fmt: skip
    cond0 = sorted(groups)[0]
    for k in range(layout.practice):
        expected = "left" if k % 2 == 0 else "right"
        bad = "right" if expected == "left" else "left"
        cond = sorted(groups)[k % len(groups)] if len(groups) > 1 else cond0
        trials.append({"kind": "practice", "cond": cond, "group": groups[cond][0], "left": 0,
                       "right": 1, "slice": None, "corrupt": bad, "expected": expected,
                       "corrupt_seed": int(rng.integers(2**31))})  # fmt: skip
    return trials, n_slices, sorted(set(warnings))


def order_slice(trials: list[tuple[int, str, int | None]], key: list[int], gap: int) -> list[int]:
    """One rater's order of a slice's trials: seeded by ``key``, repeats >= ``gap`` later.

    ``trials`` holds the slice's (id, kind, repeat_of). Main trials and checks are shuffled;
    an original that would sit too late for its repeat swaps with an earlier trial that has no
    repeat; each repeat is then inserted at a random position at least ``gap`` after it.
    """
    rng = np.random.default_rng(key)
    base = [t[0] for t in trials if t[1] != "repeat"]
    order = [base[i] for i in rng.permutation(len(base))]
    reps = [(t[0], t[2]) for t in trials if t[1] == "repeat"]
    originals = {o for _, o in reps}
    last = len(order) - gap  # the latest index an original may take
    for i in range(len(order) - 1, last, -1):
        if order[i] in originals:
            free = [j for j in range(last + 1) if order[j] not in originals]
            if not free:
                raise UsageError("--repeat-gap: no room for the repeats in a slice")
            j = free[int(rng.integers(len(free)))]
            order[i], order[j] = order[j], order[i]
    for k in rng.permutation(len(reps)):
        tid, orig = reps[int(k)]
        at = order.index(orig)
        order.insert(int(rng.integers(at + gap, len(order) + 1)), tid)
    return order
