"""`varbench study ...`: create, invite, serve, results (thin wrappers; JSON on stdout)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from varbench.core.progress import setup_logging
from varbench.errors import UsageError

study_app = typer.Typer(
    help="Human preference studies: build from runs, serve to raters, analyse the votes.",
    no_args_is_help=True,
)


def _echo_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@study_app.command()
def create(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding the finished runs"),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol the runs share"),
    models: str = typer.Option(..., "--models", help="comma-separated models, e.g. A,B[,C]"),
    points: str = typer.Option("best", "--points", help='best | all | JSON {"model": {...}}'),
    trials: int = typer.Option(200, "--trials", help="main comparison trials"),
    out: Path = typer.Option(..., "--out", "-o", help="the study file to write (.sqlite)"),
    seed: int = typer.Option(0, "--seed", help="seed of pairs, sides and orders"),
    check_share: float = typer.Option(0.1, "--check-share", help="attention checks per trial"),
    repeat_share: float = typer.Option(0.1, "--repeat-share", help="repeats (sides swapped)"),
    set_size: int = typer.Option(1, "--set-size", help="samples per side (paper: sets)"),
    thumb_px: int = typer.Option(512, "--thumb-px", help="longest side of stored images"),
    allow_tie: bool = typer.Option(False, "--allow-tie", help="offer 'no preference'"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a self-contained study file from finished runs of one protocol.

    Example: varbench study create --runs runs -p demo_1shot --models copy,oracle --trials 200 --out study.sqlite
    """
    setup_logging(verbose)
    from varbench.study.create import StudySpec, create_study

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    if len(names) != len(set(names)):
        raise UsageError(f"--models {models}: a model is listed twice")
    if thumb_px < 16:
        raise UsageError(f"--thumb-px {thumb_px}: must be >= 16")
    spec = StudySpec(runs, protocol, names, points, trials, seed, check_share, repeat_share,
                     set_size, thumb_px, allow_tie)  # fmt: skip
    _echo_json(create_study(spec, out))


@study_app.command()
def invite(
    study: Path = typer.Argument(..., help="the study file"),
    raters: int = typer.Option(..., "--raters", help="how many new rater links"),
    per_rater: int = typer.Option(None, "--per-rater", help="trials per rater (default: all)"),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url", help="server address"),
) -> None:
    """Add raters; print one link per rater (unguessable token) and the admin link."""
    from varbench.study.db import meta, open_study
    from varbench.study.raters import invite as invite_

    con = open_study(study)
    tokens = invite_(con, raters, per_rater)
    admin = meta(con)["admin_token"]
    con.close()
    base = base_url.rstrip("/")
    _echo_json({"links": [f"{base}/r/{t}" for t in tokens], "admin": f"{base}/admin/{admin}"})


@study_app.command()
def serve(
    study: Path = typer.Argument(..., help="the study file"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
) -> None:
    """Serve the study to raters until Ctrl-C (votes are saved as they arrive)."""
    setup_logging(False)
    from varbench.study.server import serve as serve_

    serve_(study, host, port)


class ResultFormat(str, Enum):
    table = "table"
    json = "json"
    parquet = "parquet"


@study_app.command()
def results(
    study: Path = typer.Argument(..., help="the study file"),
    fmt: ResultFormat = typer.Option(ResultFormat.table, "--format", "-f"),
    out: Path = typer.Option(None, "--out", "-o", help="parquet file (with --format parquet)"),
    exclude_failed_checks: bool = typer.Option(
        False, "--exclude-failed-checks", help="drop raters who failed an attention check"
    ),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """Preference with intervals, Bradley-Terry, per-rater checks and agreement."""
    from varbench.study.analysis import Options, analyse, system_rows

    if fmt is ResultFormat.parquet and out is None:
        raise UsageError("--format parquet needs --out FILE.parquet")
    result = analyse(study, Options(exclude_failed_checks=exclude_failed_checks, seed=seed))
    if fmt is ResultFormat.json:
        _echo_json(result)
    elif fmt is ResultFormat.parquet:
        from varbench.core.files import atomic_write_bytes

        atomic_write_bytes(out, system_rows(result).to_parquet(index=False))
        _echo_json({"parquet": str(out), "rows": len(result["per_system"])})
    else:
        from varbench.study.tables import print_tables

        print_tables(result)
