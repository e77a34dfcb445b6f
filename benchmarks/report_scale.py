"""Scale of `varbench report`: a run of 10,000 samples x 8 sweep points (issue bar: < 60 s on
2 CPU cores, < 25 MB).

Synthesises a runs folder shaped like a real ImageNet 1-shot sweep: 1000 classes x 10 samples
per point, a manifest with 10,000 hashed references, ``index.json`` per point, typed
``results.parquet`` rows with intervals, and per-point artifacts (per-class precision/recall of
1000 classes, memorisation distances of every sample and 10,000 held-out distances, alignment
per sample). Sample and reference PNGs are 64x64 and hard links to a pool of distinct images
(every file exists; the report reads only those it shows). Then times the real CLI,
``varbench report``, end to end in a fresh process, and prints the median and spread.

    python benchmarks/report_scale.py [--classes 1000] [--per-class 10] [--points 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _pool(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        path = folder / f"{i}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def synthesise(root: Path, n_classes: int, per_class: int, n_points: int) -> Path:
    """A runs folder with one run of ``n_points`` points x ``n_classes * per_class`` samples."""
    from varbench.runs.results import write_results

    rng = np.random.default_rng(0)
    pool = _pool(root / "pool", 64, rng)
    data = root / "data"
    classes, pixel = [], {}
    for c in range(n_classes):
        name = f"n{c:08d}"
        (data / name).mkdir(parents=True)
        refs = []
        for i in range(per_class):
            rel = f"{name}/{i:03d}.png"
            os.link(pool[(c * 7 + i) % len(pool)], data / rel)
            pixel[rel] = hashlib.sha256(rel.encode()).hexdigest()
            refs.append(rel)
        classes.append({"name": name, "label": f"class {c} <{c}>", "index": c,
                        "references": refs, "conditioning": refs[:1], "heldout": []})  # fmt: skip
    run = root / "runs" / "sd_iv-imagenet_1shot-000000000000"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(
        {"classes": classes, "pixel_sha256": pixel, "root": str(data), "sha256": "0" * 64,
         "format": 1, "protocol": {}}))  # fmt: skip
    (run / "run.json").write_text(json.dumps(
        {"run_id": run.name, "model": "sd_iv", "protocol_label": "imagenet_1shot",
         "data_root": str(data)}))  # fmt: skip
    n = n_classes * per_class
    rows = []
    hashes = list(pixel.values())
    for p in range(n_points):
        g = 1.0 + p
        pid = f"guidance-{g}"
        point = run / "points" / pid
        index = []
        for c in range(n_classes):
            d = point / "samples" / f"{c:05d}"
            d.mkdir(parents=True)
            for s in range(per_class):
                os.link(pool[(c + s + p) % len(pool)], d / f"c00_s{s:04d}.png")
                index.append({"file": f"samples/{c:05d}/c00_s{s:04d}.png", "class": f"n{c:08d}",
                              "cond": classes[c]["conditioning"][0], "sample_index": s,
                              "seed": int(rng.integers(2**62))})  # fmt: skip
        (point / "index.json").write_text(json.dumps(index, indent=2))
        art = point / "artifacts"
        art.mkdir()
        nn = rng.gamma(4.0, 0.1, n)
        held = rng.gamma(5.0, 0.1, n)
        edges = np.linspace(0, 1.5, 61)
        (art / "memorisation.json").write_text(json.dumps({
            "encoder": "lpips", "bin_edges": edges.tolist(),
            "samples_hist": np.histogram(nn, edges)[0].tolist(),
            "heldout_hist": np.histogram(held, edges)[0].tolist(),
            "samples_nn": nn.tolist(), "samples_nn_reference": [hashes[i] for i in rng.integers(0, n, n)],
            "heldout_nn": held.tolist()}, indent=2))  # fmt: skip
        (art / "precision_recall.json").write_text(json.dumps({"k": 3, "per_class": {
            "class_index": list(range(n_classes)),
            "class_label": [c["label"] for c in classes],
            "n_fake": [per_class] * n_classes, "n_real": [per_class] * n_classes,
            "precision": rng.random(n_classes).tolist(), "recall": rng.random(n_classes).tolist()}},
            indent=2))  # fmt: skip
        (art / "alignment.json").write_text(json.dumps({"per_sample": rng.random(n).tolist()}))
        fid = 30 + (g - 4) ** 2
        rows.append({"run_id": run.name, "model": "sd_iv", "protocol": "imagenet_1shot",
                     "params": json.dumps({"guidance": g}), "source": "varbench", "n_samples": n,
                     "fid": fid, "fid_lo": fid - 1, "fid_hi": fid + 1, "kid": 0.01,
                     "precision": 0.6, "precision_lo": 0.58, "precision_hi": 0.62,
                     "recall": 0.5 - 0.03 * p, "recall_lo": 0.47 - 0.03 * p,
                     "recall_hi": 0.53 - 0.03 * p, "device": "cuda", "wall_time_s": 3600.0})  # fmt: skip
    write_results(run / "results.parquet", rows)
    return root / "runs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="varbench-report-scale-") as tmp:
        t0 = time.perf_counter()
        runs = synthesise(Path(tmp), args.classes, args.per_class, args.points)
        made = time.perf_counter() - t0
        times, sizes = [], []
        for i in range(args.repeats):
            out = Path(tmp) / f"report{i}.html"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "varbench.cli", "report", "--runs", str(runs),
                            "--out", str(out)], check=True, capture_output=True)  # fmt: skip
            times.append(time.perf_counter() - t0)
            sizes.append(out.stat().st_size)
        n = args.classes * args.per_class
        result = {
            "samples_per_point": n,
            "points": args.points,
            "synthesise_s": round(made, 1),
            "report_s_median": round(statistics.median(times), 2),
            "report_s_min": round(min(times), 2),
            "report_s_max": round(max(times), 2),
            "report_mb": round(statistics.median(sizes) / 1e6, 2),
            "cpus": os.cpu_count(),
        }
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
