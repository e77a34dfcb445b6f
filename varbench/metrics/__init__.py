"""Metrics: array engines, the per-point cache, then the families, registered by name.

Engines import no metric: ``gaussian`` (Fréchet distances), ``knn`` (exact k-NN room),
``kmeans``, ``base`` (the interface). ``pointcache`` imports engines only; every family
imports it at module top. Each family declares its result keys (``keys``: direction, label,
unit) where it is defined. May import: ``core`` and ``errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varbench.core.options import Param, parse_options
from varbench.core.registry import Registry
from varbench.metrics.base import Metric

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

# Options a user may pass with --set on `varbench run` / `varbench metrics` (the one table of
# their types; each metric reads its own default where it reads the option).
METRIC_OPTIONS: tuple[Param, ...] = (
    Param("kid_subsets", int, help="KID: number of subsets"),
    Param("kid_subset_size", int, help="KID: images per subset"),
    Param("prc_k", int, help="precision/recall: k of the k-NN radius"),
    Param("dc_k", int, help="density/coverage: k of the k-NN radius"),
    Param("bootstrap", int, help="bootstrap: half-sample replicates"),
    Param("memorisation_check", int, help="memorisation: pairs re-checked exactly"),
    Param("memorisation_heldout_per_class", int, help="memorisation: held-out images per class"),
    Param("vendi_q", float, help="Vendi: order q of the score"),
    Param("ct_heldout_per_class", int, help="C_T: held-out images per class"),
    Param("fls_heldout_per_class", int, help="FLS: held-out images per class"),
    Param("mifid_eps", float, help="MiFID: cosine distance threshold"),
    Param("realism_k", int, help="realism: k of the k-NN radius"),
    Param(
        "palette_mode",
        str,
        help="palette: extraction (rival: RGB, 10 k-means restarts; pylette6: RGBA, one)",
        choices=("rival", "pylette6"),
    ),
)


def metric_options(raw: Mapping[str, Any], origin: str = "--set") -> dict[str, Any]:
    """Typed metric options from ``--set`` strings or recorded values (unknown keys: error)."""
    return parse_options(raw, METRIC_OPTIONS, "metrics", origin)


__all__ = ["metric_registry", "METRIC_OPTIONS", "metric_options"]
