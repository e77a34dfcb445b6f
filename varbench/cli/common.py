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
