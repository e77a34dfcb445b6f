"""Statistics of pairwise human preference: pure functions on vote arrays.

Conventions (docs/metrics.md): a tie counts half a win; the two-model interval is reported both
as Wilson on votes (the binomial kind the Semantica paper's 57 % [54, 59] is consistent with)
and as a two-way cluster ("pigeonhole") bootstrap over raters and conditioning images;
Bradley-Terry is a logistic regression over battles with percentile intervals from resampled
battles, on the Elo scale FastChat / GenAI-Arena print (400 * log10, anchored at 1000).
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


def cluster_bootstrap(
    y: np.ndarray,
    rater: np.ndarray,
    image: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of mean(y) under a two-way (rater x image) pigeonhole bootstrap.

    Raters and conditioning images are resampled independently with replacement; a vote's
    weight is the product of its rater's and its image's multiplicities (Owen 2007), so votes
    that share a rater or an image move together, as they do in the population.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    r_codes, r_idx = np.unique(np.asarray(rater), return_inverse=True)
    c_codes, c_idx = np.unique(np.asarray(image), return_inverse=True)
    rng = np.random.default_rng(seed)
    wr = rng.multinomial(len(r_codes), np.full(len(r_codes), 1 / len(r_codes)), size=n_boot)
    wc = rng.multinomial(len(c_codes), np.full(len(c_codes), 1 / len(c_codes)), size=n_boot)
    means = []
    step = max(1, 2_000_000 // y.size)  # bound memory: (step, n_votes) weights at a time
    for i in range(0, n_boot, step):
        w = wr[i : i + step, r_idx] * wc[i : i + step, c_idx]
        tot = w.sum(axis=1)
        ok = tot > 0
        means.append((w[ok] @ y) / tot[ok])
    means = np.concatenate(means)
    a = (1 - level) / 2
    return Interval(float(y.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def bt_fit(
    winner_a: np.ndarray, a: np.ndarray, b: np.ndarray, n_models: int, weights=None, ridge=1e-6
) -> np.ndarray:
    """Bradley-Terry log-strengths by Newton's method on the logistic likelihood.

    ``winner_a`` is 1 (a won), 0 (b won) or 0.5 (tie: half a win each, as FastChat's
    ``compute_mle_elo`` does by duplicating the battle). A tiny ridge fixes the scale of
    models that never lost; strengths are centred to sum 0.
    """
    y = np.asarray(winner_a, dtype=np.float64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros(n_models)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(beta[a] - beta[b])))
        resid = w * (y - p)
        grad = np.bincount(a, resid, n_models) - np.bincount(b, resid, n_models) - ridge * beta
        h = w * p * (1 - p)
        off = np.bincount(a * n_models + b, h, n_models * n_models).reshape(n_models, n_models)
        off = off + off.T
        hess = np.diag(off.sum(axis=1)) - off + ridge * np.eye(n_models)
        step = np.linalg.solve(hess + 1e-12 * np.eye(n_models), grad)
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta - beta.mean()


def to_elo(beta: np.ndarray) -> np.ndarray:
    """Log-strengths on the Elo scale (FastChat: 400 * log10 odds, mean 1000)."""
    return ELO_INIT + ELO_SCALE / math.log(ELO_BASE) * np.asarray(beta)


def bt_bootstrap(
    winner_a: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_models: int,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elo ratings and percentile intervals from battles resampled with replacement."""
    y = np.asarray(winner_a, dtype=np.float64)
    est = to_elo(bt_fit(y, a, b, n_models))
    rng = np.random.default_rng(seed)
    n = len(y)
    boots = np.empty((n_boot, n_models))
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        boots[i] = to_elo(bt_fit(y, a, b, n_models, weights=w))
    q = (1 - level) / 2
    return est, np.quantile(boots, q, axis=0), np.quantile(boots, 1 - q, axis=0)


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
