"""Statistics of pairwise human preference: pure functions on vote arrays.

Conventions (docs/metrics.md): a tie counts half a win; the two-model interval is reported both
as Wilson on votes (the binomial kind the Semantica paper's 57 % [54, 59] is consistent with)
and as a two-way cluster ("pigeonhole") bootstrap over raters and conditioning images;
Bradley-Terry is a logistic regression over battles (optionally with a left-side term) whose
percentile intervals come from the same two-way bootstrap, on the Elo scale FastChat /
GenAI-Arena print (400 * log10, anchored at 1000). A reported interval always contains its own
estimate (a percentile bound that misses it is moved to it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_INIT = 1000.0


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval."""

    estimate: float
    lo: float
    hi: float


def wilson(successes: float, n: float, level: float = 0.95) -> Interval:
    """Wilson score interval for a binomial share (ties already counted as half a success)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan)
    z = float(sps.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def contain(est: float, lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi) widened to contain ``est`` (a skewed percentile bootstrap can miss it)."""
    if math.isnan(est):
        return lo, hi
    return min(lo, est), max(hi, est)


def two_way_weights(rater: np.ndarray, image: np.ndarray, n_boot: int, seed: int):
    """Yield (rows, n_votes) weight blocks of the two-way (rater x image) pigeonhole bootstrap.

    Raters and conditioning images are resampled independently with replacement; a vote's
    weight is the product of its rater's and its image's multiplicities (Owen 2007), so votes
    that share a rater or an image move together, as they do in the population.
    """
    r_codes, r_idx = np.unique(np.asarray(rater), return_inverse=True)
    c_codes, c_idx = np.unique(np.asarray(image), return_inverse=True)
    rng = np.random.default_rng(seed)
    wr = rng.multinomial(len(r_codes), np.full(len(r_codes), 1 / len(r_codes)), size=n_boot)
    wc = rng.multinomial(len(c_codes), np.full(len(c_codes), 1 / len(c_codes)), size=n_boot)
    step = max(1, 2_000_000 // max(1, r_idx.size))  # bound memory: (step, n_votes) at a time
    for i in range(0, n_boot, step):
        yield (wr[i : i + step, r_idx] * wc[i : i + step, c_idx]).astype(np.float64)


def cluster_bootstrap(
    y: np.ndarray,
    rater: np.ndarray,
    image: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of mean(y) under the two-way (rater x image) pigeonhole bootstrap."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    means = []
    for w in two_way_weights(rater, image, n_boot, seed):
        tot = w.sum(axis=1)
        ok = tot > 0
        means.append((w[ok] @ y) / tot[ok])
    means = np.concatenate(means)
    a = (1 - level) / 2
    est = float(y.mean())
    lo, hi = contain(est, float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))
    return Interval(est, lo, hi)


def bt_fit(
    winner_a: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_models: int,
    weights=None,
    ridge=1e-6,
    side: bool = False,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Bradley-Terry log-strengths by Newton's method on the logistic likelihood.

    ``winner_a`` is 1 (a won), 0 (b won) or 0.5 (tie: half a win each, as FastChat's
    ``compute_mle_elo`` does by duplicating the battle). With ``side``, ``a`` is the left
    system and one more parameter (returned last) is the log-odds bonus of the left side.
    A tiny ridge fixes the scale of models that never lost; strengths are centred to sum 0.
    """
    y = np.asarray(winner_a, dtype=np.float64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    n, k = n_models, n_models + int(side)
    beta = np.zeros(k) if start is None else np.array(start, dtype=np.float64)
    for _ in range(100):
        z = beta[a] - beta[b] + (beta[-1] if side else 0.0)
        p = 1 / (1 + np.exp(-z))
        resid = w * (y - p)
        h = w * p * (1 - p)
        grad = np.zeros(k)
        grad[:n] = np.bincount(a, resid, n) - np.bincount(b, resid, n)
        off = np.bincount(a * n + b, h, n * n).reshape(n, n)
        off = off + off.T
        hess = np.zeros((k, k))
        hess[:n, :n] = np.diag(off.sum(axis=1)) - off
        if side:  # the left-side column: 1 for every battle
            grad[-1] = resid.sum()
            cross = np.bincount(a, h, n) - np.bincount(b, h, n)
            hess[:n, -1] = hess[-1, :n] = cross
            hess[-1, -1] = h.sum()
        grad -= ridge * beta
        hess += (ridge + 1e-12) * np.eye(k)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-8:  # the near-null direction (all +c) jitters ~1e-9
            break
    beta[:n] -= beta[:n].mean()
    return beta


def to_elo(beta: np.ndarray) -> np.ndarray:
    """Log-strengths (or log-odds) on the Elo scale (FastChat: 400 * log10 odds, mean 1000)."""
    return ELO_INIT + ELO_SCALE / math.log(ELO_BASE) * np.asarray(beta)


def elo_points(log_odds: float) -> float:
    """A log-odds difference in Elo points."""
    return ELO_SCALE / math.log(ELO_BASE) * log_odds


def undefeated(winner_a: np.ndarray, a: np.ndarray, b: np.ndarray, n_models: int) -> tuple[
    list[int], list[int]]:  # fmt: skip
    """(systems that never lost a battle, systems that never won one); ties count half each."""
    y = np.asarray(winner_a, dtype=np.float64)
    wins = np.bincount(a, y, n_models) + np.bincount(b, 1 - y, n_models)
    losses = np.bincount(a, 1 - y, n_models) + np.bincount(b, y, n_models)
    games = np.bincount(a, None, n_models) + np.bincount(b, None, n_models)
    return ([i for i in range(n_models) if games[i] and losses[i] == 0],
            [i for i in range(n_models) if games[i] and wins[i] == 0])  # fmt: skip


def bt_bootstrap(
    winner_a: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_models: int,
    rater: np.ndarray,
    image: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    side: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elo ratings (and the left-side term last, with ``side``) and their percentile intervals.

    Resamples are the same two-way (rater x image) bootstrap as the preference rate's.
    """
    y = np.asarray(winner_a, dtype=np.float64)
    est = bt_fit(y, a, b, n_models, side=side)
    boots = []
    for block in two_way_weights(rater, image, n_boot, seed):
        for w in block:
            if w.sum() > 0:
                boots.append(bt_fit(y, a, b, n_models, weights=w, side=side, start=est))
    boots = np.array(boots)
    q = (1 - level) / 2
    lo, hi = np.quantile(boots, q, axis=0), np.quantile(boots, 1 - q, axis=0)
    lo, hi = np.minimum(lo, est), np.maximum(hi, est)
    return est, lo, hi


def win_matrix(winner_a: np.ndarray, a: np.ndarray, b: np.ndarray, n_models: int) -> np.ndarray:
    """Share of battles row beat column (ties half); NaN where two models never met."""
    y = np.asarray(winner_a, dtype=np.float64)
    wins = np.zeros((n_models, n_models))
    games = np.zeros((n_models, n_models))
    np.add.at(wins, (a, b), y)
    np.add.at(wins, (b, a), 1 - y)
    np.add.at(games, (a, b), 1)
    np.add.at(games, (b, a), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins / np.maximum(games, 1), np.nan)


def krippendorff_alpha_nominal(units: list[list[object]]) -> float:
    """Krippendorff's alpha for nominal data; ``units`` holds each unit's values (any raters).

    Units with fewer than two values are not pairable and are dropped (Krippendorff 2011).
    """
    units = [u for u in units if len(u) >= 2]
    if not units:
        return math.nan
    cats = sorted({v for u in units for v in u}, key=str)
    k = {c: i for i, c in enumerate(cats)}
    o = np.zeros((len(cats), len(cats)))
    for u in units:
        counts = np.bincount([k[v] for v in u], minlength=len(cats)).astype(np.float64)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d_o = (n - np.trace(o)) / n
    d_e = (n * n - (n_c**2).sum()) / (n * (n - 1))
    if d_e == 0:
        return math.nan if d_o else 1.0
    return float(1 - d_o / d_e)


def fleiss_kappa(units: list[list[object]]) -> float:
    """Fleiss' kappa over units rated by two or more raters (any number per unit).

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), P_bar their mean, p_j the share of all
    ratings in category j, P_e = sum_j p_j^2; kappa = (P_bar - P_e) / (1 - P_e).
    """
    units = [u for u in units if len(u) >= 2]
    if not units:
        return math.nan
    cats = sorted({v for u in units for v in u}, key=str)
    k = {c: i for i, c in enumerate(cats)}
    counts = np.array([np.bincount([k[v] for v in u], minlength=len(cats)) for u in units],
                      dtype=np.float64)  # fmt: skip
    n_i = counts.sum(axis=1)
    p_i = ((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j**2).sum())
    if p_e == 1:
        return math.nan
    return float((p_i.mean() - p_e) / (1 - p_e))
