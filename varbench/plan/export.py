"""`varbench export`: the plan of a protocol, for whoever generates samples outside varbench.

Writes the conditioning images exactly as the generation room decodes them (lossless PNG), one
line per sample slot (CSV and JSON Lines), the manifest and a README. Everything is a function
of the plan, so an export and a `varbench run` of the same protocol name the same samples.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from varbench.core.files import atomic_write_bytes, atomic_write_png, atomic_write_text, read_rgb
from varbench.core.progress import progress_bar
from varbench.plan.manifest import write_manifest
from varbench.plan.planner import RunPlan

PLAN_COLUMNS = (
    "index",
    "file",
    "class_index",
    "class_name",
    "class_label",
    "cond_id",
    "cond_file",
    "cond_rank",
    "sample_index",
    "seed",
    "resolution",
)


def cond_file(cond_id: str) -> str:
    """Export path of a conditioning image: its root-relative name plus ``.png`` (never collides)."""
    return f"conditioning/{cond_id}.png"


def plan_rows(plan: RunPlan) -> list[dict[str, Any]]:
    """One row per sample slot, in plan order (the order of an ``.npz``'s ``arr_0``)."""
    return [
        {
            "index": i,
            "file": s.relpath,
            "class_index": s.class_index,
            "class_name": s.class_name,
            "class_label": s.class_label,
            "cond_id": s.cond_id,
            "cond_file": cond_file(s.cond_id),
            "cond_rank": s.cond_rank,
            "sample_index": s.sample_index,
            "seed": s.seed,
            "resolution": plan.spec.resolution,
        }
        for i, s in enumerate(plan.slots)
    ]


def _readme(plan: RunPlan, n_cond: int) -> str:
    spec, n = plan.spec, len(plan.slots)
    return f"""varbench plan: {spec.label} (protocol version {spec.version}, seed {spec.seed})
manifest sha256: {plan.manifest.sha256}

Generate {n} samples: {spec.samples_per_cond} for each of the {n_cond} conditioning images in
conditioning/ (lossless PNGs, exactly the pixels varbench gives its own models).
plan.csv and plan.jsonl hold one line per sample:
  file          where the sample goes, e.g. 00000/c00_s0000.png (any image format with that
                name stem is accepted; PNG keeps it lossless)
  cond_file     the conditioning image to vary
  class_label   the class name (for models that take a text prompt)
  seed          a per-sample seed you may use for your own noise (optional)
  resolution    the protocol resolution ({spec.resolution} px); any size is accepted and prepared
                like every sample ({spec.image_prep.label})

Hand the samples back in one of these layouts:
  SAMPLES/00000/c00_s0000.png ...         a folder laid out as `file` names them
  SAMPLES.npz                              arr_0: uint8 array {n} x H x W x 3, rows in plan order
  SAMPLES/guidance-4/00000/c00_s0000.png   one folder (or guidance-4.npz) per sweep point
Samples must be 8-bit RGB; every sample of the plan must be there, and nothing else.

Score them (the same --data and --set as this export):
  varbench run --model external --protocol {spec.name} --data DATA --set samples=SAMPLES --set name=YOUR_MODEL
"""


def export_plan(plan: RunPlan, out: Path) -> dict[str, Any]:
    """Write the plan's files under ``out``; returns a summary (JSON-ready)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    conds = [f for _, f in plan.conditioning]
    with progress_bar("exporting conditioning images", len(conds)) as advance:
        for cond_id in conds:
            atomic_write_png(out / cond_file(cond_id), read_rgb(plan.listing.path(cond_id)))
            advance(1)
    rows = plan_rows(plan)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PLAN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "plan.csv", buf.getvalue())
    atomic_write_bytes(
        out / "plan.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    )
    write_manifest(out / "manifest.json", plan.manifest)
    atomic_write_text(out / "README.txt", _readme(plan, len(conds)))
    return {
        "out": str(out),
        "protocol": plan.spec.label,
        "manifest_sha256": plan.manifest.sha256,
        "conditioning_images": len(conds),
        "samples": len(rows),
    }


__all__ = ["export_plan", "plan_rows", "cond_file", "PLAN_COLUMNS"]
