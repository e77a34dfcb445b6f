"""`varbench report`: one self-contained HTML file of finished runs.

Images are embedded as base64 JPEG thumbnails, plots as inline SVG, and a Content-Security-Policy
allows nothing but data: images, inline styles and the one hashed sorting script, so the file
opens from disk on an air-gapped cluster and requests nothing. Every string that comes from data
(class names, paths, params, notes) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from varbench.core.files import atomic_write_text
from varbench.metrics.keys import rank_value
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

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      function key(row) {
        var cell = row.cells[col];
        var v = cell ? cell.getAttribute("data-v") : null;
        if (v !== null && v !== "" && !isNaN(parseFloat(v))) { return [0, parseFloat(v)]; }
        return [cell && cell.textContent === "" ? 2 : 1, cell ? cell.textContent : ""];
      }
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b);
        if (ka[0] !== kb[0]) { return ka[0] - kb[0]; }
        var c = ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.sortable th{cursor:pointer}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.published{color:#666;font-style:italic}
.grid td{border:none;padding:1px;text-align:center;font-size:10px}
.grid img,.pairs img{display:block}
.pairs{display:flex;flex-wrap:wrap;gap:8px}.pair{display:flex;gap:2px;font-size:10px}
.pair figure{margin:0;text-align:center}
.note{color:#666;font-size:12px}
svg{max-width:100%;height:auto}
code{font-size:12px;word-break:break-all}
"""


def esc(value: Any) -> str:
    """HTML-escape a data string (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


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

    def __init__(self, size: int, quality: int):
        self.size, self.quality = size, quality
        self._cache: dict[Path, str] = {}

    def uri(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in self._cache:
            from PIL import Image

            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((self.size, self.size))
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", quality=self.quality)
            except OSError:
                return None
            self._cache[path] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(
                "ascii"
            )
        return self._cache[path]

    def img(self, path: Path | None, alt: str) -> str:
        uri = self.uri(path)
        if uri is None:
            return f'<span class="note">({esc(alt)}: image not on this machine)</span>'
        return f'<img src="{uri}" alt="{esc(alt)}" title="{esc(alt)}" width="{self.size}">'


def _fmt(value: Any) -> str:
    v = finite(value)
    if v is not None and not isinstance(value, str):
        return f"{v:.4g}"
    return "" if value is None or (isinstance(value, float)) else str(value)


def _metric_cell(row: dict[str, Any], metric: str) -> str:
    v = finite(row.get(metric))
    if v is None:
        return '<td class="num" data-v=""></td>'
    lo, hi = finite(row.get(f"{metric}_lo")), finite(row.get(f"{metric}_hi"))
    text = f"{v:.4g}"
    if lo is not None and hi is not None:
        text += f' <span class="note">[{lo:.4g}, {hi:.4g}]</span>'
    return f'<td class="num" data-v="{v!r}">{text}</td>'


def leaderboard_html(measured: pd.DataFrame, published: pd.DataFrame) -> str:
    """Measured rows beside published rows, sortable by any column, intervals in brackets."""
    frames = [f for f in (measured, published) if not f.empty]
    if not frames:
        return '<p class="note">No rows.</p>'
    both = pd.concat(frames, ignore_index=True)
    metrics = [m for m in LEADERBOARD_METRICS if m in both and both[m].notna().any()]
    head = ["model", "protocol", "params", *metrics, "n_samples", "source"]
    out = ['<table class="sortable" id="leaderboard"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    records = both.to_dict("records")
    records.sort(key=lambda r: (str(r.get("protocol")), *rank_value(r)))
    for r in records:
        pub = str(r.get("source") or "varbench") != "varbench"
        out.append(f'<tr class="{"published" if pub else "measured"}">')
        out += [f"<td>{esc(r.get(k))}</td>" for k in ("model", "protocol", "params")]
        out += [_metric_cell(r, m) for m in metrics]
        n = finite(r.get("n_samples"))
        out.append(
            f'<td class="num" data-v="{"" if n is None else int(n)}">{"" if n is None else int(n)}</td>'
        )
        out.append(f"<td>{esc(r.get('source'))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def paired_html(runs: list[RunView]) -> str:
    """Best point of each model against the best model: A - B, paired interval, verdict."""
    from varbench.present.compare import METRICS, best_point_comparisons

    found = best_point_comparisons(runs)
    if not found:
        return '<p class="note">No two models share a protocol and manifest here.</p>'
    model_of = {run.run_id: run.model for run in runs}
    out = ['<table id="paired"><thead><tr><th>model</th><th>params</th><th>against</th>']
    out += [f"<th>{esc(m)} (A - B)</th>" for m in METRICS]
    out.append("</tr></thead><tbody>")
    for (run_id, params), res in sorted(found.items()):
        out.append(f"<tr><td>{esc(model_of.get(run_id, run_id))}</td><td>{esc(params)}</td>"
                   f"<td>{esc(res.get('against'))} {esc(res.get('against_point', ''))}</td>")  # fmt: skip
        if "error" in res:
            out.append(f'<td colspan="{len(METRICS)}" class="note">{esc(res["error"])}</td></tr>')
            continue
        for m in METRICS:
            r = res[m]
            out.append(f'<td class="num" data-v="{r["diff"]!r}">{r["diff"]:+.4g} '
                       f'<span class="note">[{r["lo"]:+.4g}, {r["hi"]:+.4g}] '
                       f"{esc(r['better'])}</span></td>")  # fmt: skip
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure_html(fig: Any, caption: str, salt: str) -> str:
    from varbench.present.report_templates import figure_svg

    if fig is None:
        return ""
    svg = figure_svg(fig, salt)
    return f'<figure>{svg}<figcaption class="note">{esc(caption)}</figcaption></figure>'


def provenance_html(run: RunView) -> str:
    """Versions, device, dtype, weights, manifest hash, preparation and wall time of a run."""
    first = run.rows[0]
    out = ["<table><tbody>"]
    for key in PROVENANCE:
        if key in first and first[key] is not None and _fmt(first[key]) != "":
            out.append(f"<tr><th>{esc(key)}</th><td><code>{esc(_fmt(first[key]))}</code></td></tr>")
    out.append(f"<tr><th>data_root</th><td><code>{esc(run.data_root)}</code></td></tr>")
    out.append(f"<tr><th>run folder</th><td><code>{esc(run.folder)}</code></td></tr>")
    out.append("</tbody></table>")
    cols = [c for c in PER_POINT if any(c in r for r in run.rows)]
    out.append("<table><thead><tr><th>params</th>")
    out += [f"<th>{esc(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for r in run.rows:
        out.append(f"<tr><td>{esc(r.get('params'))}</td>")
        out += [f"<td>{esc(_fmt(r.get(c)))}</td>" for c in cols]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def grid_html(point: PointView, opts: ReportOptions, thumbs: Thumbnails) -> str:
    """Seeded classes: the conditioning image, then its samples."""
    rows = grid_rows(point, opts.grid_classes, opts.grid_samples, opts.seed)
    if not rows:
        return '<p class="note">No sample index (index.json) for this point.</p>'
    out = ['<table class="grid"><tbody>']
    for row in rows:
        out.append(
            f"<tr><td>{thumbs.img(point.run.data_path(row.cond), 'conditioning: ' + row.cond)}"
            f"<br>{esc(row.class_label)}</td>"
        )
        for s in row.samples:
            alt = f"{s.get('file')} (seed {s.get('seed')})"
            out.append(
                f"<td>{thumbs.img(point.sample_path(s), alt)}#{esc(s.get('sample_index'))}</td>"
            )
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def closest_html(point: PointView, opts: ReportOptions, thumbs: Thumbnails) -> str:
    """Samples with the smallest nearest-neighbour distance beside that reference."""
    pairs = closest_pairs(point, opts.closest)
    if not pairs:
        return '<p class="note">No memorisation artifact for this point.</p>'
    out = ['<div class="pairs">']
    for p in pairs:
        out.append(
            '<div class="pair">'
            f"<figure>{thumbs.img(point.sample_path(p.sample), str(p.sample.get('file')))}"
            f"<figcaption>sample ({esc(p.sample.get('class'))})</figcaption></figure>"
            f"<figure>{thumbs.img(point.run.data_path(p.reference), 'reference: ' + str(p.reference))}"
            f"<figcaption>reference, d = {p.distance:.4g}</figcaption></figure></div>"
        )
    out.append("</div>")
    return "".join(out)


def worst_classes_html(point: PointView, opts: ReportOptions) -> str:
    """Per-class precision/recall: the classes with the lowest recall (then precision)."""
    art = point.artifact("precision_recall")
    per = (art or {}).get("per_class") or {}
    labels = per.get("class_label") or [str(i) for i in per.get("class_index", [])]
    prec, rec = per.get("precision") or [], per.get("recall") or []
    if not labels or len(prec) != len(labels) or len(rec) != len(labels):
        return '<p class="note">No per-class precision/recall artifact for this point.</p>'
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
    out = [
        '<table class="sortable"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
        "<th>n samples</th><th>n references</th></tr></thead><tbody>"
    ]
    for i in order:
        out.append(f"<tr><td>{esc(labels[i])}</td>")
        for v in (prec[i], rec[i], n_fake[i], n_real[i]):
            f = finite(v)
            out.append(f'<td class="num" data-v="{"" if f is None else repr(f)}">{_fmt(v)}</td>')
        out.append("</tr>")
    out.append(
        f'</tbody></table><p class="note">{len(order)} of {len(labels)} classes, '
        "lowest recall first.</p>"
    )
    return "".join(out)


def _protocols(runs: list[RunView], wanted: list[str] | None) -> list[str]:
    seen: list[str] = []
    for run in runs:
        if run.protocol not in seen:
            seen.append(run.protocol)
    return seen if not wanted or seen else list(wanted)


def contrast_html(measured: pd.DataFrame, protocols: list[str]) -> str:
    """Fig. 3's section: one-shot vs full-set recall per model; run pairs missing a side named."""
    from varbench.present import plots
    from varbench.present.contrast import contrast_panels

    panels, missing = contrast_panels(measured, protocols)
    if not panels and not missing:
        return ""
    html = '<h2 id="contrast-section">One-shot against full-set recall</h2>'
    if panels:
        html += _figure_html(
            plots.contrast_figure(panels),
            "Recall on a one-shot protocol (solid) and on its full-set counterpart (dashed) "
            "against guidance, per model (Semantica Fig. 3); bars: intervals.",
            "contrast",
        )
    if missing:
        html += (
            '<p class="note">Missing a side:</p><ul>'
            + "".join(f"<li>{esc(m)}</li>" for m in missing)
            + "</ul>"
        )
    return html


def build_report(
    runs_dir: Path,
    protocols: list[str] | None = None,
    opts: ReportOptions | None = None,
    studies: list[Path] | None = None,
) -> str:
    """The report's HTML text."""
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
    thumbs = Thumbnails(opts.thumb_px, opts.jpeg_quality)
    body = ["<h1>varbench report</h1>",
            f'<p class="note">{len(runs)} run(s) under <code>{esc(runs_dir)}</code>; '
            f"protocols: {esc(', '.join(names) or 'none')}.</p>",
            "<h2 id=\"leaderboard-section\">Leaderboard</h2>",
            '<p class="note">Measured rows (varbench) beside the papers\' numbers (italic). '
            "Brackets: the row's interval (<code>_lo</code>, <code>_hi</code>). Click a column "
            "to sort.</p>",
            leaderboard_html(measured, published)]  # fmt: skip
    if studies:  # human preference beside FID and recall (`--study`)
        from varbench.present.study_join import study_html

        body.append(study_html(studies, measured))
    body += ['<h2 id="paired-section">Best model against the others (paired)</h2>',
             '<p class="note">Each model\'s best (lowest-FID) point against the best model\'s, '
             "same protocol and manifest: A - B with a 95 % interval from the same class "
             "half-samples applied to both runs, and the verdict.</p>",
             paired_html(runs)]  # fmt: skip
    for protocol in names:
        m = measured[measured["protocol"] == protocol] if not measured.empty else measured
        base = protocol.split("[", 1)[0]
        p = (
            published[published["protocol"].isin([protocol, base])]
            if not published.empty
            else published
        )
        body.append(f"<h2>Protocol {esc(protocol)}</h2>")
        body.append(
            _figure_html(
                plots.sweep_figure(m, p, protocol),
                "Metrics against the sweep parameter; bars/bands: intervals; "
                "hollow diamonds: published values.",
                f"sweep {protocol}",
            )
        )
        body.append(
            _figure_html(
                plots.pr_figure(m, p, protocol),
                "Precision-recall plane: every model and sweep point.",
                f"pr {protocol}",
            )
        )
    body.append(contrast_html(measured, names))
    for run in runs:
        body.append(f"<h2>Run {esc(run.run_id)}</h2><p>{esc(run.model)} on {esc(run.protocol)}</p>")
        body.append("<h3>Provenance</h3>" + provenance_html(run))
        vendi = plots.vendi_figure(run)
        if vendi is not None:
            caption = "Vendi score of each conditioning image's variations (distribution)."
            body.append("<h3>Diversity</h3>" + _figure_html(vendi, caption, f"vendi {run.run_id}"))
        fig = plots.memorisation_figure(run)
        body.append(
            "<h3>Memorisation</h3>"
            + (
                _figure_html(
                    fig,
                    "Nearest-neighbour distance of samples vs held-out reals (2SDM Fig. 6).",
                    f"memorisation {run.run_id}",
                )
                if fig is not None
                else '<p class="note">No memorisation artifact in this run.</p>'
            )
        )
        for point in run.points:
            title = point.row.get("params") or point.pid
            body.append(f"<h3>{esc(run.model)} {esc(title)}</h3>")
            body.append("<h4>Samples</h4>" + grid_html(point, opts, thumbs))
            body.append("<h4>Closest to a reference</h4>" + closest_html(point, opts, thumbs))
            body.append("<h4>Worst classes</h4>" + worst_classes_html(point, opts))
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode("ascii")
    csp = (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>varbench report</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + f"<script>{SCRIPT}</script></body></html>\n")  # fmt: skip


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
