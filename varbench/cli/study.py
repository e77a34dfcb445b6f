"""`varbench study ...`: create, invite, serve, results, revoke, close, export (JSON on stdout)."""

from __future__ import annotations

import json
import logging
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


class PlatformName(str, Enum):
    prolific = "prolific"
    mturk = "mturk"
    generic = "generic"


class ImageFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"


@study_app.command()
def create(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding the finished runs"),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol the runs share"),
    models: str = typer.Option(..., "--models", help="comma-separated models, e.g. A,B[,C]"),
    points: str = typer.Option("best", "--points", help='best | all | JSON {"model": {...}}'),
    trials: int = typer.Option(200, "--trials", help="main comparison trials"),
    out: Path = typer.Option(..., "--out", "-o", help="the study file to write (.sqlite)"),
    seed: int = typer.Option(0, "--seed", help="seed of pairs, sides and orders"),
    slice_trials: int = typer.Option(
        None, "--slice-trials", help="main trials per rater slice (default: all in one)"
    ),
    raters_per_slice: int = typer.Option(
        1, "--raters-per-slice", help="planned raters for every slice"
    ),
    check_share: float = typer.Option(
        0.1, "--check-share", help="attention checks per main trial of a slice (>= 2)"
    ),
    repeat_share: float = typer.Option(0.1, "--repeat-share", help="repeats (sides swapped)"),
    repeat_gap: int = typer.Option(5, "--repeat-gap", help="min. trials from original to repeat"),
    practice: int = typer.Option(2, "--practice", help="unscored practice trials with feedback"),
    set_size: int = typer.Option(1, "--set-size", help="samples per side (paper: sets)"),
    image_px: int = typer.Option(512, "--image-px", help="every candidate stored at PX x PX"),
    image_format: ImageFormat = typer.Option(ImageFormat.jpeg, "--image-format"),
    allow_tie: bool = typer.Option(False, "--allow-tie", help="offer 'no preference'"),
    platform: PlatformName = typer.Option(
        PlatformName.generic, "--platform", help="where participants come from"
    ),
    completion_code: str = typer.Option("", "--completion-code", help="shown at the end"),
    completion_url: str = typer.Option("", "--completion-url", help="redirect at the end"),
    screenout_code: str = typer.Option(
        "", "--screenout-code", help="shown to raters excluded by the rule"
    ),
    screenout_url: str = typer.Option("", "--screenout-url", help="their redirect"),
    consent: Path = typer.Option(None, "--consent", help="consent text file (shown first)"),
    questions: Path = typer.Option(None, "--questions", help="screening questions (JSON)"),
    seconds_per_trial: float = typer.Option(
        6.0, "--seconds-per-trial", help="for the duration shown to raters"
    ),
    max_failed_checks: int = typer.Option(
        1, "--max-failed-checks", help="exclude raters failing more checks"
    ),
    min_median_ms: int = typer.Option(
        0, "--min-median-ms", help="exclude raters faster than this (0: off)"
    ),
    max_side_share: float = typer.Option(
        0.9, "--max-side-share", help="exclude raters choosing one side more often"
    ),
    side_alpha: float = typer.Option(
        1e-4, "--side-alpha", help="... and less likely than this under a fair coin"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a self-contained study file from finished runs of one protocol.

    Example: varbench study create --runs runs -p demo_1shot --models copy,oracle --trials 200
    --slice-trials 20 --raters-per-slice 3 --platform prolific --completion-code C0DE --out s.sqlite
    """
    setup_logging(verbose)
    from varbench.study.create import StudySpec, create_study
    from varbench.study.plan import Layout
    from varbench.study.platforms import Exit
    from varbench.study.questions import load_consent, load_questions
    from varbench.study.rules import ExclusionRule

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    if len(names) != len(set(names)):
        raise UsageError(f"--models {models}: a model is listed twice")
    layout = Layout(trials, slice_trials, raters_per_slice, check_share, repeat_share, repeat_gap,
                    practice, seed)  # fmt: skip
    exit_ = Exit(platform.value, completion_code, completion_url, screenout_code, screenout_url)
    rule = ExclusionRule(max_failed_checks, min_median_ms, max_side_share, side_alpha)
    spec = StudySpec(runs, protocol, names, points, layout, set_size, image_px,
                     image_format.value, allow_tie, exit_, rule, load_consent(consent),
                     tuple(load_questions(questions)), seconds_per_trial)  # fmt: skip
    _echo_json(create_study(spec, out))


@study_app.command()
def invite(
    study: Path = typer.Argument(..., help="the study file"),
    raters: int = typer.Option(None, "--raters", help="how many new lab rater links"),
    public: bool = typer.Option(False, "--public", help="the one join link for a platform"),
    platform: PlatformName = typer.Option(
        None, "--platform", help="link form (default: the study's platform)"
    ),
    base_url: str = typer.Option(
        "http://127.0.0.1:8000", "--base-url", help="the address raters open (with any --root-path)"
    ),
) -> None:
    """Lab: one link per rater (--raters N). Crowd: the join link to paste (--public).

    Each call also prints a fresh admin link; earlier admin links stop working.
    """
    from varbench.study.db import meta, new_admin_token, open_study
    from varbench.study.platforms import PLATFORMS, check_url, join_link
    from varbench.study.raters import invite as invite_

    if public == (raters is not None):
        raise UsageError("invite: give --raters N (lab links) or --public (the platform's "
                         "join link), not both")  # fmt: skip
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--base-url {base_url!r}: expected http(s)://HOST[:PORT][/ROOT]")
    con = open_study(study)
    try:
        out: dict = {}
        if public:
            name = platform.value if platform else json.loads(
                meta(con).get("exit", "{}")).get("platform", "generic")  # fmt: skip
            if name != "generic":  # platforms open the link from their https pages
                check_url("--base-url", base)
            out["join"] = join_link(base, name)
            out["platform"] = name
            spec = PLATFORMS[name]
            out["parameters"] = [spec.id_param, *spec.extra]
            if name == "mturk":
                out["external_question"] = (
                    '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
                    'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
                    f"<ExternalURL>{out['join']}</ExternalURL><FrameHeight>0</FrameHeight>"
                    "</ExternalQuestion>"
                )
        else:
            out["links"] = [f"{base}/r/{t}" for t in invite_(con, raters)]
        con.execute("BEGIN IMMEDIATE")
        out["admin"] = f"{base}/admin/{new_admin_token(con)}"
        con.execute("COMMIT")
    finally:
        con.close()
    _echo_json(out)


@study_app.command()
def serve(
    study: Path = typer.Argument(..., help="the study file"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    slice_timeout: float = typer.Option(
        60.0, "--slice-timeout", help="minutes without a vote before a slice is reclaimed"
    ),
    root_path: str = typer.Option("", "--root-path", help="URL prefix behind a proxy: /study"),
    public_url: str = typer.Option(
        "", "--public-url", help="https://HOST/ROOT raters open (origin check)"
    ),
) -> None:
    """Serve the study to raters until Ctrl-C (votes are saved as they arrive)."""
    setup_logging(False)
    from varbench.study.server import ServeOptions
    from varbench.study.server import serve as serve_

    serve_(study, host, port, ServeOptions(slice_timeout, root_path, public_url))


class ResultFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


@study_app.command()
def results(
    study: Path = typer.Argument(..., help="the study file"),
    fmt: ResultFormat = typer.Option(ResultFormat.table, "--format", "-f"),
    out: Path = typer.Option(None, "--out", "-o", help="folder for votes/raters (csv, parquet)"),
    payments: bool = typer.Option(False, "--payments", help="ids to approve and to reject"),
    side_effect: bool = typer.Option(
        False, "--side-effect", help="Bradley-Terry with a left-side term"
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="two-way bootstrap resamples"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    exclude_failed_checks: bool = typer.Option(False, "--exclude-failed-checks", hidden=True),
) -> None:
    """Preference with intervals, Bradley-Terry, raters and agreement, under the study's rule."""
    from varbench.study.analysis import Options, analyse

    if exclude_failed_checks:
        raise UsageError("--exclude-failed-checks: gone; the study's own rule (--max-failed-"
                         "checks at create, changed with `varbench study rule`) now applies "
                         "everywhere")  # fmt: skip
    if n_boot < 100:
        raise UsageError(f"--n-boot {n_boot}: use at least 100 resamples (default 1000)")
    if payments:
        from varbench.study.export import payments as payments_

        _echo_json(payments_(study))
        return
    if fmt in (ResultFormat.csv, ResultFormat.parquet):
        if out is None:
            raise UsageError(f"--format {fmt.value} needs --out FOLDER (votes.{fmt.value} and "
                             f"raters.{fmt.value} are written there)")  # fmt: skip
        from varbench.study.export import write_tables

        _echo_json(write_tables(study, out, fmt.value))
        return
    setup_logging(False)
    result = analyse(study, Options(n_boot=n_boot, seed=seed, side_effect=side_effect))
    for w in result["warnings"]:
        logging.getLogger(__name__).warning("study results: %s", w)
    if fmt is ResultFormat.json:
        _echo_json(result)
    else:
        from varbench.study.tables import print_tables

        print_tables(result)


@study_app.command()
def rule(
    study: Path = typer.Argument(..., help="the study file"),
    max_failed_checks: int = typer.Option(None, "--max-failed-checks"),
    min_median_ms: int = typer.Option(None, "--min-median-ms"),
    max_side_share: float = typer.Option(None, "--max-side-share"),
    side_alpha: float = typer.Option(None, "--side-alpha"),
) -> None:
    """Show or change the study's one exclusion rule (used by results, leaderboard, report)."""
    from dataclasses import asdict, replace

    from varbench.study.db import meta, open_study, set_meta
    from varbench.study.rules import ExclusionRule

    con = open_study(study)
    try:
        current = ExclusionRule.from_json(meta(con).get("rule"))
        changes = {k: v for k, v in (("max_failed_checks", max_failed_checks),
                                     ("min_median_ms", min_median_ms),
                                     ("max_side_share", max_side_share),
                                     ("side_alpha", side_alpha)) if v is not None}  # fmt: skip
        new = replace(current, **changes).validate()
        if changes:
            con.execute("BEGIN IMMEDIATE")
            set_meta(con, "rule", new.to_json())
            con.execute("COMMIT")
    finally:
        con.close()
    _echo_json({"rule": asdict(new), "changed": sorted(changes)})


@study_app.command()
def revoke(
    study: Path = typer.Argument(..., help="the study file"),
    rater: int = typer.Option(None, "--rater", help="rater id (see `study results`)"),
    external_id: str = typer.Option(None, "--external-id", help="the platform's participant id"),
) -> None:
    """Withdraw one rater's link and release their slice (works while serving)."""
    from varbench.study.db import open_study
    from varbench.study.raters import revoke as revoke_

    con = open_study(study)
    try:
        _echo_json(revoke_(con, rater, external_id))
    finally:
        con.close()


@study_app.command()
def close(
    study: Path = typer.Argument(..., help="the study file"),
    reopen: bool = typer.Option(False, "--reopen", help="open a closed study again"),
) -> None:
    """Close the study: no more joins, pages or votes (works while serving)."""
    from varbench.study.db import open_study
    from varbench.study.raters import set_closed

    con = open_study(study)
    try:
        _echo_json(set_closed(con, not reopen))
    finally:
        con.close()


@study_app.command()
def export(
    study: Path = typer.Argument(..., help="the study file"),
    out: Path = typer.Option(..., "--out", "-o", help="the copy to write"),
    anonymise: bool = typer.Option(False, "--anonymise", help="drop tokens and external ids"),
) -> None:
    """Write a copy of the study to share (with --anonymise: no tokens, no participant ids)."""
    from varbench.study.export import anonymise as anonymise_

    if not anonymise:
        raise UsageError("export: only --anonymise copies are written (a plain copy: cp)")
    _echo_json(anonymise_(study, out))
