"""Figures of finished runs (matplotlib, Agg): metric-vs-guidance sweeps, the precision-recall
plane, memorisation histograms, Vendi distributions and sample grids. Used by the HTML report (as SVG) and by
`varbench plot` (PNG/SVG/PDF files for papers)."""

from __future__ import annotations

import inspect
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from varbench.metrics.keys import caption  # noqa: E402
from varbench.runs.views import PointView, RunView, finite, grid_rows, parse_params  # noqa: E402

# Sweep panels in display order (a panel is drawn when any row has a value); titles come from
# the metrics' declared keys (``varbench.metrics.keys.caption``).
SWEEP_METRICS = (
    "fid", "kid", "precision", "recall", "fd_dinov2", "align_mean", "align_dino_mean",
    "align_clip_mean",
)  # fmt: skip
RC = {"svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7}
KINDS = ("sweep", "pr", "memorisation", "grid", "contrast", "vendi")


def plain(text: Any) -> str:
    """A data string safe as matplotlib text: no mathtext, never hidden by a leading '_'."""
    out = str(text).replace("$", r"\$")
    return " " + out if out.startswith("_") else out


def x_param(params: dict[str, Any]) -> str | None:
    """The sweep axis: ``guidance`` when present, else the first numeric parameter."""
    if finite(params.get("guidance")) is not None:
        return "guidance"
    for key, value in params.items():
        if finite(value) is not None:
            return key
    return None


def _series(df: pd.DataFrame) -> dict[tuple[str, str], list[tuple[float | None, dict]]]:
    """Rows grouped into lines: (label, x-axis name) -> [(x, row)], sorted by x."""
    out: dict[tuple[str, str], list[tuple[float | None, dict]]] = {}
    runs_per_model: dict[str, set] = {}
    for row in df.to_dict("records"):
        runs_per_model.setdefault(str(row.get("model")), set()).add(row.get("run_id"))
    for row in df.to_dict("records"):
        params = parse_params(row.get("params"))
        axis = x_param(params)
        rest = {k: v for k, v in params.items() if k != axis}
        label = str(row.get("model"))
        if rest:
            label += " " + ",".join(f"{k}={v}" for k, v in rest.items())
        source = str(row.get("source") or "")
        if source and source != "varbench":
            label += f" [{source}]"
        elif len(runs_per_model.get(str(row.get("model")), ())) > 1:
            label += f" ({str(row.get('run_id', ''))[-6:]})"
        x = finite(params.get(axis)) if axis else None
        out.setdefault((label, axis or ""), []).append((x, row))
    for pts in out.values():
        pts.sort(key=lambda p: (p[0] is None, p[0] or 0.0))
    return out


def _yerr(rows: list[dict], metric: str, ys: list[float]) -> np.ndarray | None:
    lo = [finite(r.get(f"{metric}_lo")) for r in rows]
    hi = [finite(r.get(f"{metric}_hi")) for r in rows]
    if all(v is None for v in lo + hi):
        return None
    down = [max(y - v, 0.0) if v is not None else 0.0 for y, v in zip(ys, lo, strict=False)]
    up = [max(v - y, 0.0) if v is not None else 0.0 for y, v in zip(ys, hi, strict=False)]
    return np.array([down, up])


def _include_in_ylim(ax: Any, values: list[float]) -> None:
    """Fit the y axis to horizontal reference lines too (axhline does not enter data limits)."""
    lo, hi = min(values), max(values)
    if not ax.ignore_existing_data_limits:  # other artists (bands, error bars) have data
        y0, y1 = ax.dataLim.intervaly
        lo, hi = min(lo, y0), max(hi, y1)
    pad = 0.1 * (hi - lo) or 0.1 * abs(hi) or 0.1
    ax.set_ylim(lo - pad, hi + pad)


def sweep_figure(measured: pd.DataFrame, published: pd.DataFrame, protocol: str) -> Figure | None:
    """Each metric against the sweep parameter; lines per model (and other params), error bars
    from the intervals, published points as hollow markers labelled with their source."""
    frames = [f for f in (measured, published) if f is not None and not f.empty]
    if not frames:
        return None
    both = pd.concat(frames, ignore_index=True)
    metrics = [
        m for m in SWEEP_METRICS if m in both and any(finite(v) is not None for v in both[m])
    ]
    if not metrics:
        return None
    ncol = min(4, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    with plt.rc_context(RC):
        fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow + 0.6), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        handles: dict[str, Any] = {}
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        groups = (
            {**_series(measured), **_series(published)}
            if not published.empty
            else _series(measured)
        )
        models = sorted({str(r.get("model")) for pts in groups.values() for _, r in pts})
        seen_per_model: dict[tuple[str, bool], int] = {}
        ref_lines: dict[Any, list[float]] = {}  # axes -> axhline values (not in data limits)
        axis_names = sorted({axis for _, axis in groups if axis})
        for (label, _axis), pts in sorted(groups.items()):
            is_pub = any(str(r.get("source") or "varbench") != "varbench" for _, r in pts)
            model = str(pts[0][1].get("model"))
            colour = colours[models.index(model) % len(colours)]  # same colour: model's own points
            nth = seen_per_model.get((model, is_pub), 0)
            seen_per_model[(model, is_pub)] = nth + 1
            style = ["-", "--", "-.", ":"][nth % 4]
            marker = ["D", "s", "^", "v"][nth % 4]
            for ax, metric in zip(axes, metrics, strict=False):
                xy = [
                    (x, finite(r.get(metric)), r)
                    for x, r in pts
                    if finite(r.get(metric)) is not None
                ]
                if not xy:
                    continue
                if all(x is None for x, _, _ in xy):  # no sweep axis: a horizontal reference line
                    h = ax.axhline(xy[0][1], color=colour, ls=":" if is_pub else "--", lw=1)
                    ref_lines.setdefault(ax, []).append(xy[0][1])
                    lo, hi = (
                        finite(xy[0][2].get(f"{metric}_lo")),
                        finite(xy[0][2].get(f"{metric}_hi")),
                    )
                    if lo is not None and hi is not None:
                        ax.axhspan(lo, hi, color=colour, alpha=0.12, lw=0)
                else:
                    xs = [x for x, _, _ in xy if x is not None]
                    ys = [y for x, y, _ in xy if x is not None]
                    rows = [r for x, _, r in xy if x is not None]
                    if is_pub:
                        h = ax.plot(
                            xs, ys, ls="none", marker=marker, mfc="none", color=colour, ms=5
                        )[0]
                        for x, y in zip(xs, ys, strict=False):
                            ax.annotate(
                                f"{y:.3g}",
                                (x, y),
                                fontsize=6,
                                xytext=(3, 3),
                                textcoords="offset points",
                                color=colour,
                            )
                    else:
                        h = ax.errorbar(
                            xs,
                            ys,
                            yerr=_yerr(rows, metric, ys),
                            marker="o",
                            ms=3,
                            color=colour,
                            capsize=2,
                            lw=1,
                            ls=style,
                        )
                handles.setdefault(plain(label), h)
        for ax, values in ref_lines.items():
            _include_in_ylim(ax, values)
        for ax, metric in zip(axes, metrics, strict=False):
            ax.set_title(caption(metric))
            ax.grid(alpha=0.3)
            if axis_names:
                ax.set_xlabel(plain(" / ".join(axis_names)))
            else:  # only unswept models: the x axis carries nothing
                ax.set_xticks([])
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        fig.suptitle(plain(f"{protocol}: metrics against the sweep parameter"))
        if handles:
            fig.legend(
                list(handles.values()),
                list(handles),
                loc="outside lower center",
                ncol=min(4, len(handles)),
                frameon=False,
            )
    return fig


def contrast_figure(panels: list) -> Figure | None:
    """Semantica Fig. 3: recall on the one-shot protocol and on its full-set counterpart against
    guidance, one panel per model, with the rows' intervals as error bars."""
    panels = [p for p in panels if p.one_rows or p.full_rows]
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    with plt.rc_context(RC):
        fig = Figure(figsize=(max(4.5, 3.2 * ncol), 2.6 * nrow + 0.6), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, panel in zip(axes, panels, strict=False):
            axis = None
            for rows, label, style in (
                (panel.one_rows, panel.one_shot, "-"),
                (panel.full_rows, panel.full_set, "--"),
            ):
                pts = []
                for r in rows:
                    params = parse_params(r.get("params"))
                    axis = axis or x_param(params)
                    x, y = finite(params.get(axis)) if axis else 0.0, finite(r.get("recall"))
                    if y is not None:
                        pts.append((x if x is not None else 0.0, y, r))
                pts.sort(key=lambda p: p[0])
                if not pts:
                    continue
                ys = [y for _, y, _ in pts]
                ax.errorbar(
                    [x for x, _, _ in pts],
                    ys,
                    yerr=_yerr([r for _, _, r in pts], "recall", ys),
                    marker="o",
                    ms=3,
                    capsize=2,
                    lw=1,
                    ls=style,
                    label=plain(label),
                )
            ax.set_title(plain(panel.model))
            ax.set_xlabel(plain(axis or "sweep point"))
            ax.set_ylabel("recall")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle("one-shot vs full-set recall (Semantica Fig. 3)")
    return fig


def pr_figure(measured: pd.DataFrame, published: pd.DataFrame, protocol: str) -> Figure | None:
    """Precision against recall for every model and sweep point; published points marked."""
    rows = [r for r in measured.to_dict("records") if finite(r.get("precision")) is not None]
    pub = [
        r for r in published.to_dict("records")
        if finite(r.get("precision")) is not None and finite(r.get("recall")) is not None
    ] if not published.empty else []  # fmt: skip
    if not rows and not pub:
        return None
    with plt.rc_context(RC):
        fig = Figure(figsize=(5.0, 4.2), layout="constrained")
        ax = fig.subplots()
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for gi, ((label, axis), pts) in enumerate(sorted(_series(pd.DataFrame(rows)).items())):
            good = [(x, r) for x, r in pts if finite(r.get("recall")) is not None]
            if not good:
                continue
            xs = [float(r["recall"]) for _, r in good]
            ys = [float(r["precision"]) for _, r in good]
            ax.errorbar(
                xs,
                ys,
                xerr=_yerr([r for _, r in good], "recall", xs),
                yerr=_yerr([r for _, r in good], "precision", ys),
                marker="o",
                ms=4,
                capsize=2,
                lw=0.8,
                color=colours[gi % len(colours)],
                label=plain(label),
            )
            for (x, _r), px, py in zip(good, xs, ys, strict=True):
                if x is not None:
                    ax.annotate(
                        f"{axis}={x:g}",
                        (px, py),
                        fontsize=6,
                        xytext=(3, -8),
                        textcoords="offset points",
                    )
        for r in pub:
            ax.plot([r["recall"]], [r["precision"]], marker="D", mfc="none", color="k", ls="none")
            ax.annotate(
                plain(f"{r.get('model')} [{r.get('source')}]"),
                (r["recall"], r["precision"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(plain(f"{protocol}: precision-recall plane"))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", frameon=False)
    return fig


def _hist(art: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(bin edges, sample density, held-out density) from a memorisation artifact."""
    edges = np.asarray(art.get("bin_edges") or [], dtype=float)
    samples = [v for v in art.get("samples_nn") or [] if finite(v) is not None]
    held = [v for v in art.get("heldout_nn") or [] if finite(v) is not None]
    if edges.size < 2:
        values = np.asarray(samples + held, dtype=float)
        hi = float(values.max()) if values.size else 1.0
        edges = np.linspace(0.0, hi if hi > 0 else 1.0, 31)

    def dens(hist: Any, raw: list) -> np.ndarray | None:
        counts = np.asarray(hist, dtype=float) if hist else None
        if counts is None or counts.size != edges.size - 1:
            counts = np.histogram(raw, bins=edges)[0].astype(float) if raw else None
        if counts is None or counts.sum() <= 0:
            return None
        return counts / counts.sum()

    return edges, dens(art.get("samples_hist"), samples), dens(art.get("heldout_hist"), held)


def memorisation_figure(run: RunView) -> Figure | None:
    """Per sweep point, the samples' nearest-neighbour distance histogram against the held-out
    reals' (2SDM Fig. 6): a sample curve left of the held-out curve means copying."""
    panels = [(p, p.artifact("memorisation")) for p in run.points]
    panels = [(p, a) for p, a in panels if a]
    if not panels:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    with plt.rc_context(RC):
        fig = Figure(figsize=(3.0 * ncol, 2.4 * nrow + 0.5), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, (point, art) in zip(axes, panels, strict=False):
            edges, samples, held = _hist(art)
            centres = (edges[:-1] + edges[1:]) / 2
            if held is not None:
                ax.plot(centres, held, color="0.4", ls="--", label="held-out reals")
            if samples is not None:
                ax.plot(centres, samples, color="C3", label="samples")
            ax.set_title(plain(json.dumps(point.params) if point.params else point.pid))
            ax.set_xlabel(plain(f"nearest-neighbour {art.get('encoder', 'LPIPS')} distance"))
            ax.set_ylabel("fraction")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(plain(f"{run.model} on {run.protocol}: memorisation"))
    return fig


VENDI_ARTIFACTS = ("vendi", "vendi_inception", "vendi_dinov2")


def vendi_figure(run: RunView) -> Figure | None:
    """Per sweep point, the distribution over conditioning images of the Vendi score of each
    image's variations (1 = all variations alike), one histogram per feature space."""
    panels = []
    for p in run.points:
        arts = [(n, p.artifact(n)) for n in VENDI_ARTIFACTS]
        arts = [(n, a) for n, a in arts if a and a.get("per_cond")]
        if arts:
            panels.append((p, arts))
    if not panels:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    with plt.rc_context(RC):
        fig = Figure(figsize=(max(4.5, 3.0 * ncol), 2.4 * nrow + 0.5), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, (point, arts) in zip(axes, panels, strict=False):
            values = {
                n: [v for v in a["per_cond"].values() if finite(v) is not None] for n, a in arts
            }
            top = max((max(v) for v in values.values() if v), default=1.0)
            edges = np.linspace(1.0, max(top, 1.0) + 1e-9, 21)
            for i, (n, a) in enumerate(arts):
                if values[n]:
                    ax.hist(
                        values[n],
                        bins=edges,
                        histtype="step",
                        color=f"C{i}",
                        label=plain(str(a.get("encoder", n))),
                    )
            ax.set_title(plain(json.dumps(point.params) if point.params else point.pid))
            ax.set_xlabel("Vendi score of one image's variations")
            ax.set_ylabel("conditioning images")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(plain(f"{run.model} on {run.protocol}: diversity"))
    return fig


# matplotlib >= 3.10 names the box orientation; older versions (>= 3.7 supported) take vert
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"}
    if "orientation" in inspect.signature(matplotlib.axes.Axes.boxplot).parameters
    else {"vert": False}
)


def vendi_values(runs: list[RunView]) -> dict[str, list[tuple[str, list[float]]]]:
    """ "metric (encoder features)" -> [(series label, per-conditioning-image scores)], one series per
    model and sweep point (runs of the same model told apart by their run id's end)."""
    runs_per_model: dict[str, int] = {}
    for run in runs:
        runs_per_model[run.model] = runs_per_model.get(run.model, 0) + 1
    out: dict[str, list[tuple[str, list[float]]]] = {}
    for run in runs:
        for point in run.points:
            label = run.model
            if point.params:
                label += " " + ",".join(f"{k}={v}" for k, v in point.params.items())
            if runs_per_model[run.model] > 1:
                label += f" ({run.run_id[-6:]})"
            for name in VENDI_ARTIFACTS:
                art = point.artifact(name) or {}
                values = [float(v) for v in (art.get("per_cond") or {}).values() if finite(v)]
                if values:
                    space = f"{name} ({art.get('encoder', '?')} features)"
                    out.setdefault(space, []).append((label, values))
    return out


def vendi_distribution_figure(runs: list[RunView], protocol: str) -> Figure | None:
    """One panel per feature space: for every model and sweep point, the distribution over
    conditioning images of the Vendi score of that image's variations (box and points)."""
    spaces = vendi_values(runs)
    if not spaces:
        return None
    n_series = max(len(v) for v in spaces.values())
    with plt.rc_context(RC):
        fig = Figure(figsize=(3.6 * len(spaces) + 1.6, 0.45 * n_series + 1.2), layout="constrained")
        axes = fig.subplots(1, len(spaces), squeeze=False).ravel()
        rng = np.random.default_rng(0)  # jitter of the points only
        for ax, (name, series) in zip(axes, spaces.items(), strict=True):
            series = sorted(series, key=lambda s: s[0])
            ys = np.arange(len(series))
            ax.boxplot(
                [v for _, v in series],
                positions=ys,
                **_HORIZONTAL,
                widths=0.6,
                showfliers=False,
                medianprops={"color": "C3"},
            )
            for y, (_, values) in zip(ys, series, strict=True):
                jitter = rng.uniform(-0.18, 0.18, len(values))
                ax.plot(values, y + jitter, ls="none", marker="o", ms=2, color="C0", alpha=0.6)
            ax.set_yticks(ys, [plain(label) for label, _ in series])
            ax.set_title(plain(name))
            ax.set_xlabel("Vendi score of one image's variations (1 = all alike)")
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(plain(f"{protocol}: diversity per conditioning image"))
    return fig


def _load(path: Path | None, size: int) -> np.ndarray:
    from PIL import Image

    if path is None:
        return np.full((size, size, 3), 200, np.uint8)
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return np.asarray(im)


def grid_figure(
    point: PointView, n_classes: int = 6, n_samples: int = 6, seed: int = 0, size: int = 96
) -> Figure | None:
    """Conditioning image (first column) then its samples, one row per seeded class."""
    rows = grid_rows(point, n_classes, n_samples, seed)
    if not rows:
        return None
    ncol = 1 + max(len(r.samples) for r in rows)
    with plt.rc_context(RC):
        fig = Figure(figsize=(1.0 * ncol, 1.05 * len(rows) + 0.4), layout="constrained")
        axes = fig.subplots(len(rows), ncol, squeeze=False)
        for ri, row in enumerate(rows):
            images = [point.run.data_path(row.cond)] + [point.sample_path(s) for s in row.samples]
            for ci, ax in enumerate(axes[ri]):
                ax.set_axis_off()
                if ci < len(images):
                    path = images[ci]
                    ax.imshow(_load(path if path is None or path.is_file() else None, size))
            axes[ri][0].set_title(plain(row.class_label), fontsize=6)
        fig.suptitle(plain(f"{point.run.model} {point.pid}: conditioning | samples"))
    return fig


def to_svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog or DOCTYPE, no external refs)."""
    buf = io.StringIO()
    with plt.rc_context(RC):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def save(fig: Figure, path: Path, fmt: str) -> Path:
    """Write a figure file (png at 200 dpi, svg, pdf)."""
    path = Path(path).with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(RC):
        fig.savefig(path, format=fmt, dpi=200)
    return path


def figures(
    kind: str,
    runs: list[RunView],
    published: pd.DataFrame,
    protocols: Iterable[str],
    n_classes: int = 6,
    n_samples: int = 6,
    seed: int = 0,
) -> list[tuple[str, Figure]]:
    """(file stem, figure) for ``varbench plot --kind``: one per protocol, or per run/point."""
    from varbench.runs.views import measured_frame

    measured = measured_frame(runs)
    out: list[tuple[str, Figure]] = []
    for protocol in protocols:
        m = measured[measured["protocol"] == protocol] if not measured.empty else measured
        p = published[published["protocol"] == protocol] if not published.empty else published
        if kind == "sweep":
            fig = sweep_figure(m, p, protocol)
            if fig is not None:
                out.append((f"sweep_{protocol}", fig))
        elif kind == "pr":
            fig = pr_figure(m, p, protocol)
            if fig is not None:
                out.append((f"pr_{protocol}", fig))
        elif kind == "vendi":
            fig = vendi_distribution_figure([r for r in runs if r.protocol == protocol], protocol)
            if fig is not None:
                out.append((f"vendi_{protocol}", fig))
    if kind == "contrast":
        from varbench.present.contrast import contrast_panels

        panels, _ = contrast_panels(measured, list(protocols))
        fig = contrast_figure(panels)
        if fig is not None:
            out.append(("contrast", fig))
    for run in runs:
        if kind == "memorisation":
            fig = memorisation_figure(run)
            if fig is not None:
                out.append((f"memorisation_{run.run_id}", fig))
        elif kind == "grid":
            for point in run.points:
                fig = grid_figure(point, n_classes, n_samples, seed)
                if fig is not None:
                    out.append((f"grid_{run.run_id}_{point.pid}", fig))
    return out


def safe_stem(text: str) -> str:
    """A file-name-safe stem for a figure (protocol labels may hold brackets and commas)."""
    import re

    return re.sub(r"[^A-Za-z0-9._=-]", "_", text)
