"""Study statistics against scipy, textbooks, brute force and simulations with known truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps

from varbench.study import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (57, 100), (570, 1000), (1000, 1000)])
def test_wilson_matches_scipy(k, n):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = stats.wilson(k, n)
    assert got.estimate == k / n
    assert got.lo == pytest.approx(ref.low, abs=1e-12)
    assert got.hi == pytest.approx(ref.high, abs=1e-12)


def test_semantica_interval_fits_about_1500_votes():
    """57 % [54, 59] (paper) is what Wilson gives on ~1,500 votes (MISSION-NOTES)."""
    w = stats.wilson(0.57 * 1500, 1500)
    assert 54 <= 100 * w.lo < 55 and 59 <= 100 * w.hi < 60


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _truth(mu: float, sd: float, clicker_share: float) -> float:
    """Population preference: careful raters sigmoid(mu + N(0, sd^2)), clickers 1/2."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    careful = float(np.sum(w * _sigmoid(mu + sd * x)) / np.sum(w))
    return (1 - clicker_share) * careful + clicker_share * 0.5


def _simulate(rng, mu, rater_sd, image_sd, n_raters=20, n_images=12, per_rater=30, clickers=0.2):
    u = rng.normal(0, rater_sd, n_raters)
    v = rng.normal(0, image_sd, n_images)
    random_clicker = rng.random(n_raters) < clickers
    rater = np.repeat(np.arange(n_raters), per_rater)
    image = rng.integers(0, n_images, rater.size)
    p = np.where(random_clicker[rater], 0.5, _sigmoid(mu + u[rater] + v[image]))
    return (rng.random(rater.size) < p).astype(float), rater, image


@pytest.mark.parametrize("rater_sd,image_sd", [(0.0, 0.0), (0.6, 0.6)])
def test_intervals_cover_the_truth(rater_sd, image_sd):
    """Raters with known preference plus 20 % random clickers: coverage >= 90 %."""
    rng = np.random.default_rng(17)
    mu = 0.4
    truth = _truth(mu, float(np.hypot(rater_sd, image_sd)), 0.2)
    n_sim = 160
    hit_w = hit_b = 0
    for i in range(n_sim):
        y, r, c = _simulate(rng, mu, rater_sd, image_sd)
        w = stats.wilson(y.sum(), y.size)
        b = stats.cluster_bootstrap(y, r, c, n_boot=300, seed=i)
        assert b.lo <= b.estimate <= b.hi and w.lo <= w.estimate <= w.hi
        hit_w += w.lo <= truth <= w.hi
        hit_b += b.lo <= truth <= b.hi
    assert hit_b / n_sim >= 0.90, hit_b / n_sim
    if rater_sd == 0:  # independent votes: the binomial interval is valid too
        assert hit_w / n_sim >= 0.90, hit_w / n_sim
    else:  # clustered votes: Wilson is too narrow, which is why the bootstrap is reported
        assert hit_w < hit_b


def _nll(beta_free, y, a, b, w, n):
    beta = np.concatenate([[0.0], beta_free])
    z = beta[a] - beta[b]
    return -np.sum(w * (y * z - np.logaddexp(0, z)))


def test_bradley_terry_matches_direct_likelihood_and_ties_count_half():
    rng = np.random.default_rng(3)
    n = 4
    a = rng.integers(0, n, 600)
    b = (a + rng.integers(1, n, 600)) % n
    y = rng.choice([0.0, 0.5, 1.0], 600, p=[0.4, 0.1, 0.5])
    beta = stats.bt_fit(y, a, b, n, ridge=0)
    ref = optimize.minimize(_nll, np.zeros(n - 1), args=(y, a, b, np.ones_like(y), n),
                            method="BFGS", options={"gtol": 1e-10})  # fmt: skip
    ref_beta = np.concatenate([[0.0], ref.x])
    np.testing.assert_allclose(beta, ref_beta - ref_beta.mean(), atol=1e-5)
    # FastChat's way: a tie is two battles, one won by each side, each of weight 1/2.
    tie = y == 0.5
    y2 = np.concatenate([y[~tie], np.ones(tie.sum()), np.zeros(tie.sum())])
    a2 = np.concatenate([a[~tie], a[tie], a[tie]])
    b2 = np.concatenate([b[~tie], b[tie], b[tie]])
    w2 = np.concatenate([np.ones((~tie).sum()), np.full(2 * tie.sum(), 0.5)])
    np.testing.assert_allclose(stats.bt_fit(y2, a2, b2, n, weights=w2, ridge=0), beta, atol=1e-8)


def test_bradley_terry_recovers_a_known_ranking():
    rng = np.random.default_rng(5)
    true = np.array([0.0, 0.4, 0.8, 1.2, -0.5])
    n = len(true)
    a = rng.integers(0, n, 3000)
    b = (a + rng.integers(1, n, 3000)) % n
    y = (rng.random(3000) < _sigmoid(true[a] - true[b])).astype(float)
    rater, image = rng.integers(0, 40, 3000), rng.integers(0, 25, 3000)
    est, lo, hi = stats.bt_bootstrap(y, a, b, n, rater, image, n_boot=200, seed=0)
    assert list(np.argsort(-est)) == list(np.argsort(-true))
    assert np.all(lo <= est) and np.all(est <= hi)
    centred = true - true.mean()
    assert np.mean((lo <= centred) & (centred <= hi)) >= 0.8
    wm = stats.win_matrix(y, a, b, n)
    np.testing.assert_allclose(wm + wm.T, np.where(np.eye(n) > 0, np.nan, 1.0))
    assert wm[3, 4] > 0.75  # strongest beats weakest most of the time


def test_bradley_terry_side_term_matches_direct_likelihood():
    """P(left wins) = sigmoid(beta_left - beta_right + gamma), fitted against scipy."""
    rng = np.random.default_rng(8)
    n, m = 3, 900
    true, gamma = np.array([0.0, 0.5, -0.3]), 0.6
    a = rng.integers(0, n, m)  # the left system
    b = (a + rng.integers(1, n, m)) % n
    y = (rng.random(m) < _sigmoid(true[a] - true[b] + gamma)).astype(float)

    def nll(free):
        beta = np.concatenate([[0.0], free[: n - 1]])
        z = beta[a] - beta[b] + free[-1]
        return -np.sum(y * z - np.logaddexp(0, z))

    ref = optimize.minimize(nll, np.zeros(n), method="BFGS", options={"gtol": 1e-10}).x
    got = stats.bt_fit(y, a, b, n, ridge=0, side=True)
    ref_beta = np.concatenate([[0.0], ref[: n - 1]])
    np.testing.assert_allclose(got[:n], ref_beta - ref_beta.mean(), atol=1e-5)
    assert got[-1] == pytest.approx(ref[-1], abs=1e-5)
    assert abs(got[-1] - gamma) < 0.3  # recovers the planted left bonus


def test_bt_two_way_intervals_cover_known_strengths():
    """Battles from known strengths, labelled by rater and image: coverage >= 85 %."""
    rng = np.random.default_rng(21)
    true = np.array([0.0, 0.5, 1.0])
    n, n_sim, hits, total = 3, 60, 0, 0
    for i in range(n_sim):
        n_r, per = 24, 20
        rater = np.repeat(np.arange(n_r), per)
        image = rng.integers(0, 15, rater.size)
        a = rng.integers(0, n, rater.size)
        b = (a + rng.integers(1, n, rater.size)) % n
        y = (rng.random(rater.size) < _sigmoid(true[a] - true[b])).astype(float)
        est, lo, hi = stats.bt_bootstrap(y, a, b, n, rater, image, n_boot=150, seed=i)
        assert np.all(lo <= est) and np.all(est <= hi)  # an interval holds its own estimate
        c = true - true.mean()
        hits += int(np.sum((lo <= c) & (c <= hi)))
        total += n
    assert hits / total >= 0.85, hits / total


def test_undefeated_systems_are_found():
    y = np.array([1.0, 1.0, 0.5, 0.0])
    a = np.array([0, 0, 1, 2])
    b = np.array([1, 2, 2, 0])  # 0 beats 1, beats 2, and 2 loses to 0 again (right won)
    never_lost, never_won = stats.undefeated(y, a, b, 3)
    assert never_lost == [0] and never_won == []


def test_fleiss_kappa_textbook_example():
    """Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories: 0.210."""
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    units = [[c for c, k in enumerate(row) for _ in range(k)] for row in table]
    assert stats.fleiss_kappa(units) == pytest.approx(0.2099, abs=5e-4)


def test_fleiss_kappa_matches_pairwise_agreement_by_brute_force():
    """Variable raters per unit: P_i is the share of agreeing ordered pairs within the unit."""
    rng = np.random.default_rng(4)
    units = [list(rng.choice(["a", "b", "tie"], size=rng.integers(2, 7), p=[0.5, 0.4, 0.1]))
             for _ in range(50)]  # fmt: skip
    p_i = [np.mean([u[i] == u[j] for i, j in itertools.permutations(range(len(u)), 2)])
           for u in units]  # fmt: skip
    values = [v for u in units for v in u]
    p_e = sum((values.count(c) / len(values)) ** 2 for c in set(values))
    want = (np.mean(p_i) - p_e) / (1 - p_e)
    assert stats.fleiss_kappa(units) == pytest.approx(want, abs=1e-12)


def test_krippendorff_textbook_example():
    """Krippendorff (2011), 'Computing Krippendorff's alpha-reliability', nominal: 0.743."""
    x = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, x, x, x], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, x, 3],
              [x, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, x], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, x]]  # fmt: skip
    units = [[v for v in col if v is not None] for col in zip(*coders, strict=True)]
    assert stats.krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_matches_brute_force_pairs():
    """alpha = 1 - D_o / D_e, both by enumerating ordered pairs of values (nominal metric)."""
    rng = np.random.default_rng(11)
    units = [list(rng.choice(["a", "b", "tie"], size=rng.integers(2, 6), p=[0.5, 0.4, 0.1]))
             for _ in range(40)]  # fmt: skip
    num = 0.0
    for u in units:  # observed: pairs within a unit, each weighted 1/(m_u - 1)
        for i, j in itertools.permutations(range(len(u)), 2):
            num += (u[i] != u[j]) / (len(u) - 1)
    n = sum(len(u) for u in units)
    d_o = num / n
    values = [v for u in units for v in u]
    d_e = sum(values[i] != values[j] for i, j in itertools.permutations(range(n), 2)) / (
        n * (n - 1)
    )
    assert stats.krippendorff_alpha_nominal(units) == pytest.approx(1 - d_o / d_e, abs=1e-12)
    assert stats.krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0
