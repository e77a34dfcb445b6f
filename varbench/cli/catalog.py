"""What is registered and shipped: `list`, `validate` (protocol files) and `fetch` (weights)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from varbench.cli.common import app, echo_json
from varbench.core.progress import setup_logging


class ListWhat(str, Enum):
    models = "models"
    protocols = "protocols"
    metrics = "metrics"
    encoders = "encoders"


@app.command("list")
def list_(
    what: ListWhat = typer.Argument(..., help="models | protocols | metrics | encoders"),
) -> None:
    """List registered models, protocols, metrics or encoders (JSON on stdout).

    Example: varbench list models
    """
    if what == ListWhat.models:
        from varbench.adapter import adapter_registry, get_adapter_class

        out = []
        for name in adapter_registry.names():
            try:
                cls = get_adapter_class(name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            defaults = cls.default_options()
            out.append(
                {
                    "name": name,
                    "description": cls.description,
                    "guidance_convention": cls.guidance_convention,
                    "hub_ids": list(cls.hub_ids),
                    "default_sweep": {a: list(defaults[a]) for a in cls.sweep_axes()},
                    "params": {p.name: p.default for p in cls.params if not p.sweep},
                }
            )
        out.append(
            {
                "name": "external",
                "description": "samples made outside varbench (folder or ADM .npz per sweep "
                "point), scored under the same protocol; see `varbench export`",
                "params": {"samples": "PATH (required)", "name": "NAME (required)"},
            }
        )
    elif what == ListWhat.protocols:
        from varbench.plan.protocol import load_protocol_file, protocol_files

        out = []
        for name, path in protocol_files().items():
            s = load_protocol_file(path)
            out.append(
                {
                    "name": name,
                    "version": s.version,
                    "description": s.description,
                    "layout": s.layout,
                    "full_set": s.full_set,
                    "n_classes": s.n_classes,
                    "n_per_class": s.n_per_class,
                    "k": s.k,
                    "samples_per_cond": s.samples_per_cond,
                    "resolution": s.resolution,
                    "encoder": s.encoder,
                    "prepare": s.image_prep.label,
                    "metrics": list(s.metrics),
                    "example": s.example,
                }
            )
    elif what == ListWhat.metrics:
        from varbench.metrics import metric_registry
        from varbench.metrics.keys import has_interval

        out = [
            {
                "name": n,
                "keys": list(metric_registry.get(n).keys),
                "results": [
                    {
                        "key": k.name,
                        "better": {1: "higher", -1: "lower"}.get(k.better, "neither"),
                        "label": k.label,
                        "unit": k.unit,
                        "interval": has_interval(k.name),
                    }
                    for k in metric_registry.get(n).results
                ],  # fmt: skip
                "encoders": list(metric_registry.get(n).encoders),
            }
            for n in metric_registry.names()
        ]
    else:
        from varbench.encoders import encoder_registry

        out = [
            {"name": n, "resize_mode": encoder_registry.get(n).resize_mode}
            for n in encoder_registry.names()
        ]
    echo_json(out)


@app.command()
def validate(
    paths: list[Path] = typer.Argument(None, help="protocol .toml files (default: all shipped)"),
) -> None:
    """Validate protocol spec files.

    Example: varbench validate protocols/my_protocol.toml
    """
    from varbench.plan.protocol import load_protocol_file, protocol_files

    files = paths or list(protocol_files().values())
    for p in files:
        load_protocol_file(p)
    echo_json({"valid": [str(p) for p in files]})


@app.command()
def fetch(
    protocol: str = typer.Option(
        None, "--protocol", "-p", help="fetch every encoder this protocol's metrics use"
    ),
    encoders: str = typer.Option(None, "--encoders", help="comma-separated encoder names"),
    model: str = typer.Option(None, "--model", "-m", help="also fetch this adapter's weights"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Download weights into the torch hub / Hugging Face caches so compute nodes can run offline.

    Example: varbench fetch --protocol imagenet_1shot --model ip_adapter
    """
    setup_logging(verbose)
    from varbench.generate.fetching import fetch as fetch_

    names = [e.strip() for e in encoders.split(",") if e.strip()] if encoders else []
    echo_json(fetch_(names, protocol, model))
