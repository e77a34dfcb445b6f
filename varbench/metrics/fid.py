"""FID, FD-DINOv2 and FD-infinity: thin metric wrappers over the Gaussian engine and the point cache."""

from __future__ import annotations

from varbench.metrics.base import Metric, lower
from varbench.metrics.gaussian import fid_from_features
from varbench.metrics.pointcache import point_cache

KEY_FID = "fid"
KEY_FD_DINOV2 = "fd_dinov2"
KEY_FD_INFINITY = "fd_infinity"


class FIDMetric(Metric):
    """FID in the protocol's default feature space."""

    name = "fid"
    results = (lower(KEY_FID, "FID"),)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_FID: point_cache(ctx).fid()}


class FDDinoV2Metric(Metric):
    """Fréchet distance in DINOv2 ViT-L/14 space (FD-DINOv2 as dgm-eval; EDM2 with resize_mode="pil")."""

    name = "fd_dinov2"
    results = (lower(KEY_FD_DINOV2, "FD-DINOv2"),)
    encoders: tuple[str, ...] = ("dinov2_l",)

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_FD_DINOV2: fid_from_features(ctx.real("dinov2_l"), ctx.fake("dinov2_l"))}


class FDInfinityMetric(Metric):
    """FD-infinity in the protocol's default feature space, seeded by the protocol seed."""

    name = "fd_infinity"
    results = (lower(KEY_FD_INFINITY, "FD-infinity"),)
    encoders: tuple[str, ...] = ()

    def compute(self, ctx) -> dict[str, float]:
        return {KEY_FD_INFINITY: point_cache(ctx).fd_infinity(seed=int(ctx.seed))}
