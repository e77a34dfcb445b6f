"""Metric families, one module each, registered by name with lazy targets."""

from __future__ import annotations

from varbench.metrics.base import Metric
from varbench.registry import Registry

metric_registry: Registry[type[Metric]] = Registry(kind="metric", base=Metric)
metric_registry.register("fid", "varbench.metrics.fid:FIDMetric")
metric_registry.register("kid", "varbench.metrics.kid:KIDMetric")
metric_registry.register("precision_recall", "varbench.metrics.prdc:PrecisionRecallMetric")
metric_registry.register("density_coverage", "varbench.metrics.prdc:DensityCoverageMetric")
metric_registry.register("isc", "varbench.metrics.isc:ISCMetric")
metric_registry.register("sfid", "varbench.metrics.sfid:SFIDMetric")
metric_registry.register("bootstrap", "varbench.metrics.bootstrap:BootstrapMetric")
metric_registry.register("fd_dinov2", "varbench.metrics.fid:FDDinoV2Metric")
metric_registry.register("alignment", "varbench.metrics.alignment:AlignmentMetric")
metric_registry.register("alignment_dinov2", "varbench.metrics.alignment:AlignmentDinoMetric")
metric_registry.register("alignment_clip", "varbench.metrics.alignment:AlignmentClipMetric")
metric_registry.register("clip_score", "varbench.metrics.clip_score:ClipScoreMetric")
metric_registry.register("lpips", "varbench.metrics.lpips:LpipsMetric")
metric_registry.register("memorisation", "varbench.metrics.memorisation:MemorisationMetric")
metric_registry.register("vendi", "varbench.metrics.vendi:VendiMetric")
metric_registry.register("vendi_inception", "varbench.metrics.vendi:VendiInceptionMetric")
metric_registry.register("vendi_dinov2", "varbench.metrics.vendi:VendiDinoV2Metric")
metric_registry.register("authpct", "varbench.metrics.novelty:AuthPctMetric")
metric_registry.register("ct", "varbench.metrics.novelty:CTScoreMetric")
metric_registry.register("fls", "varbench.metrics.fls:FLSMetric")
metric_registry.register("fd_infinity", "varbench.metrics.fid:FDInfinityMetric")
metric_registry.register("mifid", "varbench.metrics.mifid:MiFIDMetric")
metric_registry.register("realism", "varbench.metrics.realism:RealismMetric")
metric_registry.register("cmmd", "varbench.metrics.cmmd:CMMDMetric")
metric_registry.register("palette", "varbench.metrics.palette:PaletteMetric")

# Options a user may pass with --set on `varbench run` / `varbench metrics`.
METRIC_OPTIONS = {
    "kid_subsets": int,
    "kid_subset_size": int,
    "prc_k": int,
    "dc_k": int,
    "bootstrap": int,
    "memorisation_check": int,
    "memorisation_heldout_per_class": int,
    "vendi_q": float,
    "ct_heldout_per_class": int,
    "fls_heldout_per_class": int,
    "mifid_eps": float,
    "realism_k": int,
}

__all__ = ["metric_registry", "METRIC_OPTIONS"]
