"""Data commands: `manifest` (validate a dataset) and `export` (a plan for outside generation)."""

from __future__ import annotations

from pathlib import Path

import typer

from varbench.cli.common import app, echo_json
from varbench.core.progress import setup_logging, stderr_console


@app.command()
def manifest(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: Path = typer.Option(None, "--data", help="dataset root (not needed for demo_1shot)"),
    set_: list[str] = typer.Option(
        [], "--set", help="protocol override KEY=VALUE (n_per_class, k, seed)"
    ),
    output: Path = typer.Option(
        None, "--output", help="write the manifest JSON here (default: stdout)"
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir"),
) -> None:
    """Validate a dataset and print (or write) the protocol's manifest.

    Example: varbench manifest --protocol folder_kshot --data ./my_classes --set n_per_class=5
    """
    setup_logging()
    from varbench.core.env import default_cache_dir
    from varbench.core.options import parse_sets
    from varbench.plan.manifest import build_manifest, write_manifest
    from varbench.plan.planner import load_dataset
    from varbench.plan.protocol import load_protocol

    spec = load_protocol(protocol)
    sets = parse_sets(set_)
    if sets:
        spec = spec.with_overrides(sets)
    cache = Path(cache_dir or default_cache_dir())
    m, _ = build_manifest(spec, load_dataset(spec, data, cache), cache)
    if output:
        write_manifest(output, m)
        stderr_console.print(f"wrote {output} (sha256 {m.sha256})")
    else:
        echo_json(m.to_json())


@app.command()
def export(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: Path = typer.Option(None, "--data", help="dataset root (not needed for the demo)"),
    out: Path = typer.Option(..., "--out", help="folder to write the plan into"),
    set_: list[str] = typer.Option(
        [], "--set", help="protocol override KEY=VALUE (n_per_class, k, seed, ...)"
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir"),
) -> None:
    """Write a protocol's plan (conditioning PNGs, plan.csv/.jsonl, manifest, README) for
    generating its samples outside varbench; score them with `varbench run --model external`.

    Example: varbench export --protocol demo_1shot --out plan
    """
    setup_logging()
    from varbench.core.env import default_cache_dir
    from varbench.core.options import parse_sets
    from varbench.plan.export import export_plan
    from varbench.plan.planner import make_plan
    from varbench.plan.protocol import load_protocol
    from varbench.runner import split_sets

    spec = load_protocol(protocol)
    sets, _, _ = split_sets(parse_sets(set_), {}, "export")
    if sets:
        spec = spec.with_overrides(sets)
    plan = make_plan(spec, data, Path(cache_dir or default_cache_dir()))
    echo_json(export_plan(plan, out))
