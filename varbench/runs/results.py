"""Result rows: a fixed, typed parquet schema with provenance; published rows from ``results/``."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from varbench.core.files import atomic_write_bytes
from varbench.errors import UsageError

log = logging.getLogger(__name__)

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
    "data_source": (pa.string(), "where the images were read: container, path(s), label source (JSON)"),
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


CONTENT_HASH_KEY = b"varbench_content_sha256"  # parquet metadata: sha256 of schema + rows
KEY_COLUMNS = ("model", "protocol", "params")
# What pyarrow raises on damaged bytes (ArrowInvalid is a ValueError, ArrowIOError an OSError).
_UNREADABLE_PARQUET = (OSError, ValueError, pa.ArrowException)


class DamagedResultsError(UsageError):
    """A results file (parquet or per-point result.json) that cannot be read or trusted."""


def _content_sha256(table: pa.Table) -> str:
    """sha256 of a table's column names, types and values (not of its parquet bytes)."""
    body = [[(f.name, str(f.type)) for f in table.schema], table.to_pylist()]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()


def write_results(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows to parquet atomically, with page CRCs and a content hash to detect damage."""
    table = rows_to_table(rows)
    table = table.replace_schema_metadata({CONTENT_HASH_KEY: _content_sha256(table).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_results(path: Path) -> pd.DataFrame:
    """Read one results.parquet; raise DamagedResultsError naming it when it cannot be trusted.

    Checked: the parquet structure, page CRCs (when written), the content hash (files written
    by this varbench; older files have none) and the key columns.
    """
    path = Path(path)
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except _UNREADABLE_PARQUET as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DamagedResultsError(f"{path} is damaged ({type(exc).__name__}: {first})") from exc
    stored = (table.schema.metadata or {}).get(CONTENT_HASH_KEY)
    if stored is not None and stored.decode(errors="replace") != _content_sha256(table):
        raise DamagedResultsError(f"{path} is damaged (its content hash does not match)")
    missing = [c for c in KEY_COLUMNS if c not in table.column_names]
    if missing:
        raise DamagedResultsError(f"{path} is not a varbench results file (no {missing} column)")
    return table.to_pandas()


def point_result_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Result rows of a run's finished points (``points/*/result.json``); damaged ones warned."""
    rows = []
    for path in sorted(Path(run_dir).glob("points/*/result.json")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("%s is damaged (%s); that point is left out", path, type(exc).__name__)
            continue
        if not isinstance(data, dict) or not all(k in data for k in KEY_COLUMNS):
            log.warning("%s is damaged (not a result row); that point is left out", path)
            continue
        rows.append({k: v for k, v in data.items() if not k.startswith("_")})
    return rows


def rows_frame(rows: list[dict[str, Any]], where: Path) -> pd.DataFrame:
    """Rows as a typed frame (schema columns only); a row whose values do not fit is warned."""
    names = set(schema().names)
    tables = []
    for row in rows:
        try:
            tables.append(rows_to_table([{k: v for k, v in row.items() if k in names}]))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            log.warning(
                "%s: a point's result.json does not fit the schema (%s); left out", where, exc
            )
    return pa.concat_tables(tables).to_pandas() if tables else rows_to_table([]).to_pandas()


def read_run_results(path: Path, strict: bool = False) -> pd.DataFrame:
    """A run's results.parquet; when damaged, warn naming it and use the points' result.json.

    With no per-point rows to fall back to, ``strict`` raises the DamagedResultsError (e.g. a
    CI baseline file must not silently read as empty); otherwise the run is skipped with a warning.
    """
    path = Path(path)
    try:
        return read_results(path)
    except DamagedResultsError as exc:
        rows = point_result_rows(path.parent)
        if not rows:
            if strict:
                raise DamagedResultsError(
                    f"{exc}, and there are no per-point result.json files beside it to rebuild it "
                    "from. Restore the file, or re-run the `varbench run` command that wrote it."
                ) from exc
            log.warning(
                "%s and there are no per-point result.json files beside it; skipped. Re-run the "
                "`varbench run` command that wrote it to rewrite it.",
                exc,
            )
            return rows_to_table([]).to_pandas()
        log.warning(
            "%s; using the %d per-point result.json file(s) in %s instead (re-run the same "
            "`varbench run` command to rewrite it)",
            exc,
            len(rows),
            path.parent / "points",
        )
        return rows_frame(rows, path.parent)


def published_results() -> pd.DataFrame:
    """The numbers the papers report (``results/published.parquet``), source in every row."""
    path = Path(str(resources.files("varbench_results").joinpath("published.parquet")))
    if not path.is_file():
        return pd.DataFrame()
    try:
        return read_results(path)
    except DamagedResultsError as exc:
        log.warning("%s; published numbers left out (reinstall varbench)", exc)
        return pd.DataFrame()


def json_field(obj: Any) -> str:
    """Compact JSON for the params/options/extra columns."""
    return json.dumps(obj, sort_keys=True, default=str)
