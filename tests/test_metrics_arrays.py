"""Pure array metrics against independent references: scipy, torch-fidelity, clean-fid, brute force, closed forms."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from varbench.metrics import METRIC_OPTIONS, metric_registry
from varbench.metrics.bootstrap import (
    KEYS as BOOT_KEYS,
)
from varbench.metrics.bootstrap import (
    BootstrapMetric,
    half_sample_replicates,
    half_samples,
)
from varbench.metrics.gaussian import (
    fid_features_to_statistics,
    fid_from_features,
    fid_statistics_to_metric,
    trace_sqrt_from_factors,
    trace_sqrt_product,
)
from varbench.metrics.isc import inception_score
from varbench.metrics.kid import kid_features_to_metric
from varbench.metrics.knn.neighbours import knn_exact
from varbench.metrics.prdc import (
    PrecisionRecallMetric,
    density_coverage,
    per_class_precision_recall,
    precision_recall,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pair(n=400, m=350, d=48, seed=0):
    rng = _rng(seed)
    real = rng.standard_normal((n, d))
    fake = rng.standard_normal((m, d)) @ (np.eye(d) + 0.1 * rng.standard_normal((d, d))) + 0.1
    return real, fake


def _with_duplicates(real, fake):
    """Copies across sets, repeated rows within sets, and a lattice with many exact ties."""
    real, fake = real.copy(), fake.copy()
    fake[:40] = real[:40]
    fake[40:52] = fake[3]
    real[100:115] = real[7]
    real[200:230] = np.round(real[200:230])
    fake[200:230] = np.round(fake[200:230])
    return real, fake


# -- FID ------------------------------------------------------------------------------------------
def _scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_fid_matches_scipy_torch_fidelity_and_cleanfid():
    from cleanfid.fid import frechet_distance
    from torch_fidelity import metric_fid

    real, fake = _pair(n=600, d=64)
    mu1, s1 = fid_features_to_statistics(real)
    mu2, s2 = fid_features_to_statistics(fake)
    ours = fid_statistics_to_metric(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    tf = metric_fid.fid_statistics_to_metric(
        metric_fid.fid_features_to_statistics(torch.from_numpy(real)),
        metric_fid.fid_features_to_statistics(torch.from_numpy(fake)),
        verbose=False,
    )[metric_fid.KEY_METRIC_FID]
    assert ours == pytest.approx(tf, rel=1e-6)
    assert ours == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-6)
    assert fid_from_features(real, fake) == pytest.approx(ours, rel=1e-9)


def test_fid_closed_form_commuting_covariances():
    rng = _rng(1)
    d = 40
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.0, 2.0, d)
    b[:5] = 0.0  # singular second covariance
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert fid_statistics_to_metric(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert fid_statistics_to_metric(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero():
    real, _ = _pair(n=300, d=32)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-9)
    mu, s = fid_features_to_statistics(real)
    assert fid_statistics_to_metric(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n1,n2", [(20, 30), (60, 60), (5, 200)])
def test_fid_singular_covariances_real_and_non_negative(n1, n2):
    rng = _rng(n1 + n2)
    d = 96  # N < d: both covariances singular in most cases
    x, y = rng.standard_normal((n1, d)), rng.standard_normal((n2, d)) * 0.5 + 0.2
    mu1, s1 = fid_features_to_statistics(x)
    mu2, s2 = fid_features_to_statistics(y)
    value = fid_statistics_to_metric(mu1, s1, mu2, s2)
    assert isinstance(value, float) and math.isfinite(value) and value >= 0.0
    # Independent reference: eigenvalues of S1 S2 (nonzero ones are real and positive).
    w = np.linalg.eigvals(s1 @ s2)
    ref = np.sqrt(np.clip(w.real, 0, None)).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-6)
    a1 = (x - mu1) / np.sqrt(n1 - 1)
    a2 = (y - mu2) / np.sqrt(n2 - 1)
    assert trace_sqrt_from_factors(a1, a2) == pytest.approx(ref, rel=1e-6)
    assert fid_from_features(x, y) == pytest.approx(value, rel=1e-6)
    assert fid_from_features(x, x) >= 0.0


# -- KID ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subset_size", [150, 60])
def test_kid_matches_torch_fidelity(subset_size):
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
    )
    from torch_fidelity.metric_kid import (
        kid_features_to_metric as tf_kid,
    )

    real, fake = _pair(n=150, m=150, d=32, seed=3)
    ours = kid_features_to_metric(fake, real, subsets=20, subset_size=subset_size)
    # torch-fidelity: input 1 is generated; float64 tensors so it computes in float64 too.
    ref = tf_kid(
        torch.from_numpy(fake),
        torch.from_numpy(real),
        kid_subsets=20,
        kid_subset_size=subset_size,
        verbose=False,
    )
    assert ours["kid"] == pytest.approx(ref[KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-12)
    assert ours["kid_std"] == pytest.approx(ref[KEY_METRIC_KID_STD], rel=1e-6, abs=1e-12)
    assert ours["kid_subset_size"] == subset_size


def test_kid_caps_subset_size_and_matches_torch_fidelity_at_the_cap():
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN
    from torch_fidelity.metric_kid import kid_features_to_metric as tf_kid

    real, fake = _pair(n=80, m=50, d=16, seed=4)
    ours = kid_features_to_metric(fake, real, subsets=10, subset_size=1000)
    assert ours["kid_subset_size"] == 50
    ref = tf_kid(
        torch.from_numpy(fake),
        torch.from_numpy(real),
        kid_subsets=10,
        kid_subset_size=50,
        verbose=False,
    )
    assert ours["kid"] == pytest.approx(ref[KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-12)


def test_kid_matches_cleanfid_kernel_distance():
    """clean-fid draws from the global np.random (feats2 first) and reports no std; seed it to match."""
    from cleanfid.fid import kernel_distance

    real, fake = _pair(n=120, m=100, d=24, seed=5)
    state = np.random.get_state()
    try:
        np.random.seed(7)
        ref = kernel_distance(real, fake, num_subsets=100, max_subset_size=1000)
    finally:
        np.random.set_state(state)
    # clean-fid's first draw is from feats2 (= fake here), like our first draw from ``fake``.
    ours = kid_features_to_metric(fake, real, subsets=100, subset_size=1000, seed=7)
    assert ours["kid"] == pytest.approx(ref, rel=1e-6, abs=1e-12)


# -- precision / recall / density / coverage -----------------------------------------------------
def _sq(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _brute_radii(x, k):
    d = _sq(x, x)
    np.fill_diagonal(d, np.inf)  # self excluded by index; duplicates stay at distance 0
    return np.sort(d, axis=1)[:, k - 1]


def _brute_prdc(real, fake, k):
    rr, rf = _brute_radii(real, k), _brute_radii(fake, k)
    d = _sq(real, fake)
    inside_real_balls = d <= rr[:, None]
    return {
        "precision": inside_real_balls.any(axis=0).mean(),
        "recall": (d <= rf[None, :]).any(axis=1).mean(),
        "density": inside_real_balls.sum() / (k * len(fake)),
        "coverage": inside_real_balls.any(axis=1).mean(),
    }


@pytest.mark.parametrize("dups", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_knn_radii_equal_brute_force(dups, k):
    real, fake = _pair(n=300, d=24, seed=6)
    if dups:
        real, fake = _with_duplicates(real, fake)
    dist, idx = knn_exact(real, k)
    full = _sq(real, real)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(dist, np.sort(full, axis=1)[:, :k])
    np.testing.assert_array_equal(np.take_along_axis(full, idx, axis=1), dist)
    assert not (idx == np.arange(len(real))[:, None]).any()


@pytest.mark.parametrize("block", [7, 64, 1024])
def test_symmetric_blocked_knn_equals_brute_force(monkeypatch, block):
    """The upper-triangle block products (ragged last block, transposed updates) lose nothing."""
    from varbench.metrics.knn import screening

    monkeypatch.setattr(screening, "SYM_BLOCK", block)
    real, _ = _pair(n=250, d=24, seed=11)
    data = np.vstack([real, real[:40], np.repeat(real[40:41], 6, axis=0)])  # copies and a clump
    dist, idx = knn_exact(data, 3)
    full = _sq(data, data)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(dist, np.sort(full, axis=1)[:, :3])
    np.testing.assert_array_equal(np.take_along_axis(full, idx, axis=1), dist)


def test_blocked_knn_when_neighbours_come_late_equals_brute_force(monkeypatch):
    """Clusters in reverse block order: rows first see far blocks, then a block holding all of
    their neighbours (many entries below the running k-th value: the selection's wide merge)."""
    from varbench.metrics.knn import screening

    monkeypatch.setattr(screening, "SYM_BLOCK", 32)
    rng = _rng(12)
    centres = 40.0 * rng.standard_normal((6, 16))
    data = np.vstack([c + rng.standard_normal((30, 16)) for c in centres])
    data = np.vstack([data[::2], data[1::2][::-1], data[:5]])  # copies of the first rows too
    for k in (3, 5):
        dist, idx = knn_exact(data, k)
        full = _sq(data, data)
        np.fill_diagonal(full, np.inf)
        np.testing.assert_array_equal(dist, np.sort(full, axis=1)[:, :k])
        np.testing.assert_array_equal(np.take_along_axis(full, idx, axis=1), dist)


@pytest.mark.parametrize("dense", [1, 10**9])
def test_ball_decisions_by_pairs_or_by_masks_equal_brute_force(monkeypatch, dense):
    """Both routes of the ball decisions (index arrays of the pairs with g <= hi, or boolean
    masks when those are dense) give the brute-force counts and pairs."""
    from varbench.metrics.knn import balls

    monkeypatch.setattr(balls, "DENSE", dense)
    real, fake = _with_duplicates(*_pair(n=120, m=100, d=8, seed=13))
    ra, rb = _brute_radii(real, 5), _brute_radii(fake, 3)
    d = _sq(real, fake)
    c = balls.ball_counts(real, fake, ra=ra, rb=rb, keep_pairs_a=True)
    np.testing.assert_array_equal(c.b_in_a, (d <= ra[:, None]).sum(axis=0))
    np.testing.assert_array_equal(c.a_hit, (d <= ra[:, None]).sum(axis=1))
    np.testing.assert_array_equal(c.a_in_b, (d <= rb[None, :]).sum(axis=1))
    np.testing.assert_array_equal(c.b_hit, (d <= rb[None, :]).sum(axis=0))
    pi, pj, d2 = c.pairs_a
    got = np.zeros(d.shape, bool)
    got[pi, pj] = True
    assert len(pi) == got.sum()  # each pair once
    np.testing.assert_array_equal(got, d <= ra[:, None])
    np.testing.assert_array_equal(d2, d[pi, pj])


def test_knn_radii_with_many_exact_ties_and_duplicates():
    """More duplicates than faiss candidates (self not returned) and a lattice (band overflow)."""
    rng = _rng(8)
    x = np.repeat(rng.standard_normal((6, 8)), 25, axis=0)
    lattice = np.array(np.meshgrid(*[np.arange(3)] * 4)).reshape(4, -1).T.astype(float)
    y = np.hstack([lattice, np.zeros((len(lattice), 4))]) + 5.0
    for data in (x, np.vstack([x, y])):
        dist, _ = knn_exact(data, 3)
        np.testing.assert_array_equal(dist[:, 2], _brute_radii(data, 3))


@pytest.mark.parametrize("dups", [False, True])
def test_precision_recall_equal_brute_force_and_density_coverage(dups):
    real, fake = _pair(seed=9)
    if dups:
        real, fake = _with_duplicates(real, fake)
    ref3, ref5 = _brute_prdc(real, fake, 3), _brute_prdc(real, fake, 5)
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == ref3["precision"] and pr["recall"] == ref3["recall"]
    dc = density_coverage(real, fake, k=5)
    assert dc["coverage"] == ref5["coverage"]
    assert dc["density"] == pytest.approx(ref5["density"], rel=1e-12)


def test_precision_recall_matches_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = _pair(n=500, m=400, d=64, seed=10)
    ours = precision_recall(real, fake, k=3)
    # torch-fidelity: features_1 = generated, features_2 = real; precision = generated in real balls.
    ref = prc_features_to_metric(
        torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3, verbose=False
    )
    assert round(ref["precision"] * len(fake)) == round(ours["precision"] * len(fake))
    assert round(ref["recall"] * len(real)) == round(ours["recall"] * len(real))
    assert ours["precision"] != ours["recall"]  # the comparison would not catch a swap otherwise


def test_copies_count_exactly():
    """The demo's copy model: every sample a copy of a reference, 10 copies of each of 10."""
    rng = _rng(11)
    real = rng.standard_normal((100, 16)).astype(np.float32) * 3 + 40
    fake = np.repeat(real[::10], 10, axis=0)
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == 0.1


def test_float32_inputs_match_float64_brute_force_on_the_same_values():
    real, fake = _pair(n=300, m=300, d=32, seed=12)
    real, fake = _with_duplicates(real.astype(np.float32), fake.astype(np.float32))
    ref = _brute_prdc(real.astype(np.float64), fake.astype(np.float64), 3)
    pr = precision_recall(real, fake, k=3)
    assert (pr["precision"], pr["recall"]) == (ref["precision"], ref["recall"])


def test_per_class_precision_recall_equals_within_class_brute_force():
    real, fake = _pair(n=200, m=160, d=16, seed=13)
    rc, fc = np.arange(200) % 4, np.arange(160) % 4
    fc[fc == 3] = 2  # class 3 has no samples -> NaN
    out = per_class_precision_recall(real, fake, rc, fc, k=3)
    assert out["class_index"] == [0, 1, 2, 3]
    for c in range(3):
        ref = _brute_prdc(real[rc == c], fake[fc == c], 3)
        assert out["recall"][c] == ref["recall"] and out["precision"][c] == ref["precision"]
    assert math.isnan(out["recall"][3])

    ctx = SimpleNamespace(
        options={}, real=lambda: real, fake=lambda: fake, real_class=rc, fake_class=fc,
        class_labels=["a", "b", "c", "d"],
    )  # fmt: skip
    art = PrecisionRecallMetric().artifacts(ctx)
    assert json.loads(json.dumps(art, allow_nan=False))["per_class"]["class_label"][3] == "d"
    assert art["per_class"]["recall"][3] is None


# -- Inception Score ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [500, 503])
def test_inception_score_matches_torch_fidelity(n):
    from torch_fidelity.metric_isc import (
        KEY_METRIC_ISC_MEAN,
        KEY_METRIC_ISC_STD,
        isc_features_to_metric,
    )

    logits = _rng(14).standard_normal((n, 1008)).astype(np.float32) * 3
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    ours = inception_score(logits)
    assert ours["isc"] == pytest.approx(ref[KEY_METRIC_ISC_MEAN], rel=1e-9)
    assert ours["isc_std"] == pytest.approx(ref[KEY_METRIC_ISC_STD], rel=1e-7)


def test_inception_score_closed_form():
    """One-hot-like predictions spread evenly over C classes give IS = C."""
    logits = np.full((1000, 10), -1e4)
    logits[np.arange(1000), np.arange(1000) % 10] = 0.0
    out = inception_score(logits, shuffle=False)
    assert out["isc"] == pytest.approx(10.0, rel=1e-9) and out["isc_std"] == pytest.approx(
        0.0, abs=1e-9
    )


# -- intervals (half-sampling) ----------------------------------------------------------------------
def test_half_samples_are_halves_of_classes_without_duplicates():
    rc = np.repeat(np.arange(10), 4)
    fc = np.repeat(np.arange(10), 6)
    method, draws = half_samples(rc, fc, 5, seed=1)
    assert method == "class_half_sampling"
    for ir, jf in draws:
        assert len(set(ir)) == len(ir) == 20 and len(set(jf)) == len(jf) == 30
        assert set(rc[ir]) == set(fc[jf]) and len(set(rc[ir])) == 5  # whole classes, both sides
    method, draws = half_samples(np.zeros(40, int), np.zeros(30, int), 2, seed=1)
    assert method == "image_half_sampling"
    for ir, jf in draws:
        assert len(set(ir)) == len(ir) == 20 and len(set(jf)) == len(jf) == 15


def test_half_sample_replicates_equal_recomputation_on_explicit_subsets():
    real, fake = _pair(n=120, m=120, d=8, seed=17)
    rc, fc = np.repeat(np.arange(12), 10), np.repeat(np.arange(12), 10)
    _, reps = half_sample_replicates(real, fake, rc, fc, 4, seed=2)
    _, draws = half_samples(rc, fc, 4, seed=2)
    for row, (ir, jf) in zip(reps, draws, strict=True):
        fid = _scipy_fid(
            *fid_features_to_statistics(real[ir]), *fid_features_to_statistics(fake[jf])
        )
        ref = _brute_prdc(real[ir], fake[jf], 3)
        assert row[0] == pytest.approx(fid, rel=1e-8)
        assert (row[1], row[2]) == (ref["precision"], ref["recall"])


def test_interval_metric_contains_estimate_reproducible_and_seeded():
    real, fake = _pair(n=120, m=120, d=8, seed=17)
    rc, fc = np.repeat(np.arange(12), 10), np.repeat(np.arange(12), 10)
    ctx = SimpleNamespace(
        options={"bootstrap": 30}, seed=4, real=lambda: real, fake=lambda: fake,
        real_class=rc, fake_class=fc,
    )  # fmt: skip
    a, b = BootstrapMetric().compute(ctx), BootstrapMetric().compute(ctx)
    assert a == b and set(BOOT_KEYS) <= set(a)
    assert a["interval_method"] == "class_half_sampling" and a["interval_replicates"] == 30
    fid = _scipy_fid(*fid_features_to_statistics(real), *fid_features_to_statistics(fake))
    ref = _brute_prdc(real, fake, 3)
    for name, value in (("fid", fid), ("precision", ref["precision"]), ("recall", ref["recall"])):
        assert a[f"{name}_lo"] <= value <= a[f"{name}_hi"] and a[f"{name}_lo"] < a[f"{name}_hi"]
    c = BootstrapMetric().compute(SimpleNamespace(**{**vars(ctx), "seed": 5}))
    assert c != a  # seeded from ctx.seed
    off = BootstrapMetric().compute(SimpleNamespace(options={"bootstrap": 0}, seed=4))
    assert all(math.isnan(off[k]) for k in BOOT_KEYS)


# -- registration ---------------------------------------------------------------------------------
def test_metrics_registered_with_options_and_result_columns():
    from varbench.runs.results import schema

    expected = {
        "density_coverage": ("density", "coverage"),
        "isc": ("isc", "isc_std"),
        "sfid": ("sfid",),
        "bootstrap": (*BOOT_KEYS, "interval_replicates"),
    }
    names = schema().names
    for name, keys in expected.items():
        assert metric_registry.get(name).keys == keys
        assert all(k in names for k in keys)
    assert {"bootstrap", "prc_k", "dc_k"} <= {p.name for p in METRIC_OPTIONS}


def test_isc_and_sfid_metrics_read_the_inception_outputs():
    rng = _rng(18)
    spatial = {
        "real": rng.standard_normal((40, 7, 3, 3)),
        "fake": rng.standard_normal((30, 7, 3, 3)),
    }
    logits = rng.standard_normal((30, 1008))
    calls = []

    def getter(which):
        def get(encoder=None, output="features"):
            calls.append((which, encoder, output))
            return logits if output == "logits" else spatial[which]

        return get

    ctx = SimpleNamespace(options={}, real=getter("real"), fake=getter("fake"))
    sfid = metric_registry.get("sfid")().compute(ctx)["sfid"]
    assert sfid == pytest.approx(
        fid_from_features(spatial["real"].reshape(40, -1), spatial["fake"].reshape(30, -1)),
        rel=1e-12,
    )
    assert metric_registry.get("isc")().compute(ctx) == inception_score(logits)
    assert ("fake", "inception", "logits") in calls and ("real", "inception", "spatial") in calls


@pytest.mark.parametrize("cached", [True, False])
def test_precision_recall_plan_subsets_equal_direct_computation(cached):
    """Half-samples read from the once-computed matrices give exactly the direct numbers."""
    from varbench.metrics.prdc import SubsetPrecisionRecall

    real, fake = _pair(n=240, d=16, seed=21)
    real, fake = _with_duplicates(real, fake)
    plan = SubsetPrecisionRecall(real, fake, max_bytes=1e12 if cached else 0)
    assert plan.cached is cached
    rng = _rng(3)
    assert plan(k=3) == precision_recall(real, fake, 3)
    for _ in range(4):
        ir = np.sort(rng.choice(len(real), len(real) // 2, replace=False))
        jf = np.sort(rng.choice(len(fake), len(fake) // 2, replace=False))
        got = plan(ir, jf, k=3)
        brute = _brute_prdc(real[ir], fake[jf], 3)
        assert got == precision_recall(real[ir], fake[jf], 3)
        assert got["precision"] == brute["precision"] and got["recall"] == brute["recall"]
