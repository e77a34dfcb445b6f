"""Feature likelihood score (FLS) and its overfitting variant (Jiralerspong et al. 2023).

As dgm-eval's ``fls.py`` computes them: features standardised with the mean and std of all
four sets; a Gaussian KDE centred on the generated points with one bandwidth per centre,
fitted by 100 Adam steps (lr 0.5, x0.1 after 50, log-bandwidths clamped to [-100, 20]) to
maximise the likelihood of the training points; FLS = 100 exp(-2 (NLL_test(gen) -
NLL_test(baseline)) / d), where the baseline KDE is fitted the same way on held-back training
points; fls_overfit = % of generated centres whose summed likelihood of training points
exceeds that of as many test points, minus 50. The train/baseline/test/gen subsets of equal
size are drawn with a seeded generator as dgm-eval's ``compute_scores`` does.
"""

from __future__ import annotations

import math

import numpy as np

from varbench.metrics.base import Metric

KEY_FLS = "fls"
KEY_FLS_OVERFIT = "fls_overfit"
STEPS = 100
LR = 0.5
MILESTONE = 50


def _standardise(*sets):
    """float32 tensors standardised with the mean and (N-1) std of all rows together."""
    import torch

    ts = [torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in sets]
    allx = torch.cat(ts, 0)
    mean, std = allx.mean(0), allx.std(0)
    return [(t - mean) / std for t in ts]


def _sq_dists(a, b):
    import torch

    return torch.cdist(a, b) ** 2


def _log_terms(dists, log_sigmas, dim: int):
    import torch

    e = (-0.5 * dists) / torch.exp(log_sigmas)
    e = e - (dim / 2) * log_sigmas
    return e + math.log(1.0 / dists.shape[1])


def fit_log_bandwidths(data, centres):
    """Per-centre log-bandwidths of a Gaussian KDE on ``centres`` maximising the likelihood of ``data``."""
    import torch

    dim = data.shape[1]
    dists = _sq_dists(data, centres)
    log_sigmas = torch.zeros(centres.shape[0], requires_grad=True)
    opt = torch.optim.Adam([log_sigmas], lr=LR)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[MILESTONE], gamma=0.1)
    for _ in range(STEPS):
        loss = torch.mean(-torch.logsumexp(_log_terms(dists, log_sigmas, dim), dim=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            log_sigmas.clamp_(-100, 20)
    return log_sigmas.detach()


def _nll(data, centres, log_sigmas) -> float:
    import torch

    with torch.no_grad():
        terms = _log_terms(_sq_dists(data, centres), log_sigmas, centres.shape[1])
        return float(torch.mean(-torch.logsumexp(terms, dim=1)))


def _overfit(tr, te, ge, log_sigmas) -> float:
    import torch

    size = min(te.shape[0], tr.shape[0])
    with torch.no_grad():
        ll_tr = _log_terms(_sq_dists(tr[:size], ge), log_sigmas, ge.shape[1]).logsumexp(0)
        ll_te = _log_terms(_sq_dists(te[:size], ge), log_sigmas, ge.shape[1]).logsumexp(0)
        diff = ll_tr - ll_te
    return float((diff > 0).sum().item() / diff.shape[0] * 100.0) - 50.0


def fls_scores(train, baseline, test, gen) -> dict[str, float]:
    """FLS and fls_overfit from one bandwidth fit on the generated centres."""
    import torch

    tr, ba, te, ge = _standardise(train, baseline, test, gen)
    with torch.enable_grad():
        gen_sig = fit_log_bandwidths(tr, ge)
        base_sig = fit_log_bandwidths(tr, ba)
    diff = _nll(te, ge, gen_sig) - _nll(te, ba, base_sig)
    return {
        KEY_FLS: float(math.e ** (-2.0 * diff / tr.shape[1]) * 100.0),
        KEY_FLS_OVERFIT: _overfit(tr, te, ge, gen_sig),
    }


def fls(train, baseline, test, gen) -> float:
    """FLS of ``gen`` (higher is better; 100 = as good as held-back training points)."""
    return fls_scores(train, baseline, test, gen)[KEY_FLS]


def fls_overfit(train, baseline, test, gen) -> float:
    """% of generated centres that explain training points better than test points, minus 50."""
    import torch

    tr, _, te, ge = _standardise(train, baseline, test, gen)
    with torch.enable_grad():
        log_sigmas = fit_log_bandwidths(tr, ge)
    return _overfit(tr, te, ge, log_sigmas)


def fls_subsets(train, test, gen, seed: int = 0, max_n: int = 10_000):
    """dgm-eval's draws: n = min(max_n, |train| // 2, |test|, |gen|); test, gen, then 2n train
    rows split into train and baseline halves, all from one seeded generator."""
    train, test, gen = (np.asarray(a) for a in (train, test, gen))
    n = min(max_n, len(train) // 2, len(test), len(gen))
    if n < 2:
        raise ValueError(f"FLS needs >= 2 points per set (train >= 4), got n = {n}")
    rng = np.random.default_rng(seed)
    te = test[rng.choice(len(test), n, replace=False)]
    ge = gen[rng.choice(len(gen), n, replace=False)]
    tr = train[rng.choice(len(train), 2 * n, replace=False)]
    return tr[:n], tr[n:], te, ge


class FLSMetric(Metric):
    """FLS and fls_overfit: references as training set, held-out real images as test set."""

    name = "fls"
    keys = (KEY_FLS, KEY_FLS_OVERFIT)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        hashes, _ = ctx.heldout(int(ctx.options.get("fls_heldout_per_class", 10**9)))
        if len(hashes) < 2:
            return {KEY_FLS: math.nan, KEY_FLS_OVERFIT: math.nan}
        sets = fls_subsets(ctx.real(), ctx.features_of(hashes), ctx.fake(), seed=int(ctx.seed))
        return fls_scores(*sets)
