"""Scoring without a run: `metrics` on two folders and `stats` for reference statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from varbench.cli.common import Format, app, echo_json, parse_weights
from varbench.core.progress import setup_logging


@app.command()
def metrics(
    real: Path = typer.Option(
        ...,
        "--real",
        help="folder of real images (searched recursively), or a reference file: ADM batch "
        ".npz (arr_0 or mu/sigma), clean-fid .npz, torch-fidelity .pt, `varbench stats` .npz",
    ),
    fake: Path = typer.Option(..., "--fake", help="folder of generated images"),
    metrics_: str = typer.Option(
        "fid,kid,precision_recall",
        "--metrics",
        help="comma-separated metric names or result keys (precision, recall -> precision_recall)",
    ),
    encoder: str = typer.Option("inception", "--encoder", help="feature space of the metrics"),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    set_: list[str] = typer.Option(
        [], "--set", help="metric option KEY=VALUE, e.g. kid_subset_size=50"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1"),
    prepare: str = typer.Option(
        None,
        "--prepare",
        help="preparation of both folders' images, e.g. adm_center_crop (default: none)",
    ),
    resolution: int = typer.Option(
        None, "--resolution", help="target size of --prepare (e.g. 512)"
    ),
    fmt: Format = typer.Option(Format.json, "--format", "-f", help="json (default) or table"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score two image folders with registered metrics (like torch-fidelity's `fidelity`).

    Example: varbench metrics --real refs/ --fake samples/ --metrics fid,kid,precision,recall
    """
    setup_logging(verbose)
    from varbench.core.options import parse_sets
    from varbench.score.folders import score_folders

    values = score_folders(
        real,
        fake,
        [m.strip() for m in metrics_.split(",") if m.strip()],
        encoder=encoder,
        weights=parse_weights(weights),
        sets=parse_sets(set_),
        device=device,
        cache_dir=cache_dir,
        prepare=prepare,
        resolution=resolution,
    )
    if fmt == Format.json:
        echo_json(values)
    else:
        sys.stdout.write("".join(f"{k}\t{v}\n" for k, v in values.items()))


@app.command()
def stats(
    real: Path = typer.Option(..., "--real", help="folder of reference images (recursive)"),
    out: Path = typer.Option(..., "--out", "-o", help="statistics file to write (.npz)"),
    encoder: str = typer.Option("inception", "--encoder", help="feature space of the statistics"),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1"),
    prepare: str = typer.Option(
        None, "--prepare", help="preparation of the images, e.g. adm_center_crop (default: none)"
    ),
    resolution: int = typer.Option(
        None, "--resolution", help="target size of --prepare (e.g. 512)"
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write reference statistics (mu, sigma in the ADM layout, with varbench's provenance).

    Example: varbench stats --real refs/ --out refs.npz && varbench metrics --real refs.npz --fake samples/ --metrics fid
    """
    setup_logging(verbose)
    from varbench.score.statsfile import reference_statistics, write_stats

    mu, sigma, meta = reference_statistics(
        real, encoder, parse_weights(weights), device, cache_dir, prepare, resolution
    )
    path = write_stats(out, mu, sigma, meta)
    echo_json({"stats": str(path), **{k: meta[k] for k in ("encoder", "encoder_key",
                "prepare_label", "n_images", "dim")}})  # fmt: skip
