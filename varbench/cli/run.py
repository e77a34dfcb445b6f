"""`varbench run` and `varbench status`: generate and score, and what a run folder holds."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from varbench.cli.common import (
    DATA_HELP,
    LABELS_HELP,
    app,
    data_source,
    echo_json,
    parse_shard,
    parse_weights,
)
from varbench.core.progress import setup_logging
from varbench.errors import UsageError


@app.command()
def run(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="adapter name (see `varbench list models`), or external: score samples made "
        "elsewhere (--set samples=PATH --set name=NAME; see `varbench export`)",
    ),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol name or .toml path"),
    data: str = typer.Option(None, "--data", help=DATA_HELP),
    labels: Path = typer.Option(None, "--labels", help=LABELS_HELP),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="folder that holds run folders"),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="KEY=VALUE override (adapter, protocol or metric option); lists: guidance=1,4",
    ),
    model_path: str = typer.Option(
        None, "--model-path", help="local weights (diffusers folder or checkpoint)"
    ),
    device: str = typer.Option(
        "auto", "--device", help="cuda, cuda:1, cpu; auto = cuda when available"
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="float32, float16, bfloat16; auto = fp16 on GPU, fp32 on CPU"
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="retired: accepted and ignored (model calls are fixed groups, see --images-per-call)",
    ),
    images_per_call: int = typer.Option(
        None,
        "--images-per-call",
        help="generation group size G (default: the model's, >= 8 for diffusion models); "
        "another G is statistically equivalent, not bit-identical, and is another run",
    ),
    shard: str = typer.Option(
        "0/1",
        "--shard",
        help="INDEX/COUNT: generate only this shard's groups; auto: from SLURM array/srun "
        "variables (under torchrun each rank further takes its share)",
    ),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    cache_dir: Path = typer.Option(
        None,
        "--cache-dir",
        help="feature/validation cache (default $VARBENCH_CACHE or ~/.cache/varbench)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate samples for a model under a protocol, score them, write results.parquet.

    Example: varbench run --model copy --protocol demo_1shot --out runs
    """
    setup_logging(verbose)
    from varbench.core.interrupt import stop_on_signals
    from varbench.core.options import parse_sets
    from varbench.runner import RunConfig
    from varbench.runner import run as run_

    sets = parse_sets(set_)
    source = data_source(data, labels, sets)
    with stop_on_signals():
        rows = _run_config(
            run_,
            RunConfig(
                model=model,
                protocol=protocol,
                out=out,
                data=source,
                sets=sets,
                model_path=model_path,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                images_per_call=images_per_call,
                cache_dir=cache_dir,
                shard=parse_shard(shard),
                weights=parse_weights(weights),
            ),
        )
    if rows is not None:
        echo_json(rows)


def _run_config(run_, cfg):
    """Run; under torchrun only rank 0 prints the rows (the others return None)."""
    import os

    rows = run_(cfg)
    return rows if os.environ.get("RANK", "0") in ("", "0") else None


@app.command()
def status(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run folders"),
    json_: bool = typer.Option(False, "--json", help="JSON instead of the table"),
) -> None:
    """Per run and sweep point: samples done/total, shards finished, scored, lock holders."""
    from varbench.runs.status import render, runs_status

    if not runs.is_dir():
        raise UsageError(f"--runs {runs}: no such folder")
    st = runs_status(runs)
    if json_:
        echo_json(st)
    else:
        sys.stdout.write(render(st) + "\n")
