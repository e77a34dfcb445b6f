"""Read finished run folders (rows, manifest, per-point index and artifacts) for reports and plots.

Tolerant by design: a run written by an older or newer varbench may lack a column, an artifact
or its source images; readers get ``None``/empty values and the report says what is missing.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from varbench.core.env import default_cache_dir
from varbench.core.files import keep_bytes
from varbench.errors import UsageError
from varbench.plan.planner import listing_of_run, reads_container
from varbench.plan.protocol import protocol_of_run
from varbench.plan.slots import point_id
from varbench.runs.results import point_result_rows, read_run_results

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finite(value: Any) -> float | None:
    """A float, or None for missing/NaN/non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_params(text: Any) -> dict[str, Any]:
    """The ``params`` column (JSON) as a dict; anything unparsable becomes ``{}``."""
    if isinstance(text, dict):
        return text
    try:
        out = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


@dataclass
class PointView:
    """One sweep point of a run: its row, sample index and lazily read artifacts."""

    run: RunView
    pid: str
    row: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.run.folder / "points" / self.pid

    @property
    def params(self) -> dict[str, Any]:
        return parse_params(self.row.get("params"))

    @cached_property
    def index(self) -> list[dict[str, Any]]:
        """``index.json``: one entry per sample in canonical order (file, class, cond, seed)."""
        data = _read_json(self.folder / "index.json")
        return data if isinstance(data, list) else []

    def artifact(self, metric: str) -> dict[str, Any] | None:
        """``artifacts/<metric>.json`` or None."""
        data = _read_json(self.folder / "artifacts" / f"{metric}.json")
        return data if isinstance(data, dict) else None

    def sample_path(self, entry: dict[str, Any]) -> Path:
        return self.folder / str(entry.get("file", ""))


@dataclass
class RunView:
    """One ``<runs>/<run_id>/`` folder."""

    folder: Path
    info: dict[str, Any]
    rows: list[dict[str, Any]]
    points: list[PointView] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.folder.name

    @property
    def model(self) -> str:
        return str(self.info.get("model") or (self.rows[0].get("model") if self.rows else "?"))

    @property
    def protocol(self) -> str:
        if self.rows and self.rows[0].get("protocol"):
            return str(self.rows[0]["protocol"])
        return str(self.info.get("protocol_label") or "?")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        data = _read_json(self.folder / "manifest.json")
        return data if isinstance(data, dict) else {}

    @cached_property
    def data_root(self) -> Path | None:
        root = self.info.get("data_root") or self.manifest.get("root")
        return Path(root) if root else None

    @cached_property
    def file_of_hash(self) -> dict[str, str]:
        """Pixel hash -> dataset-relative file (manifest ``pixel_sha256`` inverted)."""
        table = self.manifest.get("pixel_sha256") or {}
        return {h: f for f, h in table.items()}

    @cached_property
    def class_label_of(self) -> dict[str, str]:
        """Class folder name -> display label."""
        return {
            str(c.get("name")): str(c.get("label", c.get("name")))
            for c in self.manifest.get("classes", [])
        }

    def data_path(self, rel: str | None) -> Path | None:
        """Absolute path of a dataset file, or None when the data is not on this machine.

        An entry of a container (tar, parquet, WebDataset) is copied once into the cache
        (content-addressed), so reports and studies show it like any file."""
        if not rel or self.data_root is None:
            return None
        path = self.data_root / rel
        if path.is_file():
            return path
        return self._container_entry(rel)

    @cached_property
    def _container_listing(self):
        """The run's container listed again from run.json's ``data_origin`` (None: folders)."""
        if not reads_container(self.info):
            return None
        try:
            spec = protocol_of_run(self.info, str(self.folder / "run.json"), "")
            return listing_of_run(self.info, spec, str(self.data_root), default_cache_dir())
        except Exception as exc:  # noqa: BLE001 - the data is elsewhere: show no image, say why
            log.warning(
                "%s: cannot open its data %s (%s)",
                self.folder.name,
                self.info.get("data_origin"),
                exc,
            )
            return None

    def _container_entry(self, rel: str) -> Path | None:
        listing = self._container_listing
        if listing is None or rel not in listing.files:
            return None
        src = listing.files[rel]
        if isinstance(src, Path):
            return src if src.is_file() else None
        try:
            data = src.read()
        except OSError as exc:
            log.warning("%s: %s", src, exc)
            return None
        return keep_bytes(default_cache_dir() / "entries", data, Path(rel).suffix)


def _rows_of(folder: Path) -> list[dict[str, Any]]:
    """results.parquet rows, or the finished points' result.json when it is absent or damaged."""
    parquet = folder / "results.parquet"
    if parquet.is_file():
        return read_run_results(parquet).to_dict("records")
    return point_result_rows(folder)


def _matches(protocol: str, wanted: list[str] | None) -> bool:
    if not wanted:
        return True
    base = protocol.split("[", 1)[0]
    return protocol in wanted or base in wanted


def only_run(runs: list[RunView], model: str, protocol: str, runs_dir: Path) -> RunView:
    """The one run of ``model`` among ``runs`` (of ``protocol``, under ``runs_dir``).

    None or several is a usage error naming ``--models`` and what to do (``--runs`` must point
    at a folder holding one run per model)."""
    found = [r for r in runs if r.model == model]
    if not found:
        have = sorted({r.model for r in runs})
        raise UsageError(
            f"--models {model}: no finished run of it on protocol {protocol} under {runs_dir} "
            f"(found: {', '.join(have) or 'none'}); run `varbench run --model {model} "
            f"--protocol {protocol} --out {runs_dir}` first"
        )
    if len(found) > 1:
        folders = ", ".join(str(r.folder) for r in found)
        raise UsageError(
            f"--models {model}: {len(found)} runs on {protocol} ({folders}); point --runs at a "
            "folder holding one run per model"
        )
    return found[0]


def load_runs(runs_dir: Path, protocols: list[str] | None = None) -> list[RunView]:
    """Every run folder under ``runs_dir`` (recursively: a folder holding run.json)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UsageError(
            f"--runs {runs_dir}: no such folder (where `varbench run --out` wrote runs)"
        )
    out = []
    for run_json in sorted(runs_dir.rglob("run.json")):
        folder = run_json.parent
        info = _read_json(run_json) or {}
        rows = _rows_of(folder)
        if not rows:
            log.info("%s: no finished sweep point yet, skipped", folder)
            continue
        run = RunView(folder=folder, info=info, rows=rows)
        if not _matches(run.protocol, protocols):
            continue
        run.points = [PointView(run, point_id(parse_params(r.get("params"))), r) for r in rows]
        out.append(run)
    return out


def measured_frame(runs: list[RunView]) -> pd.DataFrame:
    """All rows of ``runs`` as one table."""
    return pd.DataFrame([r for run in runs for r in run.rows])


@dataclass(frozen=True)
class GridRow:
    """One class of a sample grid: its conditioning image and the first samples made from it."""

    class_name: str
    class_label: str
    cond: str  # dataset-relative conditioning file
    samples: list[dict[str, Any]]


def grid_rows(point: PointView, n_classes: int, n_samples: int, seed: int = 0) -> list[GridRow]:
    """A seeded choice of ``n_classes`` classes (same choice for every point of a run)."""
    import numpy as np

    by_cond: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in point.index:
        key = (str(entry.get("class", "")), str(entry.get("cond", "")))
        by_cond.setdefault(key, []).append(entry)
    keys = sorted(by_cond)
    classes = sorted({c for c, _ in keys})
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(len(classes))[:n_classes].tolist())
    picked = [classes[i] for i in sorted(chosen)]
    rows = []
    for cls in picked:
        cond_keys = [k for k in keys if k[0] == cls][:1]  # first conditioning image of the class
        for key in cond_keys:
            rows.append(
                GridRow(
                    class_name=cls,
                    class_label=point.run.class_label_of.get(cls, cls),
                    cond=key[1],
                    samples=by_cond[key][:n_samples],
                )
            )
    return rows


@dataclass(frozen=True)
class ClosePair:
    """A sample and its nearest reference under the memorisation distance."""

    sample: dict[str, Any]
    distance: float
    reference: str | None  # dataset-relative file of the reference, when known


def closest_pairs(point: PointView, n: int) -> list[ClosePair]:
    """The ``n`` samples with the smallest nearest-neighbour distance (memorisation artifact)."""
    art = point.artifact("memorisation")
    if not art or not isinstance(art.get("samples_nn"), list):
        return []
    dists = art["samples_nn"]
    refs = art.get("samples_nn_reference") or [None] * len(dists)
    index = point.index
    order = sorted(
        (i for i, d in enumerate(dists) if finite(d) is not None and i < len(index)),
        key=lambda i: (float(dists[i]), i),
    )
    out = []
    for i in order[:n]:
        ref_hash = refs[i] if i < len(refs) else None
        out.append(ClosePair(index[i], float(dists[i]), point.run.file_of_hash.get(ref_hash or "")))
    return out
