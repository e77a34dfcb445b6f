"""Result rows: a fixed, typed parquet schema with provenance; published rows from ``results/``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from varbench import __version__
from varbench.io import atomic_write_bytes

# Core columns (type, description). Metric columns are added from the metric registry's keys.
CORE_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "run_id": (
        pa.string(),
        "run folder name: model-protocol-hash of (model, options, protocol, manifest)",
    ),
    "model": (pa.string(), "adapter name"),
    "protocol": (pa.string(), "protocol name, with any --set overrides in brackets"),
    "protocol_version": (pa.int64(), "version of the protocol spec"),
    "params": (pa.string(), 'sweep point as JSON, e.g. {"guidance": 4.0}'),
    "options": (pa.string(), "the adapter's other options as JSON"),
    "guidance_convention": (pa.string(), "sd (g=1 unguided) | one_plus_w (w=0 unguided) | none"),
    "encoder": (pa.string(), "feature space of fid/kid/precision/recall"),
    "prepare": (
        pa.string(),
        "preparation of every scored image, name/version@resolution (e.g. adm_center_crop/v1@512)",
    ),
    "n_samples": (pa.int64(), "generated samples scored"),
    "n_real": (pa.int64(), "reference images scored"),
    "n_classes": (pa.int64(), "classes in the manifest"),
    "n_black": (pa.int64(), "samples whose pixels are all zero (e.g. safety-checker output)"),
    "n_nan": (pa.int64(), "samples the model returned with NaN values"),
    "source": (pa.string(), "'varbench' for measured rows; the paper for published ones"),
    "seed": (pa.int64(), "protocol seed"),
    "manifest_sha256": (pa.string(), "hash of the exact reference/conditioning files"),
    "device": (pa.string(), "device the samples were generated on"),
    "dtype": (pa.string(), "model dtype"),
    "wall_time_s": (pa.float64(), "generation wall time (summed across resumes)"),
    "images_per_s": (pa.float64(), "generated images per second"),
    "varbench_version": (pa.string(), "varbench version"),
    "git_sha": (pa.string(), "git commit of varbench, when run from a checkout"),
    "python_version": (pa.string(), "Python version"),
    "torch_version": (pa.string(), "torch version"),
    "diffusers_version": (pa.string(), "diffusers version"),
    "transformers_version": (pa.string(), "transformers version (CLIP image/text encoders)"),
    "torch_fidelity_version": (pa.string(), "torch-fidelity version (Inception network)"),
    "numpy_version": (pa.string(), "numpy version"),
    "platform": (pa.string(), "OS and machine"),
    "created_at": (pa.string(), "UTC time the row was computed (ISO 8601)"),
    "images_per_call": (
        pa.int64(),
        "generation group size G: samples per model call (changing it is statistically equivalent, not bit-identical)",
    ),
    "generation_warnings": (
        pa.int64(),
        "events that made generation differ from a normal run (e.g. out-of-memory back-off; see notes)",
    ),
    "interval_method": (
        pa.string(),
        "how fid/precision/recall _lo/_hi were computed (class_half_sampling | image_half_sampling)",
    ),
    "model_path": (pa.string(), "--model-path, if given"),
    "extra": (pa.string(), "adapter provenance as JSON (e.g. safety checker off)"),
    "notes": (pa.string(), "free text (published rows: table/figure and setting)"),
}


def metric_columns() -> dict[str, str]:
    """Result keys of every registered metric (float64 columns), in registry order."""
    from varbench.metrics import metric_registry

    cols: dict[str, str] = {}
    for name in metric_registry.names():
        for key in metric_registry.get(name).keys:
            cols[key] = name
    return cols


def schema() -> pa.Schema:
    """The results.parquet schema: core columns then one float64 column per metric key."""
    fields = [pa.field(n, t) for n, (t, _) in CORE_COLUMNS.items()]
    fields += [pa.field(k, pa.float64()) for k in metric_columns()]
    return pa.schema(fields)


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Typed table; missing columns become nulls, unknown keys are an error."""
    rows = list(rows)
    sch = schema()
    unknown = {k for r in rows for k in r} - set(sch.names)
    if unknown:
        raise KeyError(f"result keys not in the schema: {sorted(unknown)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in sch.names} for r in rows], schema=sch)


def write_results(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows to parquet atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(rows_to_table(rows), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_results(path: Path) -> pd.DataFrame:
    """Read one results.parquet."""
    return pq.read_table(path).to_pandas()


def published_results() -> pd.DataFrame:
    """The numbers the papers report (``results/published.parquet``), source in every row."""
    path = Path(str(resources.files("varbench_results").joinpath("published.parquet")))
    return pq.read_table(path).to_pandas() if path.is_file() else pd.DataFrame()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def git_sha() -> str:
    """Commit of the varbench checkout, or '' when installed from a wheel."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return ""
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip() if out.returncode == 0 else ""
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty and sha else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict[str, str]:
    """Versions and platform recorded with every row."""
    import numpy

    return {
        "varbench_version": __version__,
        "git_sha": git_sha(),
        "python_version": platform.python_version(),
        "torch_version": _version("torch"),
        "diffusers_version": _version("diffusers"),
        "transformers_version": _version("transformers"),
        "torch_fidelity_version": _version("torch-fidelity"),
        "numpy_version": numpy.__version__,
        "platform": f"{platform.system()}-{platform.machine()}",
    }


def json_field(obj: Any) -> str:
    """Compact JSON for the params/options/extra columns."""
    return json.dumps(obj, sort_keys=True, default=str)


def default_cache_dir() -> Path:
    """``$VARBENCH_CACHE`` or ``~/.cache/varbench`` (never inside the package)."""
    return Path(os.environ.get("VARBENCH_CACHE", Path.home() / ".cache" / "varbench")).expanduser()
