"""`varbench report`: one self-contained HTML file of finished runs.

Images are embedded as base64 JPEG thumbnails, plots as inline SVG, and a Content-Security-Policy
allows nothing but data: images, inline styles and the one hashed sorting script, so the file
opens from disk on an air-gapped cluster and requests nothing. The page is rendered from the
Jinja2 templates in ``templates/`` with autoescape (``report_templates``): every string that comes
from data (model and class names, paths, params, notes) is escaped there; this module builds the
plain values they show.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from varbench.core.files import atomic_write_text
from varbench.metrics.keys import rank_value
from varbench.present.report_templates import (
    Image,
    NumCell,
    asset,
    figure,
    render,
    script_sha256,
)
from varbench.runs.views import (
    PointView,
    RunView,
    closest_pairs,
    finite,
    grid_rows,
    load_runs,
    measured_frame,
)

log = logging.getLogger(__name__)

LEADERBOARD_METRICS = [
    "fid",
    "kid",
    "precision",
    "recall",
    "fd_dinov2",
    "density",
    "coverage",
    "align_mean",
    "align_dino_mean",
    "align_clip_mean",
    "lpips_to_cond",
    "memorisation_nn_lpips_median",
]
# Provenance shown once per run (first row); per-point values follow in their own table.
PROVENANCE = [
    "run_id", "model", "protocol", "protocol_version", "options", "model_path", "device", "dtype",
    "prepare", "resolution", "encoder", "guidance_convention", "manifest_sha256", "seed",
    "n_classes", "n_real", "n_samples", "images_per_call", "interval_method",
    "interval_replicates", "varbench_version", "git_sha", "python_version", "torch_version",
    "diffusers_version", "transformers_version", "torch_fidelity_version", "numpy_version",
    "platform", "extra",
]  # fmt: skip
PER_POINT = ["wall_time_s", "images_per_s", "n_black", "n_nan", "generation_warnings",
             "created_at", "notes"]  # fmt: skip


@dataclass(frozen=True)
class ReportOptions:
    """How much of each run the report shows; bounds the file size at any run size."""

    grid_classes: int = 6
    grid_samples: int = 6
    closest: int = 8
    worst_classes: int = 10
    thumb_px: int = 96
    jpeg_quality: int = 80
    seed: int = 0


class Thumbnails:
    """JPEG thumbnails as data URIs, each file encoded once."""

    def __init__(self, size: int, quality: int) -> None:
        self.size, self.quality = size, quality
        self._cache: dict[Path, Markup] = {}

    def uri(self, path: Path | None) -> Markup | None:
        """The file's thumbnail as a data URI (our own base64, so marked safe), or None."""
        if path is None:
            return None
        if path not in self._cache:
            from PIL import Image as PILImage

            try:
                with PILImage.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((self.size, self.size))
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", quality=self.quality)
            except OSError:
                return None
            encoded = base64.b64encode(buf.getvalue()).decode("ascii")
            self._cache[path] = Markup("data:image/jpeg;base64," + encoded)
        return self._cache[path]

    def image(self, path: Path | None, alt: str) -> Image:
        """The thumbnail of ``path`` with its alt text (escaped by the template)."""
        return Image(self.uri(path), alt, self.size)


def _fmt(value: Any) -> str:
    v = finite(value)
    if v is not None and not isinstance(value, str):
        return f"{v:.4g}"
    return "" if value is None or (isinstance(value, float)) else str(value)


def _text(value: Any) -> str:
    """A data value as the page shows it: None as nothing, anything else as ``str``."""
    return "" if value is None else str(value)


def _metric_cell(row: dict[str, Any], metric: str) -> NumCell:
    v = finite(row.get(metric))
    if v is None:
        return NumCell("", "")
    lo, hi = finite(row.get(f"{metric}_lo")), finite(row.get(f"{metric}_hi"))
    note = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else None
    return NumCell(repr(v), f"{v:.4g}", note)


def leaderboard_rows(measured: pd.DataFrame, published: pd.DataFrame) -> dict[str, Any] | None:
    """Measured rows beside published rows, sortable by any column, intervals in brackets."""
    frames = [f for f in (measured, published) if not f.empty]
    if not frames:
        return None
    both = pd.concat(frames, ignore_index=True)
    metrics = [m for m in LEADERBOARD_METRICS if m in both and both[m].notna().any()]
    records = both.to_dict("records")
    records.sort(key=lambda r: (str(r.get("protocol")), *rank_value(r)))
    rows = []
    for r in records:
        n = finite(r.get("n_samples"))
        count = "" if n is None else str(int(n))
        rows.append(
            {
                "published": str(r.get("source") or "varbench") != "varbench",
                "texts": [_text(r.get(k)) for k in ("model", "protocol", "params")],
                "cells": [*(_metric_cell(r, m) for m in metrics), NumCell(count, count)],
                "source": _text(r.get("source")),
            }
        )
    return {"head": ["model", "protocol", "params", *metrics, "n_samples", "source"], "rows": rows}


def paired_rows(runs: list[RunView]) -> dict[str, Any] | None:
    """Best point of each model against the best model: A - B, paired interval, verdict."""
    from varbench.present.compare import METRICS, best_point_comparisons

    found = best_point_comparisons(runs)
    if not found:
        return None
    model_of = {run.run_id: run.model for run in runs}
    rows = []
    for (run_id, params), res in sorted(found.items()):
        row = {
            "model": _text(model_of.get(run_id, run_id)),
            "params": _text(params),
            "against": f"{_text(res.get('against'))} {_text(res.get('against_point', ''))}",
            "error": None if "error" not in res else _text(res["error"]),
            "cells": [],
        }
        for m in METRICS if "error" not in res else ():
            r = res[m]
            note = f"[{r['lo']:+.4g}, {r['hi']:+.4g}] {_text(r['better'])}"
            row["cells"].append(NumCell(repr(r["diff"]), f"{r['diff']:+.4g}", note))
        rows.append(row)
    return {"metrics": list(METRICS), "rows": rows}


def provenance(run: RunView) -> dict[str, Any]:
    """Versions, device, dtype, weights, manifest hash, preparation and wall time of a run."""
    first = run.rows[0]
    keys = [(k, _fmt(first[k])) for k in PROVENANCE if k in first and first[k] is not None]
    cols = [c for c in PER_POINT if any(c in r for r in run.rows)]
    return {
        "provenance": [
            *((k, v) for k, v in keys if v != ""),
            ("data_root", _text(run.data_root)),
            ("run folder", _text(run.folder)),
        ],
        "per_point_head": cols,
        "per_point": [[_text(r.get("params")), *(_fmt(r.get(c)) for c in cols)] for r in run.rows],
    }


def grid(point: PointView, opts: ReportOptions, thumbs: Thumbnails) -> list[dict] | None:
    """Seeded classes: the conditioning image, then its samples."""
    rows = grid_rows(point, opts.grid_classes, opts.grid_samples, opts.seed)
    if not rows:
        return None
    return [
        {
            "cond": thumbs.image(point.run.data_path(row.cond), "conditioning: " + row.cond),
            "label": _text(row.class_label),
            "samples": [
                {
                    "image": thumbs.image(
                        point.sample_path(s), f"{s.get('file')} (seed {s.get('seed')})"
                    ),
                    "index": _text(s.get("sample_index")),
                }
                for s in row.samples
            ],
        }
        for row in rows
    ]


def closest(point: PointView, opts: ReportOptions, thumbs: Thumbnails) -> list[dict] | None:
    """Samples with the smallest nearest-neighbour distance beside that reference."""
    pairs = closest_pairs(point, opts.closest)
    if not pairs:
        return None
    return [
        {
            "sample": thumbs.image(point.sample_path(p.sample), str(p.sample.get("file"))),
            "sample_class": _text(p.sample.get("class")),
            "reference": thumbs.image(
                point.run.data_path(p.reference), "reference: " + str(p.reference)
            ),
            "distance": f"{p.distance:.4g}",
        }
        for p in pairs
    ]


def worst_classes(point: PointView, opts: ReportOptions) -> dict[str, Any] | None:
    """Per-class precision/recall: the classes with the lowest recall (then precision)."""
    art = point.artifact("precision_recall")
    per = (art or {}).get("per_class") or {}
    labels = per.get("class_label") or [str(i) for i in per.get("class_index", [])]
    prec, rec = per.get("precision") or [], per.get("recall") or []
    if not labels or len(prec) != len(labels) or len(rec) != len(labels):
        return None
    n_fake, n_real = (
        per.get("n_fake") or [None] * len(labels),
        per.get("n_real") or [None] * len(labels),
    )
    order = sorted(
        range(len(labels)),
        key=lambda i: (
            finite(rec[i]) if finite(rec[i]) is not None else -1.0,
            finite(prec[i]) if finite(prec[i]) is not None else -1.0,
            i,
        ),
    )[: opts.worst_classes]

    def cell(v: Any) -> NumCell:
        f = finite(v)
        return NumCell("" if f is None else repr(f), _fmt(v))

    rows = [
        {
            "label": _text(labels[i]),
            "cells": [cell(v) for v in (prec[i], rec[i], n_fake[i], n_real[i])],
        }
        for i in order
    ]
    return {"rows": rows, "n_classes": len(labels)}


def _protocols(runs: list[RunView], wanted: list[str] | None) -> list[str]:
    seen: list[str] = []
    for run in runs:
        if run.protocol not in seen:
            seen.append(run.protocol)
    return seen if not wanted or seen else list(wanted)


def contrast(measured: pd.DataFrame, protocols: list[str]) -> dict[str, Any] | None:
    """Fig. 3's section: one-shot vs full-set recall per model; run pairs missing a side named."""
    from varbench.present import plots
    from varbench.present.contrast import contrast_panels

    panels, missing = contrast_panels(measured, protocols)
    if not panels and not missing:
        return None
    caption = (
        "Recall on a one-shot protocol (solid) and on its full-set counterpart (dashed) "
        "against guidance, per model (Semantica Fig. 3); bars: intervals."
    )
    fig = figure(plots.contrast_figure(panels), caption, "contrast") if panels else None
    return {"figure": fig, "missing": [_text(m) for m in missing]}


def run_section(run: RunView, opts: ReportOptions, thumbs: Thumbnails) -> dict[str, Any]:
    """One run: provenance, diversity and memorisation figures, then each sweep point."""
    from varbench.present import plots

    vendi = "Vendi score of each conditioning image's variations (distribution)."
    memo = "Nearest-neighbour distance of samples vs held-out reals (2SDM Fig. 6)."
    return {
        "run_id": _text(run.run_id),
        "model": _text(run.model),
        "protocol": _text(run.protocol),
        **provenance(run),
        "vendi": figure(plots.vendi_figure(run), vendi, f"vendi {run.run_id}"),
        "memorisation": figure(plots.memorisation_figure(run), memo, f"memorisation {run.run_id}"),
        "points": [
            {
                "title": _text(point.row.get("params") or point.pid),
                "grid": grid(point, opts, thumbs),
                "closest": closest(point, opts, thumbs),
                "worst": worst_classes(point, opts),
            }
            for point in run.points
        ],
    }


def build_report(
    runs_dir: Path,
    protocols: list[str] | None = None,
    opts: ReportOptions | None = None,
    studies: list[Path] | None = None,
) -> str:
    """The report's HTML text (the same bytes for the same runs)."""
    from varbench.present import plots
    from varbench.runs.results import published_results

    opts = opts or ReportOptions()
    runs = load_runs(runs_dir, protocols)
    measured = measured_frame(runs)
    published = published_results()
    names = _protocols(runs, protocols)
    if not published.empty:
        base = published["protocol"].str.split("[", n=1, regex=False).str[0]
        wanted = set(names) | {n.split("[", 1)[0] for n in names}
        published = published[published["protocol"].isin(wanted) | base.isin(wanted)]
    study = None
    if studies:  # human preference beside FID and recall (`--study`)
        from varbench.present.study_join import study_section

        study = study_section(studies, measured)
    sweep = "Metrics against the sweep parameter; bars/bands: intervals; hollow diamonds: published values."
    pr = "Precision-recall plane: every model and sweep point."
    sections = []
    for protocol in names:
        m = measured[measured["protocol"] == protocol] if not measured.empty else measured
        base = protocol.split("[", 1)[0]
        p = (
            published[published["protocol"].isin([protocol, base])]
            if not published.empty
            else published
        )
        sections.append(
            {
                "protocol": protocol,
                "sweep": figure(plots.sweep_figure(m, p, protocol), sweep, f"sweep {protocol}"),
                "pr": figure(plots.pr_figure(m, p, protocol), pr, f"pr {protocol}"),
            }
        )
    thumbs = Thumbnails(opts.thumb_px, opts.jpeg_quality)
    script = asset("sort.js")
    return render(
        "report.html",
        style=Markup(asset("report.css")),  # our stylesheet and script, not data
        script=Markup(script),
        script_sha256=script_sha256(script),
        n_runs=len(runs),
        runs_dir=_text(runs_dir),
        protocols=names,
        leaderboard=leaderboard_rows(measured, published),
        study=study,
        paired=paired_rows(runs),
        protocol_sections=sections,
        contrast=contrast(measured, names),
        run_sections=[run_section(run, opts, thumbs) for run in runs],
    )


def write_report(
    runs_dir: Path,
    out: Path,
    protocols: list[str] | None = None,
    opts: ReportOptions | None = None,
    studies: list[Path] | None = None,
) -> Path:
    """Build the report and write it atomically to ``out`` (nothing else is written)."""
    t0 = time.perf_counter()
    text = build_report(runs_dir, protocols, opts, studies)
    atomic_write_text(out, text)
    log.info(
        "wrote %s (%.1f MB) in %.1f s", out, len(text.encode()) / 1e6, time.perf_counter() - t0
    )
    return Path(out)
