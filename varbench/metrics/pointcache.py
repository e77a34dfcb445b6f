"""The per-point metric cache: statistics and distances that FID, precision/recall and the
novelty metrics share, so scoring a (real, fake) pair computes each piece once.

It imports only the engines (``gaussian``, ``knn``); every family imports it at module top and
keeps its own derived pieces in it through ``PointCache.memo``.

What is shared (each computed on first use, then kept for the point's other metrics):

* Gaussian statistics: means, centred factors, the real covariance A^T A and its pivoted-
  Cholesky factor F. FID uses them; MiFID reuses the FID value; FD-infinity reuses F, the real
  statistics and the FID (its largest size); C_T's PCA is the top eigenvectors of A^T A.
* The k-NN room's float32 screening matrix real x fake (when it fits ``max_bytes``; the
  product precision/recall's ball decisions compute anyway) and each set's exact
  k nearest neighbours: precision/recall, density/coverage and realism share the real
  k-NN search, AuthPct reads
  the nearest-other-real distance from the same search; AuthPct's nearest real of each fake
  and realism's maximum are screened from the cached real x fake matrix (no second product);
  so are MiFID's cosines (q.b from |q|^2 + |b|^2 - |q - b|^2 with the certified bound).

Every value equals the metric's standalone function bit for bit: exact k-NN decisions do not
depend on which screening produced the candidates, and the Gaussian pieces are the same
expressions. Not shared: FLS (a KDE on subsets), CMMD (its own CLIP space) and Vendi
(per-group Grams).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from varbench.metrics import gaussian as fidm
from varbench.metrics.knn import screening
from varbench.metrics.knn.balls import ball_counts
from varbench.metrics.knn.cross import knn_cross
from varbench.metrics.knn.neighbours import approx_sq_dists, knn_exact


class PointCache:
    """Shared statistics and exact k-NN pieces of one (real, fake) feature pair, computed once."""

    def __init__(self, real: np.ndarray, fake: np.ndarray, max_bytes: float = 2**30):
        self.real = np.asarray(real)
        self.fake = np.asarray(fake)
        n, m = len(self.real), len(self.fake)
        self.cached = 4.0 * n * m <= max_bytes
        self._memo: dict[Any, Any] = {}

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per key for the point: families keep their own pieces here."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # -- Gaussian statistics ---------------------------------------------------------------
    def real_factor(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, centred factor A) of the real rows (``fid.centred_factor``)."""
        return self.memo("real_factor", lambda: fidm.centred_factor(self.real))

    def fake_factor(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, centred factor A) of the fake rows."""
        return self.memo("fake_factor", lambda: fidm.centred_factor(self.fake))

    def real_cov(self) -> np.ndarray:
        """A^T A of the real rows: the (N-1)-normalised covariance."""
        return self.memo("real_cov", lambda: self.real_factor()[1].T @ self.real_factor()[1])

    def real_psd_factor(self) -> np.ndarray:
        """Pivoted-Cholesky factor F of the real covariance (FID and FD-infinity)."""
        return self.memo("real_psd", lambda: fidm.psd_factor(self.real_cov()))

    def fid(self) -> float:
        """FID, equal to ``fid_from_features(real, fake)``."""

        def make() -> float:
            for x in (self.real, self.fake):
                if x.ndim != 2 or len(x) < 2:
                    raise ValueError(f"need a (N>=2, D) feature array, got shape {x.shape}")
            (mu1, a1), (mu2, a2) = self.real_factor(), self.fake_factor()
            use_cov = fidm.covariance_route(len(a1), len(a2), a1.shape[1])
            factor = self.real_psd_factor() if use_cov else None
            return fidm.fid_from_factors(mu1, a1, mu2, a2, factor)

        return self.memo("fid", make)

    def fd_infinity(self, seed: int = 0, num_points: int = fidm.FD_INF_POINTS) -> float:
        """FD-infinity, equal to ``fid.fd_infinity(real, fake, num_points, seed)``."""
        mu1, a1 = self.real_factor()
        stats = (mu1, a1, self.real_psd_factor())
        return self.memo(
            ("fd_inf", seed, num_points),
            lambda: fidm.fd_infinity(self.real, self.fake, num_points, seed, stats, self.fid()),
        )

    # -- the k-NN room -----------------------------------------------------------------------
    def prepared(self) -> tuple[screening.ScreenSet, screening.ScreenSet]:
        """Both sets prepared together (one shift): the screening matrices' coordinates."""
        return self.memo("prepared", lambda: tuple(screening.screen_sets(self.real, self.fake)))

    def screen(self) -> np.ndarray | None:
        """Float32 screening distances real x fake (None when they do not fit ``max_bytes``).

        The one product precision/recall's ball decisions need anyway, kept for AuthPct,
        realism and MiFID. Within a set the k-NN search screens with its own symmetric blocked
        products (faster than reading a stored matrix, and no n x n matrix per set).
        """
        if not self.cached:
            return None
        pr, pf = self.prepared()
        return self.memo("screen_rf", lambda: approx_sq_dists(pr, pf))

    def knn(self, side: str, k: int) -> np.ndarray:
        """Exact sorted squared distances (n, k) of each row to its k nearest others ("real"/"fake").

        A search for a larger k already done serves a smaller one (its first k columns are the
        k smallest exact distances); a new search is done for at least k = 5 (density/
        coverage's and realism's default; precision/recall's k = 3 and AuthPct's k = 1 reuse it).
        """
        for key, value in list(self._memo.items()):
            if isinstance(key, tuple) and key[:2] == ("knn", side) and key[2] >= k:
                return value[:, :k]
        pr, pf = self.prepared()
        p = pr if side == "real" else pf
        kk = max(k, 5) if len(p.x) > 5 else k
        found = knn_exact(p.x, kk, p)[0]
        self._memo[("knn", side, kk)] = found
        return found[:, :k]

    def precision_recall(self, k: int = 3) -> dict[str, float]:
        """Precision/recall, equal to ``prdc.precision_recall(real, fake, k)``."""

        def make() -> dict[str, float]:
            pr, pf = self.prepared()
            rr, rf = self.knn("real", k)[:, k - 1], self.knn("fake", k)[:, k - 1]
            c = ball_counts(pr, pf, ra=rr, rb=rf, approx=self.screen())
            return {
                "precision": float((c.b_in_a > 0).mean()),
                "recall": float((c.a_in_b > 0).mean()),
            }

        return self.memo(("prc", k), make)

    def density_coverage(self, k: int = 5) -> dict[str, float]:
        """Density/coverage, equal to ``prdc.density_coverage(real, fake, k)``."""

        def make() -> dict[str, float]:
            pr, pf = self.prepared()
            rr = self.knn("real", k)[:, k - 1]
            c = ball_counts(pr, pf, ra=rr, approx=self.screen())
            return {
                "density": float(c.b_in_a.sum() / (k * len(pf.x))),
                "coverage": float((c.a_hit > 0).mean()),
            }

        return self.memo(("dc", k), make)

    def fake_rows_screen(self) -> np.ndarray | None:
        """The cached real x fake screen as (fake, real) rows, or None."""
        rf = self.screen()
        return None if rf is None else rf.T  # (fake, real) view

    def nearest_real(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact squared distance and index of each fake's nearest real (``knn_cross``, k = 1)."""

        def make():
            pr, pf = self.prepared()
            d, i = knn_cross(self.fake, self.real, 1, (pf, pr), self.fake_rows_screen())
            return d[:, 0], i[:, 0]

        return self.memo("nearest_real", make)


def point_cache(ctx, encoder: str | None = None) -> PointCache:
    """The context's point cache for one feature space (a fresh one if the context keeps none)."""
    shared = getattr(ctx, "shared", None)
    key = ("point_cache", encoder or getattr(ctx, "default_encoder", None))
    if shared is not None and key in shared:
        return shared[key]
    args = () if encoder is None else (encoder,)  # the default space: ctx.real() as metrics call it
    cache = PointCache(ctx.real(*args), ctx.fake(*args))
    if shared is not None:
        shared[key] = cache
    return cache


def shown_rows(ctx) -> np.ndarray | None:
    """Rows of ``ctx.real()`` the model was shown: the references with a conditioning image's
    pixels, sorted. None when the context has no conditioning images (two folders scored with
    `varbench metrics`: the samples were conditioned on nothing this context knows).

    In a K-shot protocol the conditioning images are all a model saw of the reference set, so
    the novelty metrics ask "did it copy what it was shown?" against these rows.
    """
    cond = getattr(ctx, "cond_hashes", None)
    if not cond:
        return None
    shown = set(cond)
    return np.flatnonzero([h in shown for h in ctx.real_hashes])
