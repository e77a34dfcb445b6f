"""The HTML report and the report's figures as files (`report`, `plot`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from varbench.cli.common import app, echo_json
from varbench.core.progress import setup_logging, stderr_console
from varbench.errors import UsageError


@app.command()
def report(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for run folders"
    ),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    out: Path = typer.Option(
        Path("report.html"), "--out", "-o", help="the HTML file to write (nothing else is written)"
    ),
    grid_classes: int = typer.Option(
        6, "--grid-classes", help="classes per sample grid (seeded choice)"
    ),
    grid_samples: int = typer.Option(
        6, "--grid-samples", help="samples shown per conditioning image"
    ),
    closest: int = typer.Option(
        8, "--closest", help="closest-to-a-reference pairs per sweep point"
    ),
    worst_classes: int = typer.Option(10, "--worst-classes", help="rows of the per-class table"),
    thumb_px: int = typer.Option(96, "--thumb-px", help="thumbnail size (pixels, longest side)"),
    seed: int = typer.Option(0, "--seed", help="seed of the grid's class choice"),
    study: list[Path] = typer.Option(
        [], "--study", help="study file(s): a human preference section (repeatable)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write one self-contained HTML report (leaderboard, plots, samples, provenance).

    Example: varbench report --runs runs --protocol demo_1shot --out report.html
    """
    setup_logging(verbose)
    from varbench.present.report import ReportOptions, write_report

    for name, value in (("--grid-classes", grid_classes), ("--grid-samples", grid_samples),
                        ("--closest", closest), ("--worst-classes", worst_classes)):  # fmt: skip
        if value < 0:
            raise UsageError(f"{name} {value}: must be >= 0")
    if thumb_px < 8:
        raise UsageError(f"--thumb-px {thumb_px}: must be >= 8")
    opts = ReportOptions(grid_classes, grid_samples, closest, worst_classes, thumb_px, seed=seed)
    path = write_report(runs, out, protocol or None, opts, studies=study or None)
    echo_json({"report": str(path), "bytes": path.stat().st_size})


class PlotKind(str, Enum):
    sweep = "sweep"
    pr = "pr"
    memorisation = "memorisation"
    grid = "grid"
    contrast = "contrast"
    vendi = "vendi"


class PlotFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


@app.command()
def plot(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for run folders"
    ),
    kind: PlotKind = typer.Option(
        ..., "--kind", help="sweep | pr | memorisation | grid | contrast | vendi"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the figure files"),
    fmt: PlotFormat = typer.Option(PlotFormat.png, "--format", "-f", help="png | svg | pdf"),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    grid_classes: int = typer.Option(6, "--grid-classes"),
    grid_samples: int = typer.Option(6, "--grid-samples"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write the report's figures as files for papers (one per protocol, run or sweep point).

    Example: varbench plot --runs runs --kind sweep --out figures --format pdf
    """
    from varbench.present import plots
    from varbench.runs.results import published_results
    from varbench.runs.views import load_runs

    found = load_runs(runs, None if kind == PlotKind.contrast else (protocol or None))
    names = protocol or list(dict.fromkeys(r.protocol for r in found))
    if kind == PlotKind.contrast:
        from varbench.present.contrast import contrast_panels
        from varbench.runs.views import measured_frame

        for line in contrast_panels(measured_frame(found), protocol or None)[1]:
            stderr_console.print(f"contrast: {line}")
    written = []
    for stem, fig in plots.figures(kind.value, found, published_results(), names,
                                   grid_classes, grid_samples, seed):  # fmt: skip
        written.append(str(plots.save(fig, out / plots.safe_stem(stem), fmt.value)))
    if not written:
        stderr_console.print(f"no {kind.value} figure: no run under {runs} has the data for it")
    echo_json(written)
