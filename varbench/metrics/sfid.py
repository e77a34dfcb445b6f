"""sFID: Fréchet distance on spatial Inception features (ADM evaluator: first 7 channels of mixed_6/conv)."""

from __future__ import annotations

from varbench.metrics.base import Metric, lower
from varbench.metrics.gaussian import fid_from_features

KEY_SFID = "sfid"


class SFIDMetric(Metric):
    """Fréchet distance between reference and sample ``spatial`` outputs of the inception encoder."""

    name = "sfid"
    results = (lower(KEY_SFID, "sFID"),)
    encoders = ("inception",)

    def compute(self, ctx) -> dict[str, float]:
        real = ctx.real(encoder="inception", output="spatial")
        fake = ctx.fake(encoder="inception", output="spatial")
        return {
            KEY_SFID: fid_from_features(real.reshape(len(real), -1), fake.reshape(len(fake), -1))
        }
