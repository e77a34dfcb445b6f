"""Feature likelihood score (FLS) and its overfitting variant (Jiralerspong et al. 2023).

As dgm-eval's ``fls.py`` computes them: features standardised with the mean and std of all
four sets; a Gaussian KDE centred on the generated points with one bandwidth per centre,
fitted by 100 Adam steps (lr 0.5, x0.1 after 50, log-bandwidths clamped to [-100, 20]) to
maximise the likelihood of the training points; FLS = 100 exp(-2 (NLL_test(gen) -
NLL_test(baseline)) / d), where the baseline KDE is fitted the same way on held-back training
points; fls_overfit = % of generated centres whose summed likelihood of training points
exceeds that of as many test points, minus 50. The train/baseline/test/gen subsets of equal
size are drawn with a seeded generator as dgm-eval's ``compute_scores`` does. The Adam fit
uses the closed-form gradient (``fit_log_bandwidths``); agreement with dgm-eval's autograd
fit is tested.

In a K-shot run ``fls_overfit`` asks whether samples sit closer to what the model was shown
(``fls_overfit_shown``): training points = the conditioning images (``shown_rows``), test
points = as many held-out real images of the same classes, and every sample a KDE centre
with bandwidths fitted on the conditioning images; ``fls`` itself is a quality score and keeps
the references as training set (two halves) and the held-out images as test set.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from varbench.errors import UsageError
from varbench.metrics.base import Metric, higher, lower
from varbench.metrics.pointcache import shown_rows

log = logging.getLogger(__name__)

KEY_FLS = "fls"
KEY_FLS_OVERFIT = "fls_overfit"
STEPS = 100
LR = 0.5
MILESTONE = 50
FLS_MIN_N = 2  # points per subset: 2 held-out, 2 generated, 4 references (two halves)


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
    """Per-centre log-bandwidths of a Gaussian KDE on ``centres`` maximising the likelihood of ``data``.

    dgm-eval's fit (torch Adam, lr 0.5 then 0.05 after 50 steps, clamp to [-100, 20]) with the
    gradient in closed form instead of autograd: for the loss -mean_i logsumexp_j t_ij with
    t_ij = -D_ij / (2 s_j) - (d / 2) log s_j + log(1/m), dL/dlog s_j =
    -mean_i p_ij (D_ij / (2 s_j) - d / 2), p = softmax_j t. Float64 torch tensor ops, a few
    passes over the (n, m) matrix per step. Softmax terms below e^-708 relative to their row's
    largest are raised to e^-708: they cannot change a row sum (>= 1) or the fit, and exp of
    the 4-digit negative exponents of wide features otherwise takes a 10x slower path.
    """
    import torch

    dim = data.shape[1]
    half = 0.5 * _sq_dists(data, centres).double()
    n, m = half.shape
    log_sigmas = torch.zeros(m, dtype=torch.float64)
    exp_avg, exp_avg_sq = torch.zeros_like(log_sigmas), torch.zeros_like(log_sigmas)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    terms = torch.empty_like(half)
    for step in range(1, STEPS + 1):
        inv = torch.exp(-log_sigmas)
        torch.addcmul(-(dim / 2) * log_sigmas + math.log(1.0 / m), half, -inv, out=terms)
        terms.sub_(terms.amax(dim=1, keepdim=True)).clamp_(min=-708.0).exp_()
        terms.div_(terms.sum(dim=1, keepdim=True))  # softmax over centres
        mass = terms.sum(dim=0)
        grad = -(terms.mul_(half).sum(dim=0) * inv - (dim / 2) * mass) / n
        lr = LR if step <= MILESTONE else LR * 0.1
        exp_avg += (grad - exp_avg) * (1 - beta1)
        exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + adam_eps
        log_sigmas = (log_sigmas - lr / (1 - beta1**step) * exp_avg / denom).clamp(-100, 20)
    return log_sigmas.float()


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

    tr, ba, te, ge = _standardise(train, baseline, test, gen)
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

    tr, _, te, ge = _standardise(train, baseline, test, gen)
    return _overfit(tr, te, ge, fit_log_bandwidths(tr, ge))


def fls_overfit_shown(shown, test, gen) -> float:
    """``fls_overfit`` with every row: KDE centres = ``gen``, bandwidths fitted on the shown
    images, % of centres that explain the shown images better than as many ``test`` images,
    minus 50 (features standardised over the three sets)."""
    tr, te, ge = _standardise(shown, test, gen)
    return _overfit(tr, te, ge, fit_log_bandwidths(tr, ge))


def balanced_heldout(shown_class, held_class) -> np.ndarray:
    """Indices of held-out rows, per class as many as there are shown images of that class
    (the first ones of each class), in class order."""
    held_class = np.asarray(held_class)
    want = np.bincount(np.asarray(shown_class, int), minlength=int(held_class.max(initial=0)) + 1)
    out = [np.flatnonzero(held_class == c)[: want[c]] for c in range(len(want)) if want[c]]
    return np.concatenate(out) if out else np.zeros(0, int)


def fls_subsets(train, test, gen, seed: int = 0, max_n: int = 10_000):
    """dgm-eval's draws: n = min(max_n, |train| // 2, |test|, |gen|); test, gen, then 2n train
    rows split into train and baseline halves, all from one seeded generator. Fewer than 4
    references, 2 held-out or 2 generated rows: UsageError naming the minimum."""
    train, test, gen = (np.asarray(a) for a in (train, test, gen))
    if len(train) < 2 * FLS_MIN_N:
        raise UsageError(
            f"FLS needs at least {2 * FLS_MIN_N} reference images (train and baseline halves "
            f"of {FLS_MIN_N}), got {len(train)}"
        )
    for name, rows in (("held-out", test), ("generated", gen)):
        if len(rows) < FLS_MIN_N:
            raise UsageError(f"FLS needs at least {FLS_MIN_N} {name} images, got {len(rows)}")
    n = min(max_n, len(train) // 2, len(test), len(gen))
    rng = np.random.default_rng(seed)
    te = test[rng.choice(len(test), n, replace=False)]
    ge = gen[rng.choice(len(gen), n, replace=False)]
    tr = train[rng.choice(len(train), 2 * n, replace=False)]
    return tr[:n], tr[n:], te, ge


class FLSMetric(Metric):
    """FLS (references as training set, held-out real images as test set) and fls_overfit
    (conditioning images vs as many held-out images; on two folders, as FLS)."""

    name = "fls"
    # dgm-eval's FLS is 100 exp(-2 (NLL_gen - NLL_baseline) / d): above 100 the samples explain
    # held-out data better than the held-back references do, so higher is better; fls_overfit is
    # the share of samples closer to training than to test points beyond half: lower is better
    results = (higher(KEY_FLS, "FLS"), lower(KEY_FLS_OVERFIT, "FLS overfit", "%"))
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        hashes, _ = ctx.heldout(int(ctx.options.get("fls_heldout_per_class", 10**9)))
        if len(hashes) < 2:
            return {KEY_FLS: math.nan, KEY_FLS_OVERFIT: math.nan}
        real, test, fake = ctx.real(), ctx.features_of(hashes), ctx.fake()
        out = fls_scores(*fls_subsets(real, test, fake, seed=int(ctx.seed)))
        shown = shown_rows(ctx)
        if shown is not None:
            per_class = int(np.bincount(np.asarray(ctx.real_class)[shown]).max())
            held, held_class = ctx.heldout(per_class)
            te = balanced_heldout(np.asarray(ctx.real_class)[shown], held_class)
            if len(te) < len(shown):
                log.warning("fls_overfit is NaN: fewer held-out images than conditioning images")
                out[KEY_FLS_OVERFIT] = math.nan
            else:
                test_shown = ctx.features_of([held[i] for i in te])
                out[KEY_FLS_OVERFIT] = fls_overfit_shown(real[shown], test_shown, fake)
        return out
