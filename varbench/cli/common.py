"""What every command module shares: the typer app, output formats, flag parsers, JSON output."""

from __future__ import annotations

import json
import sys
from enum import Enum

import typer

from varbench.errors import UsageError

app = typer.Typer(
    help="varbench: reproducible few-shot evaluation of image-variation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(
                f"--weights {item!r}: expected NAME=PATH (e.g. inception=/w/pt_inception.pth)"
            )
        out[name.strip()] = path.strip()
    return out


def parse_shard(text: str) -> tuple[int, int]:
    if text.strip() == "auto":
        from varbench.core.cluster import shard_from_slurm

        return shard_from_slurm()
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected INDEX/COUNT (e.g. 0/4) or auto") from None
    return i, n


def echo_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


DATA_HELP = (
    "the dataset as you have it: class folders, a flat folder or .tar with --labels, a .tar.gz, "
    "parquet shards (file, folder or glob), WebDataset shards (shard-{0000..0063}.tar or a "
    "folder), or LSUN's LMDB; not needed for the demo (README: 'Where your ImageNet is')"
)
LABELS_HELP = (
    "label file for a flat image set: ILSVRC2012_devkit_t12.tar.gz (or its ground-truth file "
    "with meta.mat beside it), Kaggle's LOC_val_solution.csv, or a CSV of file,class; found "
    "automatically when it sits beside the images"
)


def data_source(data, labels, sets: dict[str, str]):
    """``--data``/``--labels`` and the ``data_*`` keys popped from ``--set`` as one DataSource."""
    from varbench.plan.layouts.base import DATA_OPTIONS, DataSource

    typed = {p.name: p.parse(sets.pop(p.name)) for p in DATA_OPTIONS if p.name in sets}
    if data is None:
        if labels is not None or typed:
            raise UsageError("--labels and --set data_*=... describe --data: give --data too")
        return None
    return DataSource.with_options(data, str(labels) if labels is not None else None, typed)
