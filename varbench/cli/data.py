"""Data commands: `manifest` (validate a dataset) and `export` (a plan for outside generation)."""

from __future__ import annotations

from pathlib import Path

import typer

from varbench.cli.common import DATA_HELP, LABELS_HELP, app, data_source, echo_json
from varbench.core.progress import setup_logging, stderr_console


@app.command()
def manifest(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: str = typer.Option(None, "--data", help=DATA_HELP),
    labels: Path = typer.Option(None, "--labels", help=LABELS_HELP),
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
    source = data_source(data, labels, sets)
    if sets:
        spec = spec.with_overrides(sets)
    cache = Path(cache_dir or default_cache_dir())
    listing = load_dataset(spec, source, cache)
    show_listing(listing)
    m, _ = build_manifest(spec, listing, cache)
    if output:
        write_manifest(output, m)
        stderr_console.print(f"wrote {output} (sha256 {m.sha256})")
    else:
        echo_json(m.to_json())


@app.command()
def export(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: str = typer.Option(None, "--data", help=DATA_HELP),
    labels: Path = typer.Option(None, "--labels", help=LABELS_HELP),
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
    raw = parse_sets(set_)
    source = data_source(data, labels, raw)
    sets, _, _ = split_sets(raw, {}, "export")
    if sets:
        spec = spec.with_overrides(sets)
    plan = make_plan(spec, source, Path(cache_dir or default_cache_dir()))
    echo_json(export_plan(plan, out))


def show_listing(listing) -> None:
    """What ``--data`` was found to be, on stderr, before any image is decoded."""
    from rich.table import Table

    counts = sorted(len(v) for v in listing.classes.values())
    origin = dict(listing.origin)
    table = Table(title="dataset found", show_header=False)
    table.add_row("container", str(origin.pop("container", listing.layout)))
    table.add_row("label source", str(origin.pop("label_source", "paths")))
    where = origin.pop("path", None) or origin.pop("shards", None) or str(listing.root)
    if isinstance(where, list):
        where = f"{where[0]} ... ({len(where)} shards)" if len(where) > 1 else where[0]
    table.add_row("read from", str(where))
    table.add_row("classes", str(len(counts)))
    if counts:
        mid = counts[len(counts) // 2]
        table.add_row("images per class", f"min {counts[0]}, median {mid}, max {counts[-1]}")
    table.add_row("images", str(sum(counts)))
    first = next((v[0] for v in listing.classes.values() if v), None)
    if first is not None:  # what selection ranks: compare with another form of the same data
        table.add_row("entry names", f"e.g. {first}")
    for key, value in origin.items():
        if key != "given":
            table.add_row(key, str(value))
    stderr_console.print(table)
