"""Diversity, novelty, CMMD and palette metrics against their reference code or packages.

References: the ``vendi-score`` package, torchmetrics' MiFID, the Pylette package, and
transcriptions (below, marked) of dgm-eval's authpct.py / ct.py / fls.py / fd.py / prdc.py
realism and google-research's cmmd/distance.py, all on the same features.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from varbench.metrics.knn import cross as knn_cross_mod
from varbench.metrics.knn.cross import knn_cross, max_weighted_inverse
from varbench.metrics.knn.neighbours import approx_sq_dists
from varbench.metrics.knn.screening import screen_sets


def _rng(seed=0):
    return np.random.default_rng(seed)


def _clusters(n, d, seed, centres=3, spread=0.3):
    """n points around 3 fixed well-separated centres (the same for every seed)."""
    mu = _rng(99).standard_normal((centres, d)) * 6
    rng = _rng(seed)
    lab = rng.integers(centres, size=n)
    return mu[lab] + spread * rng.standard_normal((n, d))


# -- the k-NN room's cross-set queries -----------------------------------------------------------
def test_knn_cross_equals_brute_force_with_ties():
    rng = _rng(1)
    base = rng.standard_normal((300, 20)).astype(np.float32)
    q = np.vstack([rng.standard_normal((120, 20)).astype(np.float32), base[:15], base[:3]])
    base = np.vstack([base, base[:5]])  # duplicate base rows: ties broken by lowest index
    d, i = knn_cross(q, base, 4)
    full = cdist(q.astype(np.float64), base.astype(np.float64), "sqeuclidean")
    order = np.lexsort((np.broadcast_to(np.arange(len(base)), full.shape), full), axis=1)[:, :4]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_allclose(d, np.take_along_axis(full, order, 1), rtol=1e-12, atol=1e-12)
    assert (d[120:135, 0] == 0).all()


@pytest.mark.parametrize("route", ["product", "stored", "stored_fallback"])
def test_max_weighted_inverse_equals_brute_force(route, monkeypatch):
    """Each route: own float32 products; a plan's stored matrix screened in float32; that
    screen handing every block back (cap 0). Zero weights, a copy, duplicate base rows."""

    rng = _rng(2)
    base = rng.standard_normal((200, 12))
    base[150] = base[151]  # equal ratios when their weights match: lowest index wins
    q = np.vstack([rng.standard_normal((90, 12)), base[7:8]])
    w = rng.random(200)
    w[::3] = 0.0
    w[150] = w[151] = 0.5
    if route == "product":
        best, arg = max_weighted_inverse(q, base, w)
    else:
        if route == "stored_fallback":
            monkeypatch.setattr(knn_cross_mod, "SCREEN_CAP", 0)
        pb, pq = screen_sets(base, q)
        best, arg = max_weighted_inverse(q, base, w, (pq, pb), approx_sq_dists(pq, pb))
    full = cdist(q, base, "sqeuclidean")
    with np.errstate(divide="ignore"):
        ratio = np.where(w > 0, w / full, -np.inf)
    np.testing.assert_allclose(best[:-1], ratio[:-1].max(1), rtol=1e-12)
    np.testing.assert_array_equal(arg[:-1], ratio[:-1].argmax(1))
    assert best[-1] == np.inf and arg[-1] == 7


def test_nearest_up_to_sign_equals_brute_force():
    from varbench.metrics.knn.cross import nearest_up_to_sign

    rng = _rng(3)
    base = rng.standard_normal((150, 16))
    q = np.vstack([rng.standard_normal((60, 16)), base[:4], -base[4:6], 2.0 * base[6:7]])
    full = cdist(q, np.vstack([base, -base]), "sqeuclidean").min(axis=1)
    got = nearest_up_to_sign(q, base)
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12)
    assert (got[60:66] == 0).all()  # copies and negated copies are at exactly 0


@pytest.mark.parametrize("cap", [64, 0])
def test_mifid_distance_from_the_plan_screen_equals_brute_force(cap, monkeypatch):
    """Signed rows, negated copies (|cos| = 1) and zero-sum rows dropped; cap 0 forces the
    screen to hand every block to the float32 product."""
    from varbench.metrics import mifid
    from varbench.metrics.pointcache import PointCache

    rng = _rng(13)
    real = rng.standard_normal((300, 40)).astype(np.float32)
    fake = (rng.standard_normal((280, 40)) * 1.2 + 0.1).astype(np.float32)
    fake[:5] = -real[:5]  # negated copies: 1 - |cos| = 0
    fake[5:8] = 3.0 * real[5:8]
    real[9] = 0.0  # zero-sum rows are dropped, as torchmetrics does
    fake[10, :] = 0.0
    fake[11, :20], fake[11, 20:] = 1.0, -1.0
    monkeypatch.setattr(knn_cross_mod, "SCREEN_CAP", cap)
    plan = PointCache(real, fake)
    got = mifid.cached_mifid(plan)["mifid_tm_memorisation_distance"]
    a = np.asarray(real, np.float64)[np.asarray(real, np.float64).sum(1) != 0]
    b = np.asarray(fake, np.float64)[np.asarray(fake, np.float64).sum(1) != 0]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ref = float(np.mean((1.0 - np.abs(a @ b.T)).min(axis=1)))
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-13)
    assert got == mifid.memorisation_distance(real, fake)


def test_point_cache_equals_each_standalone_metric_bit_for_bit():
    """The shared plan (what scoring runs) gives the standalone functions' exact numbers."""
    from varbench.metrics import gaussian, mifid, novelty, prdc, realism
    from varbench.metrics.pointcache import PointCache

    rng = _rng(12)
    real = np.abs(rng.standard_normal((260, 72))).astype(np.float32)
    fake = np.abs(rng.standard_normal((230, 72)) * 1.1 + 0.05).astype(np.float32)
    fake[:6] = real[10:16]  # copies
    real[20] = real[21]  # a duplicate reference
    held = np.abs(rng.standard_normal((120, 72))).astype(np.float32)
    for cached in (True, False):
        plan = PointCache(real, fake, max_bytes=1e9 if cached else 0)
        assert plan.cached is cached
        assert plan.density_coverage(5) == prdc.density_coverage(real, fake, 5)
        assert plan.precision_recall(3) == prdc.precision_recall(real, fake, 3)
        assert novelty.cached_authpct(plan) == novelty.authpct(real, fake)
        assert np.array_equal(
            realism.cached_realism_scores(plan), realism.realism_scores(real, fake)
        )
        assert plan.fid() == gaussian.fid_from_features(real, fake)
        assert mifid.cached_mifid(plan) == mifid.mifid_parts(real, fake)
        assert plan.fd_infinity(seed=5) == gaussian.fd_infinity(real, fake, seed=5)
        ct = novelty.ct_score(
            real, held, fake, seed=1, pca=novelty.cached_pca(plan, novelty.CT_PCA_DIM)
        )
        assert ct == novelty.ct_score(real, held, fake, seed=1)


# -- Vendi -------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1.0, 2.0, 0.5, math.inf])
@pytest.mark.parametrize("shape", [(40, 64), (300, 16)])
def test_vendi_equals_vendi_score_package(q, shape):
    from vendi_score import vendi

    from varbench.metrics.vendi import vendi_score

    x = _rng(3).standard_normal(shape)
    ref = vendi.score_dual(x, q="inf" if math.isinf(q) else q)
    assert vendi_score(x, q) == pytest.approx(ref, rel=1e-6)


def test_vendi_closed_forms():
    from varbench.metrics.vendi import vendi_score

    assert vendi_score(np.eye(7)) == pytest.approx(7.0)  # 7 orthogonal rows: 7 distinct
    assert vendi_score(np.ones((5, 3))) == pytest.approx(1.0)  # identical rows: one


@pytest.mark.parametrize("q", [1.0, 2.0, 0.5, math.inf])
def test_vendi_zero_rows(q):
    """All-zero rows: no direction, the kernel K/n is 0, so the score is undefined: NaN for
    every q (the vendi-score package gives 1, inf or 0 by q there, and log(0) at q = inf).
    Some zero rows: the rest defines it, as the package computes (zero rows stay zero)."""
    import warnings

    from vendi_score import vendi

    from varbench.metrics.vendi import grouped_vendi, vendi_score

    assert math.isnan(vendi_score(np.zeros((5, 8)), q))
    x = _rng(4).standard_normal((12, 8))
    x[[2, 7]] = 0.0
    with warnings.catch_warnings():  # sklearn's normalize on zero rows is silent; be safe
        warnings.simplefilter("ignore")
        ref = vendi.score_dual(x, q="inf" if math.isinf(q) else q)
    assert vendi_score(x, q) == pytest.approx(ref, rel=1e-9)
    groups = np.array([0] * 12 + [1] * 3)
    got = grouped_vendi(np.vstack([x, np.zeros((3, 8))]), groups, q)
    assert got[0] == pytest.approx(ref, rel=1e-9) and math.isnan(got[1])


# -- authenticity (transcription of dgm-eval metrics/authpct.py) -------------------------------
def _ref_authpct(train_feat, gen_feat):
    train_feat = torch.tensor(train_feat, dtype=torch.float64)
    gen_feat = torch.tensor(gen_feat, dtype=torch.float64)
    real_dists = torch.cdist(train_feat, train_feat)
    real_dists.fill_diagonal_(float("inf"))
    gen_dists = torch.cdist(train_feat, gen_feat)
    real_min_dists = real_dists.min(axis=0)
    gen_min_dists = gen_dists.min(dim=0)
    authen = real_min_dists.values[gen_min_dists.indices] < gen_min_dists.values
    return (100 * torch.sum(authen) / len(authen)).item()


def test_authpct_equals_dgm_eval():
    from varbench.metrics.novelty import authpct

    rng = _rng(4)
    train = rng.standard_normal((400, 24))
    gen = np.vstack([rng.standard_normal((250, 24)) * 0.9, train[:30] + 1e-3])
    assert authpct(train, gen) == pytest.approx(
        _ref_authpct(train, gen), abs=1e-4
    )  # ref: float32 %
    assert authpct(train, train[:50] + 0.0) == 0.0  # copies are never authentic


# -- C_T (transcription of dgm-eval metrics/ct.py, sklearn's NN / KMeans / PCA) ----------------
def _ref_zu(pn, qm, t):
    from scipy.stats import mannwhitneyu
    from sklearn.neighbors import NearestNeighbors as NN

    m, n = qm.shape[0], pn.shape[0]
    t_nn = NN(n_neighbors=1).fit(t)
    lqm, _ = t_nn.kneighbors(X=qm, n_neighbors=1)
    lpn, _ = t_nn.kneighbors(X=pn, n_neighbors=1)
    u, _ = mannwhitneyu(lqm, lpn, alternative="less")
    u = np.asarray(u).item()  # (1,) array from the (n, 1) inputs; NumPy 2 no longer unpacks it
    mean = (n * m / 2) - 0.5
    std = np.sqrt(n * m * (n + m + 1) / 12)
    return (u - mean) / std


def _ref_c_t(pn, pn_cells, qm, qm_cells, t, t_cells, tau):
    m, n = qm.shape[0], pn.shape[0]
    k = np.max(np.unique(t_cells)) + 1
    labels, cts = np.unique(qm_cells, return_counts=True)
    qm_cts = np.zeros(k)
    qm_cts[labels.astype(int)] = cts
    pi_tau = qm_cts / m > tau
    labels, cts = np.unique(pn_cells, return_counts=True)
    pn_cts = np.zeros(k)
    pn_cts[labels.astype(int)] = cts
    pn_of_pi = pn_cts / n
    zus = np.zeros(len(np.unique(pn_cells)))
    for i in range(len(zus)):
        q = qm[qm_cells == i]
        zus[i] = _ref_zu(pn[pn_cells == i], q, t[t_cells == i]) if len(q) else 0
    return pn_of_pi[pi_tau].dot(zus[pi_tau]) / np.sum(pn_of_pi[pi_tau])


def _ref_ct(train, test, gen, seed):
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if train.shape[1] > 64:
        pca = PCA(n_components=64, svd_solver="full").fit(train)
        train, test, gen = pca.transform(train), pca.transform(test), pca.transform(gen)
    km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(train)
    cells = [km.predict(a) for a in (train, test, gen)]
    return (
        _ref_c_t(test, cells[1], gen, cells[2], train, cells[0], 20 / len(gen)),
        (train, test, gen),
        cells,
    )


def test_ct_score_equals_dgm_eval():
    from varbench.metrics.novelty import ct_from_cells, ct_preprocess, ct_score

    train = _clusters(600, 80, seed=5)
    test = _clusters(300, 80, seed=6)
    gen = np.vstack([_clusters(200, 80, seed=7, spread=0.45), train[:60] + 0.01])
    ref, (tr, te, ge), cells = _ref_ct(train, test, gen, seed=0)
    # same projected features and cells: the statistic itself
    got_cells = ct_from_cells(tr, te, ge, cells[0], cells[1], cells[2], 20 / len(ge))
    assert got_cells == pytest.approx(ref, rel=1e-9)
    # exact PCA equals sklearn's full-SVD PCA up to each axis' sign
    mine = ct_preprocess(train, test, gen)[0]
    np.testing.assert_allclose(np.abs(mine), np.abs(tr), rtol=1e-6, atol=1e-8)
    # end to end (our seeded k-means finds sklearn's cells on separated clusters)
    value = ct_score(train, test, gen, seed=0)
    assert value == pytest.approx(ref, rel=1e-6)
    assert ct_score(train, test, gen, seed=0) == value  # seeded: same features, same number
    assert value > 3  # wider than the data: underfitting
    assert ct_score(train, test, train[:200] + 1e-3) < -3  # near copies: data copying


@pytest.mark.parametrize("seed", [0, 3])
def test_ct_kmeans_is_sklearn_on_overlapping_data(seed):
    """Not separated clusters: the cells are scikit-learn's KMeans(3, n_init=10) itself."""
    from sklearn.cluster import KMeans

    from varbench.metrics.kmeans import kmeans_sklearn, predict
    from varbench.metrics.novelty import ct_score

    rng = _rng(20 + seed)
    x = rng.standard_normal((1500, 12)) * np.linspace(1.0, 3.0, 12)
    km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(x)
    centres, labels = kmeans_sklearn(x, 3, seed, n_init=10)
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(labels, km.labels_)
    other = rng.standard_normal((400, 12)) * 2.0
    np.testing.assert_array_equal(predict(other, centres), km.predict(other))
    test, gen = rng.standard_normal((500, 12)) * 2.0, rng.standard_normal((300, 12)) * 1.5
    ref = _ref_ct(x, test, gen, seed)[0]
    assert ct_score(x, test, gen, seed=seed) == pytest.approx(ref, rel=1e-9)


def test_ct_cells_beyond_the_training_cells_are_an_error():
    """dgm-eval's C_T indexes its cell counts by label (an IndexError for a label past the
    training cells); varbench names the cells. ct_score's predict never makes such labels."""
    from varbench.metrics.novelty import CTCellError, ct_from_cells

    rng = _rng(3)
    tr, te, ge = (rng.standard_normal((m, 4)) for m in (90, 60, 60))
    cells = [np.arange(len(a)) % 3 for a in (tr, te, ge)]
    assert np.isfinite(ct_from_cells(tr, te, ge, *cells, 0.1))
    bad = cells[2].copy()
    bad[:5] = 3
    with pytest.raises(CTCellError, match=r"generated points in cells \[3\].*0\.\.2"):
        ct_from_cells(tr, te, ge, cells[0], cells[1], bad, 0.1)
    with pytest.raises(CTCellError, match=r"test points in cells \[-1\]"):
        ct_from_cells(tr, te, ge, cells[0], cells[1] - 1, cells[2], 0.1)


# -- FLS (transcription of dgm-eval metrics/fls.py, on the CPU) --------------------------------
def _ref_fls_both(train, baseline, test, gen, dtype=torch.float32, standardise=True):
    feats = [torch.tensor(a, dtype=dtype) for a in (train, baseline, test, gen)]
    if standardise:
        allf = torch.cat(feats, 0)
        mean, std = allf.mean(0), allf.std(0)
        feats = [(f - mean) / std for f in feats]
    train, baseline, test, gen = feats

    def dists(a, b):
        return (torch.cdist(a, b) ** 2).detach()

    def nll(dd, ls, dim, detailed=False):
        e = (-0.5 * dd) / torch.exp(ls)
        e -= (dim / 2) * ls
        e += torch.log(torch.tensor(1 / dd.shape[1], dtype=dtype))
        inner = torch.logsumexp(e, dim=1)
        total = torch.mean(-inner)
        return (total, -inner) if detailed else total

    def optimise(x_data, x_kernel):
        ls = torch.ones(x_kernel.shape[0], requires_grad=True, dtype=dtype)
        ls.data = 0 * ls
        opt = torch.optim.Adam([ls], lr=0.5)
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50], gamma=0.1)
        dd = dists(x_data, x_kernel)
        for _ in range(100):
            loss = nll(dd, ls, x_data.shape[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sch.step()
            with torch.no_grad():
                ls.data = ls.clamp(-100, 20).data
        return ls

    def pairwise_ll(x_data, x_kernel, ls):
        e = (-0.5 * dists(x_data, x_kernel)) / torch.exp(ls)
        e -= (x_kernel.shape[1] / 2) * ls
        e += torch.log(torch.tensor(1 / x_kernel.shape[0], dtype=dtype))
        return e

    gls = optimise(train, gen)
    gen_nll = nll(dists(test, gen), gls, gen.shape[1], True)[0].item()
    bls = optimise(train, baseline)
    base_nll = nll(dists(test, baseline), bls, baseline.shape[1], True)[0].item()
    fls = math.e ** (-(2 * (gen_nll - base_nll) / train.shape[1])) * 100
    size = min(test.shape[0], train.shape[0])
    diff = pairwise_ll(train[:size], gen, gls).logsumexp(0) - pairwise_ll(
        test[:size], gen, gls
    ).logsumexp(0)
    return fls, ((diff > 0).sum().item() / diff.shape[0]) * 100 - 50


def test_fls_equals_dgm_eval():
    from varbench.metrics.fls import fls, fls_overfit, fls_scores, fls_subsets

    rng = _rng(8)
    train = rng.standard_normal((160, 12))
    test = rng.standard_normal((70, 12))
    gen = np.vstack([rng.standard_normal((40, 12)) * 1.2, train[:40] + 0.01])
    sets = fls_subsets(train, test, gen, seed=3)
    assert [len(s) for s in sets] == [70, 70, 70, 70]
    ref_fls, ref_over = _ref_fls_both(*sets)
    got = fls_scores(*sets)
    assert got["fls"] == pytest.approx(ref_fls, rel=1e-4)
    assert got["fls_overfit"] == pytest.approx(ref_over, abs=1e-9)
    assert fls(*sets) == got["fls"] and fls_overfit(*sets) == got["fls_overfit"]


@pytest.mark.slow
def test_fls_at_inception_width_equals_a_float64_transcription():
    """d = 2048, n = 1,000 per subset: against dgm-eval's fls.py transcribed in float64 after
    the same float32 standardisation. Features: 16 strong directions plus noise, 200 near copies.

    Tolerance: varbench, as dgm-eval, takes squared distances from float32 ``torch.cdist``
    (||x||^2 + ||y||^2 - 2 x.y), which errs by up to ~3e-3 relative on the near copies and moves
    their fitted log-bandwidths by ~0.02; FLS divides the NLL gap by d and lands 2.9e-6 from
    the float64 value here, so 2e-5 is the bound (7x margin). ~20-40 s (the reference's
    autograd fit on 10^6 exponentials a step): marked slow."""
    from varbench.metrics.fls import fls_scores

    rng = _rng(31)
    n, d = 1000, 2048
    basis = rng.standard_normal((16, d))

    def draw(m, scale=1.0, shift=0.0):
        return (rng.standard_normal((m, 16)) * scale + shift) @ basis + rng.standard_normal((m, d))

    train, base, test = draw(n), draw(n), draw(n)
    gen = np.vstack([draw(n - 200, 1.3, 0.2), train[:200] + 0.05 * rng.standard_normal((200, d))])
    sets = [np.asarray(a, np.float32) for a in (train, base, test, gen)]
    std = [_standardised32(sets, i) for i in range(4)]
    ref_fls, ref_over = _ref_fls_both(*std, dtype=torch.float64, standardise=False)
    got = fls_scores(*sets)
    assert got["fls"] == pytest.approx(ref_fls, rel=2e-5)
    assert got["fls_overfit"] == pytest.approx(ref_over, abs=1e-9)
    assert got["fls_overfit"] > 0  # the 200 near copies explain training points better


def _standardised32(sets, i):
    """Set i standardised with the mean and std of all four, in float32, as dgm-eval."""
    allf = torch.cat([torch.tensor(a) for a in sets], 0)
    return ((torch.tensor(sets[i]) - allf.mean(0)) / allf.std(0)).double().numpy()


def test_fls_needs_four_references():
    from varbench.errors import UsageError
    from varbench.metrics.fls import fls_subsets

    rng = _rng(2)
    test, gen = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    with pytest.raises(UsageError, match="at least 4 reference images.*got 3"):
        fls_subsets(rng.standard_normal((3, 3)), test, gen)
    with pytest.raises(UsageError, match="at least 2 generated images, got 1"):
        fls_subsets(rng.standard_normal((8, 3)), test, gen[:1])
    assert [len(a) for a in fls_subsets(rng.standard_normal((4, 3)), test, gen)] == [2] * 4


# -- FD-infinity (transcription of dgm-eval metrics/fd.py with our nested draws) ---------------
@pytest.mark.parametrize("n_real, n_fake, d", [(500, 400, 10), (300, 300, 40)])
def test_fd_infinity_equals_dgm_eval_fit(n_real, n_fake, d):
    """(300, 300, 40): the smallest size (30 rows) has a singular covariance (N x N route)."""
    from scipy import linalg
    from sklearn.linear_model import LinearRegression

    from varbench.metrics.gaussian import fd_infinity, fd_infinity_sizes

    rng = _rng(9)
    real = rng.standard_normal((n_real, d))
    fake = rng.standard_normal((n_fake, d)) * 1.1 + 0.2

    def fd(mu1, mu2, s1, s2, act, exact):
        if exact:  # tr sqrt(S1 S2) as the singular values of the centred rows' cross product
            a1 = (real - mu1) / np.sqrt(len(real) - 1)
            a2 = (act - mu2) / np.sqrt(len(act) - 1)
            trace = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
        else:
            trace = np.trace(linalg.sqrtm(s1.dot(s2)).real)
        diff = mu1 - mu2
        return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * trace

    # dgm-eval's sizes, transcribed (not varbench's function); the draw is the one fd_infinity
    # documents (its sampling is tested against dgm-eval's own draws over seeds below)
    batches = np.linspace(min(5000, max(n_fake // 10, 2)), n_fake, 15).astype("int32")
    np.testing.assert_array_equal(fd_infinity_sizes(n_fake), batches)
    perm = np.random.default_rng(4).permutation(len(fake))
    mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
    got = fd_infinity(real, fake, seed=4)
    for exact in (False, True):
        fds = []
        for n in batches:
            act = fake[perm[:n]]
            fds.append(fd(mu1, act.mean(0), s1, np.cov(act, rowvar=False), act, exact))
        reg = LinearRegression().fit(1 / batches.reshape(-1, 1), np.array(fds).reshape(-1, 1))
        ref = reg.predict(np.array([[0]]))[0, 0]
        # sqrtm of a singular product (30 rows in 40 dims) errs by ~4e-9 relative at that size
        rel = 1e-7 if (batches[0] <= d and not exact) else 1e-8
        assert got == pytest.approx(ref, rel=rel)


def _dgm_eval_fd_infinity(real, fake, rng, num_points=15):
    """dgm-eval's ``compute_FD_infinity`` transcribed: its own sizes and its own independent
    draws (``rng.choice(reps2, n, replace=False)`` per size), scipy ``sqrtm``, sklearn's line."""
    from scipy import linalg
    from sklearn.linear_model import LinearRegression

    batches = np.linspace(min(5000, max(len(fake) // 10, 2)), len(fake), num_points)
    batches = batches.astype("int32")
    mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
    fds = []
    for n in batches:
        act = rng.choice(fake, n, replace=False)
        mu2, s2 = act.mean(0), np.cov(act, rowvar=False)
        diff = mu1 - mu2
        covmean = linalg.sqrtm(s1.dot(s2)).real
        fds.append(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    reg = LinearRegression().fit(1 / batches.reshape(-1, 1), np.array(fds).reshape(-1, 1))
    return reg.predict(np.array([[0]]))[0, 0]


def test_fd_infinity_agrees_with_dgm_eval_over_seeds():
    """Statistical agreement with the reference's own sampling. Both intercepts are linear in
    the FD_N, and each FD_N is of a uniform subset without replacement in both, so their
    expectations are equal; nested (ours) and independent (dgm-eval) draws change only the
    spread. Over S = 100 seeds each, the means must agree within 4 standard errors of their
    difference, sqrt(var_ours / S + var_ref / S). The fake rows are sorted along one axis, so
    a draw that is not uniform (first N rows: ~29 standard errors off; with replacement: ~6 at
    S = 40) fails."""
    from varbench.metrics.gaussian import fd_infinity

    rng = _rng(9)
    real = rng.standard_normal((400, 8))
    fake = rng.standard_normal((300, 8)) * 1.1 + 0.2
    fake = fake[np.argsort(fake[:, 0])]
    s = 100
    ours = np.array([fd_infinity(real, fake, seed=i) for i in range(s)])
    ref = np.array(
        [_dgm_eval_fd_infinity(real, fake, np.random.default_rng(10_000 + i)) for i in range(s)]
    )
    se = math.sqrt(ours.var(ddof=1) / s + ref.var(ddof=1) / s)
    assert abs(ours.mean() - ref.mean()) < 4 * se
    assert 0.5 < ours.std(ddof=1) / ref.std(ddof=1) < 2  # same order of spread


# -- MiFID, torchmetrics' direction (mifid_tm; Kaggle's: test_novelty_shown.py) -------------
@pytest.mark.parametrize("copy", [False, True])
def test_mifid_equals_torchmetrics(copy):
    from torchmetrics.image.mifid import _mifid_compute

    from varbench.metrics.mifid import mifid_tm

    rng = _rng(10)
    real = np.abs(rng.standard_normal((300, 16))) + 0.1
    fake = np.abs(rng.standard_normal((250, 16))) * 1.1 + 0.1
    if copy:  # memorised: every real image has a near copy, so the distance is < 0.1
        fake = np.vstack([real + 1e-3 * rng.standard_normal(real.shape), fake[:10]])
    r, f = torch.tensor(real), torch.tensor(fake)
    ref = _mifid_compute(r.mean(0), torch.cov(r.T), r, f.mean(0), torch.cov(f.T), f).item()
    assert mifid_tm(real, fake) == pytest.approx(ref, rel=1e-6)


# -- realism (transcription of dgm-eval metrics/prdc.py, realism=True) --------------------------
def _dgm_eval_realism(real, fake, nearest_k=5):
    """dgm-eval's ``compute_prdc(..., realism=True)['realism']``, brute force (float64)."""
    dr = cdist(real, real)
    kk = nearest_k + 1  # get_kth_value(distances, k=nearest_k + 1): self included
    radii = np.take_along_axis(dr, np.argpartition(dr, kk, axis=-1)[..., :kk], -1).max(-1)
    mask = radii < np.median(radii)
    with np.errstate(divide="ignore"):
        return (radii[mask][:, None] / cdist(real, fake)[mask]).max(axis=0), mask


def test_realism_equals_dgm_eval_at_its_default_k_with_copies():
    """Default k is dgm-eval's nearest_k = 5; scores equal its transcription, copies are inf
    and are counted (frac_copies), ranked highest in the median, left out of the mean only."""
    from varbench.metrics import realism

    rng = _rng(11)
    real = rng.standard_normal((300, 20))
    fake = rng.standard_normal((120, 20)) * 1.3
    ref0, mask = _dgm_eval_realism(real, fake)
    kept, dropped = np.flatnonzero(mask)[:3], np.flatnonzero(~mask)[0]
    fake = np.vstack([fake, real[kept], real[dropped : dropped + 1]])  # 3 copies + 1 not kept
    ref, _ = _dgm_eval_realism(real, fake)
    assert np.isinf(ref).sum() == 3 and np.isfinite(ref[-1])
    got = realism.realism_scores(real, fake)  # default k
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-9)
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    assert not np.allclose(realism.realism_scores(real, fake, k=3)[:120], ref0)  # k matters
    summary = realism.realism_summary(got)
    fin = ref[np.isfinite(ref)]
    assert summary["realism_frac_copies"] == pytest.approx(3 / len(ref), rel=1e-15)
    assert summary["realism_median"] == pytest.approx(np.median(ref), rel=1e-9)
    assert summary["realism_mean"] == pytest.approx(fin.mean(), rel=1e-9)
    assert summary["realism_frac_ge1"] == np.mean(ref >= 1.0)
    # more than half copies: the median is inf; all copies: the mean is nan
    assert realism.realism_summary(np.array([np.inf, np.inf, 0.5]))["realism_median"] == np.inf
    allcp = realism.realism_summary(np.array([np.inf, np.inf]))
    assert math.isnan(allcp["realism_mean"]) and allcp["realism_frac_copies"] == 1.0
    keys = {k.name: k.better for k in realism.RealismMetric.results}
    assert keys["realism_frac_copies"] == -1 and set(summary) == set(keys)


def test_realism_relation_to_the_authors_code():
    """kynkaat's ManifoldEstimator(clamp_to_percentile=50).evaluate, transcribed: squared
    distances, radii <= the median kept, eps 1e-5. With no radius tied at the median and no
    copy, its score is ours squared (up to eps) and its share >= 1 is ours."""
    from varbench.metrics.realism import realism_scores, realism_summary

    rng = _rng(21)
    real = rng.standard_normal((301, 12))
    fake = rng.standard_normal((90, 12)) * 1.2
    dsq = cdist(real, real, "sqeuclidean")
    d_k = np.partition(dsq, np.arange(4), axis=1)[:, 3]  # nhood_sizes=[3], self at index 0
    d_k = np.where(d_k > np.percentile(d_k, 50), 0.0, d_k)
    theirs = np.max(d_k[:, None] / (cdist(real, fake, "sqeuclidean") + 1e-5), axis=0)
    ours = realism_scores(real, fake, k=3)
    # 301 radii: the median is one of them; it is kept by kynkaat, dropped by dgm-eval/us
    med = np.flatnonzero(d_k == d_k.max())
    assert len(med) == 1
    without_median = np.max(
        np.delete(d_k, med)[:, None]
        / (np.delete(cdist(real, fake, "sqeuclidean"), med, axis=0) + 1e-5),
        axis=0,
    )
    np.testing.assert_allclose(ours**2, without_median, rtol=1e-5)
    assert np.mean(theirs >= 1) >= realism_summary(ours)["realism_frac_ge1"]


# -- CMMD (transcription of google-research cmmd/distance.py, float64 NumPy) --------------------
def _ref_mmd(x, y, sigma=10, scale=1000):
    xx, yy, xy = x @ x.T, y @ y.T, x @ y.T
    xs, ys = np.diag(xx), np.diag(yy)
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * xx + xs[:, None] + xs[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * xy + xs[:, None] + ys[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * yy + ys[:, None] + ys[None, :])))
    return scale * (k_xx + k_yy - 2 * k_xy)


def test_cmmd_equals_reference(monkeypatch):
    import varbench.metrics.cmmd as cm

    monkeypatch.setattr(cm, "_BLOCK", 128)  # several blocks, a ragged last one
    rng = _rng(12)
    x = rng.standard_normal((300, 64))
    y = rng.standard_normal((210, 64)) + 0.15
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    ref = _ref_mmd(x, y)
    assert cm.cmmd(x, y) == pytest.approx(ref, rel=1e-6)
    assert cm.cmmd(x, x) == pytest.approx(0.0, abs=1e-7)
    assert cm.cmmd(x[:50], y, sigma=2.0, scale=1.0) == pytest.approx(
        _ref_mmd(x[:50], y, 2.0, 1.0), rel=1e-6
    )
    # rows far from unit length take the direct route; both routes agree where both apply
    assert cm.cmmd(40.0 * x, 40.0 * y) == pytest.approx(_ref_mmd(40.0 * x, 40.0 * y), rel=1e-6)
    monkeypatch.setattr(cm, "_SMALL_EXPONENT", 0.0)
    assert cm.cmmd(x, y) == pytest.approx(ref, rel=1e-6)


# -- CMMD's encoder: a tiny random-weight CLIP of the ViT-L/14-336 family ----------------------
TINY_336 = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 336, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _ref_cmmd_pixels(image, size=336):
    """Transcription of google-research cmmd io_util._center_crop_and_resize + CLIP scaling."""
    from PIL import Image

    im = Image.fromarray(image)
    w, h = im.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = np.asarray(im).astype(np.float32) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    return torch.from_numpy((x - mean) / std).permute(2, 0, 1)[None]


def test_clip_l336_encoder_on_a_tiny_random_clip(tmp_path, monkeypatch):
    import time

    import open_clip
    from open_clip.factory import _MODEL_CONFIGS
    from PIL import Image

    from varbench.encoders import encoder_registry
    from varbench.encoders.clip336 import ClipL336Encoder
    from varbench.errors import WeightsUnavailableError
    from varbench.plan.demo_data import demo_image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty" / "hub"))
    monkeypatch.delenv("VARBENCH_WEIGHTS_DIR", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        encoder_registry.get("clip_l336")().check_available()
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "ViT-L-14-336-openai.safetensors" in msg and "varbench fetch --encoders clip_l336" in msg

    monkeypatch.setitem(_MODEL_CONFIGS, "Tiny-14-336-quickgelu", TINY_336)

    class Tiny(ClipL336Encoder):
        model_name = "Tiny-14-336"

    torch.manual_seed(0)
    src = open_clip.create_model("Tiny-14-336-quickgelu").eval()
    assert src.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    path = tmp_path / "tiny336.pt"
    torch.save(src.state_dict(), path)
    ims = [demo_image(i, 7 + i) for i in range(3)]
    ims.append(np.asarray(Image.fromarray(ims[0]).resize((97, 64))))  # odd rectangle: crop offsets
    enc = Tiny(weights=str(path))
    enc.check_available()
    got = enc.encode(ims)
    with torch.no_grad():
        ref = torch.cat([src.encode_image(_ref_cmmd_pixels(im)) for im in ims]).double().numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-12)
    assert enc.config()["resize_mode"] == "pil_centre_square_bicubic_336"


# -- registered metrics inside a real run, and in `varbench list metrics` ----------------------
def _cli_json(*args: str):
    """`varbench ARGS` in this process (typer's runner: no interpreter start-up), JSON stdout."""
    import json

    from typer.testing import CliRunner

    from varbench.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_new_metrics_in_a_demo_run(tmp_path):
    import json
    import re

    from varbench.metrics.palette import palette_distance

    run_json = _cli_json  # the CLI's code in this process; its subprocess use is tested elsewhere

    src = (Path(__file__).parents[1] / "protocols" / "demo_1shot.toml").read_text()
    src = src.replace('name = "demo_1shot"', 'name = "demo_novelty"')
    src = re.sub(
        r"(?m)^metrics = .*$",
        'metrics = ["vendi", "authpct", "ct", "fls", "fd_infinity", "mifid", "realism", "palette"]',
        src,
    )
    proto = tmp_path / "demo_novelty.toml"
    proto.write_text(src)
    out = tmp_path / "runs"
    row = run_json("run", "--model", "copy", "--protocol", str(proto), "--out", str(out))[0]
    for key in ("authpct", "fd_infinity", "mifid", "realism_median", "fls", "vendi_cond_mean"):
        assert np.isfinite(row[key]), key
    assert row["palette_distance_mean"] == 0.0  # copies have their conditioning image's palette
    assert row["authpct"] == 0.0  # and are never authentic
    arts = {p.stem: json.loads(p.read_text()) for p in out.rglob("artifacts/*.json")}
    per_cond = arts["vendi"]["per_cond"]
    assert len(per_cond) == 10 and all(v == pytest.approx(1.0) for v in per_cond.values())
    assert len(arts["palette"]["per_sample"]) == row["n_samples"]
    run_json("report", "--runs", str(out), "--out", str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "<h3>Diversity</h3>" in html and "Vendi score of one image" in html
    names = {m["name"] for m in run_json("list", "metrics")}
    assert {"vendi", "vendi_dinov2", "vendi_inception", "cmmd", "authpct", "ct", "fls"} <= names
    assert {"mifid", "palette", "realism", "fd_infinity"} <= names
    assert palette_distance(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)) == 0.0
