"""Result commands: leaderboard, check (the CI gate), baseline and the paired compare."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from varbench.cli.common import Format, app, echo_json, parse_weights
from varbench.core.progress import setup_logging, stderr_console
from varbench.errors import UsageError


@app.command()
def leaderboard(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for results.parquet"
    ),
    protocol: str = typer.Option(None, "--protocol", "-p", help="only this protocol"),
    model: str = typer.Option(None, "--model", "-m", help="only this model"),
    fmt: Format = typer.Option(
        Format.table, "--format", "-f", help="table | csv | markdown | json"
    ),
    published: bool = typer.Option(
        True, "--published/--no-published", help="include the papers' numbers"
    ),
    columns: str = typer.Option(None, "--columns", help="comma-separated columns to show"),
    study: list[Path] = typer.Option(
        [], "--study", help="study file(s): add human preference columns (repeatable)"
    ),
    paired: bool = typer.Option(
        True,
        "--compare/--no-compare",
        help="json: add vs_best, each model's best point against the best model's, paired "
        "(reads every run's features from the cache); --no-compare skips it",
    ),
) -> None:
    """Show every run under --runs beside the published numbers, best FID first.

    Example: varbench leaderboard --runs runs --protocol demo_1shot --format csv
    """
    from varbench.present.leaderboard import collect, render, select

    df = select(collect(runs, include_published=published), protocol, model)
    if study:
        from varbench.present.leaderboard import DISPLAY_COLUMNS
        from varbench.present.study_join import attach

        df = attach(df, study)
        columns = columns or ",".join([*DISPLAY_COLUMNS[:-1], "human_pref", "source"])
    if fmt == Format.json and paired:  # best point of each model against the best, paired
        from varbench.present.compare import attach_to_leaderboard

        df = attach_to_leaderboard(df, runs)
    text = render(df, fmt.value, columns.split(",") if columns else None)
    if text is not None:
        sys.stdout.write(text)


class CheckFormat(str, Enum):
    json = "json"
    text = "text"
    junit = "junit"


@app.command()
def check(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="measured results: a runs folder or a results.parquet"
    ),
    baseline: Path = typer.Option(
        ..., "--baseline", help="baseline results: a runs folder or a results.parquet"
    ),
    tolerance: str = typer.Option(
        None,
        "--tolerance",
        help="'ci' (outside the baseline's interval in the worse direction fails), or allowed "
        "worsening per metric, e.g. fid=0.5,recall=0.01, or both: ci,kid=0.001 "
        "(default: 0 for fid,kid,precision,recall)",
    ),
    fmt: CheckFormat = typer.Option(
        CheckFormat.json,
        "--format",
        "-f",
        help="stdout: json (default), text (one line per finding) or junit XML",
    ),
) -> None:
    """CI regression gate: exit 1 if any metric is worse than its baseline beyond tolerance.

    One line per finding goes to stderr; --format chooses stdout. Measured rows with no baseline
    row are reported, not failed.

    Example: varbench check --runs runs --baseline results/baselines/demo_1shot.parquet --tolerance ci
    """
    from varbench.present.check import check as check_
    from varbench.present.check import load_rows, parse_tolerances, to_junit

    findings = check_(load_rows(runs), load_rows(baseline), parse_tolerances(tolerance))
    lines = [f.describe() for f in findings]
    if fmt != CheckFormat.text:
        for line in lines:
            stderr_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if fmt == CheckFormat.json:
        echo_json([f.__dict__ for f in findings])
    elif fmt == CheckFormat.junit:
        sys.stdout.write(to_junit(findings))
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    if not any(f.status != "no_baseline" for f in findings):
        raise UsageError(
            "varbench check: no measured row matches a baseline row (model, protocol, params)"
        )
    n_bad = sum(not f.ok for f in findings)
    stderr_console.print(
        f"varbench check: {n_bad} regression(s) in {sum(f.status in ('ok', 'regression') for f in findings)} checked metric(s)",
        markup=False,
        highlight=False,
    )
    if n_bad:
        raise typer.Exit(1)


@app.command()
def baseline(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for results.parquet"
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="baseline parquet, e.g. results/baselines/NAME.parquet"
    ),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    model: list[str] = typer.Option([], "--model", "-m", help="only these models (repeatable)"),
) -> None:
    """Freeze measured rows (values, intervals, provenance) as a baseline for `varbench check`.

    Example: varbench baseline --runs runs --protocol demo_1shot --out results/baselines/demo_1shot.parquet
    """
    from varbench.present.baseline import baseline_rows, write_baseline

    df = baseline_rows(runs, protocol or None, model or None)
    path = write_baseline(df, out)
    echo_json({"baseline": str(path), "rows": len(df)})


class CompareFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def compare(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder searched for run folders"),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol both runs used"),
    models: str = typer.Option(..., "--models", help="A,B: the two models to compare"),
    metrics_: str = typer.Option(
        "fid,precision,recall",
        "--metrics",
        help="comma-separated: fid, precision, recall, density, kid, fd_dinov2",
    ),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    fmt: CompareFormat = typer.Option(CompareFormat.table, "--format", "-f", help="table | json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Is A better than B? A - B per metric and sweep point, paired 95 % interval, verdict.

    Example: varbench compare --runs runs --protocol demo_1shot --models oracle,copy
    """
    setup_logging(verbose)
    from varbench.present.compare import compare_runs, render_table

    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(f"--models {models!r}: expected two different models, A,B")
    rows = compare_runs(
        runs, protocol, names[0], names[1],
        [m.strip() for m in metrics_.split(",") if m.strip()],
        cache_dir, parse_weights(weights),
    )  # fmt: skip
    if fmt == CompareFormat.json:
        echo_json(rows)
    else:
        sys.stdout.write(render_table(rows))
