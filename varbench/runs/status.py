"""`varbench status`: per run and sweep point, samples done/total, shards, scoring, lock holders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varbench.core.locks import DEFAULT_STALE_AFTER, is_stale, list_locks


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _total_from_manifest(run_dir: Path, info: dict[str, Any]) -> int | None:
    """Samples per point of runs written before run.json recorded it."""
    manifest = _json(run_dir / "manifest.json")
    proto = info.get("protocol") or {}
    try:
        n_cond = sum(len(c["conditioning"]) for c in manifest["classes"])
        return n_cond * (int(proto["n_per_class"]) // int(proto["k"]))
    except (TypeError, KeyError, ValueError, ZeroDivisionError):
        return None


def point_status(run_dir: Path, pid: str, total: int | None) -> dict[str, Any]:
    """One sweep point's progress as plain values."""
    pdir = run_dir / "points" / pid
    done = sum(1 for _ in (pdir / "samples").rglob("*.png")) if (pdir / "samples").is_dir() else 0
    shards = sorted(p.stem.replace("of", "/") for p in (pdir / "shards").glob("*of*.json"))
    result = _json(pdir / "result.json")
    holders = []
    for path, holder in list_locks(pdir / "locks") if (pdir / "locks").is_dir() else []:
        holders.append(
            {
                "lock": path.stem,
                "host": holder.get("host", "?"),
                "pid": holder.get("pid", "?"),
                "heartbeat_age_s": round(float(holder.get("heartbeat_age", 0.0)), 1),
                "stale": is_stale(holder, DEFAULT_STALE_AFTER),
            }
        )
    return {
        "point": pid,
        "samples": f"{done}/{total if total is not None else '?'}",
        "samples_done": done,
        "samples_total": total,
        "shards_finished": shards,
        "scored": isinstance(result, dict) and "_config_key" in result,
        "locks": holders,
    }


def runs_status(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run folder under ``runs_dir`` (recursively) with its points' status."""
    out = []
    for run_json in sorted(Path(runs_dir).rglob("run.json")):
        run_dir = run_json.parent
        info = _json(run_json)
        if not isinstance(info, dict):
            out.append({"run_id": run_dir.name, "problem": f"damaged {run_json}", "points": []})
            continue
        total = info.get("samples_per_point") or _total_from_manifest(run_dir, info)
        pids = info.get("points")
        if not pids:  # runs written before run.json listed its points
            pdir = run_dir / "points"
            pids = sorted(p.name for p in pdir.iterdir() if p.is_dir()) if pdir.is_dir() else []
        out.append(
            {
                "run_id": run_dir.name,
                "model": info.get("model"),
                "protocol": info.get("protocol_label") or (info.get("protocol") or {}).get("name"),
                "results": (run_dir / "results.parquet").is_file(),
                "points": [point_status(run_dir, pid, total) for pid in pids],
            }
        )
    return out


def render(status: list[dict[str, Any]]) -> str:
    """Plain-text table, one line per point; lock holders named."""
    lines = []
    for run in status:
        head = f"{run['run_id']}  ({run.get('model')}, {run.get('protocol')})"
        if run.get("problem"):
            head += f"  PROBLEM: {run['problem']}"
        elif run.get("results"):
            head += "  results.parquet written"
        lines.append(head)
        for p in run["points"]:
            locks = ", ".join(
                f"{h['lock']} held by {h['host']} pid {h['pid']}"
                + (" (stale)" if h["stale"] else f" (heartbeat {h['heartbeat_age_s']:.0f} s ago)")
                for h in p["locks"]
            )
            lines.append(
                f"  {p['point']:<32} samples {p['samples']:>13}  "
                f"shards done: {', '.join(p['shards_finished']) or '-':<12} "
                f"scored: {'yes' if p['scored'] else 'no':<3}"
                + (f"  locks: {locks}" if locks else "")
            )
    return "\n".join(lines) if lines else "no runs found"
