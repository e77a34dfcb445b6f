"""Data read in place from the containers users hold (issue 24): figures as name=value lines.

Tar: generates ``ILSVRC2012_img_val.tar``-shaped data (``--members`` flat JPEGs of realistic
size, ~130 KB: 64 distinct noise images at 500 x 375, each member made unique by a trailing
comment byte string, so pixel hashes repeat) and a devkit (``meta.mat`` with ILSVRC2012_IDs not
in wnid order, ground truth 50 per class), then, each in a fresh process:
- ``tar_index_s``: indexing the tar with an empty cache (headers only);
- ``tar_manifest_cold_s``: listing + `imagenet_1shot`'s manifest with the index cached but the
  validation cache empty (decodes the 20,000 entries a run reads: references and as many held out);
- ``tar_manifest_warm_s``: the same once both are cached (the bar: < 2 s).
Each with ``*_peak_rss_gib`` (the kernel's ru_maxrss) and ``*_peak_anon_gib`` (RssAnon high-water
mark, sampled): the process's own memory, bounded by 1 GiB. The page cache is warm (the tar was
just written); a cold disk adds the reads of 50,000 headers (indexing) and of the chosen members.

    python benchmarks/data_layouts.py [--members 50000] [--dir /tmp/varbench-bench-layouts]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from proc_memory import run_measured

CHILD = """
import json, sys, time
from pathlib import Path
what, data, cache, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
from varbench.plan.layouts import DataSource, open_listing
from varbench.plan.layouts.tarindex import tar_index
from varbench.plan.manifest import build_manifest
from varbench.plan.protocol import load_protocol
spec = load_protocol("imagenet_1shot")
t = time.perf_counter()
if what == "index":
    n = len(tar_index(Path(data), cache).members)
else:
    m, _ = build_manifest(spec, open_listing(DataSource(data), spec, cache), cache)
    n = len(m.references)
Path(out).write_text(json.dumps({"s": time.perf_counter() - t, "n": n}))
"""


def jpeg_pool(n: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(n):
        arr = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
        arr = (arr // 2 + np.linspace(0, 120, 500)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=91)
        pool.append(buf.getvalue())
    return pool


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_devkit(path: Path, members: int) -> None:
    """meta.mat for the 1,000 shipped wnids (ILSVRC2012_ID reversed) and the ground truth."""
    from scipy.io import savemat

    from varbench.plan.layouts.base import imagenet_wnids

    wnids = imagenet_wnids()
    synsets = np.zeros(len(wnids), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, w in enumerate(wnids):
        synsets[i] = (1000 - i, w, w)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    gt = "".join(f"{1000 - (i % 1000)}\n" for i in range(members)).encode()
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)


def make_tar(folder: Path, members: int) -> Path:
    tar = folder / "ILSVRC2012_img_val.tar"
    stamp = folder / f".complete-{members}"
    if stamp.is_file():
        return tar
    folder.mkdir(parents=True, exist_ok=True)
    pool = jpeg_pool()
    with open(tar, "wb") as f, tarfile.open(fileobj=f, mode="w") as tf:
        for i in range(members):
            _add(tf, f"ILSVRC2012_val_{i + 1:08d}.JPEG", pool[i % len(pool)] + f"#{i}".encode())
    make_devkit(folder / "ILSVRC2012_devkit_t12.tar.gz", members)
    stamp.write_text("")
    return tar


def child(what: str, data: Path, cache: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "VARBENCH_NO_PROGRESS": "1"}
        got = run_measured(
            [sys.executable, "-c", CHILD, what, str(data), str(cache), out.name], env
        )
        if got["returncode"] != 0:
            raise SystemExit(f"{what} failed ({got['returncode']})")
        return {**got, **json.loads(Path(out.name).read_text())}


def bench_tar(folder: Path, members: int) -> dict:
    tar = make_tar(folder, members)
    out: dict = {"tar_members": members, "tar_gib": round(tar.stat().st_size / 2**30, 2)}
    with tempfile.TemporaryDirectory(prefix="layouts-cache-") as c:
        cache = Path(c)
        for name, what in (("tar_index", "index"), ("tar_manifest_cold", "manifest"),
                           ("tar_manifest_warm", "manifest")):  # fmt: skip
            got = child(what, tar, cache)
            out[f"{name}_s"] = round(got["s"], 2)
            out[f"{name}_peak_rss_gib"] = round(got["peak_rss_gib"], 3)
            out[f"{name}_peak_anon_gib"] = round(got["peak_anon_gib"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=50_000)
    ap.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "varbench-bench-layouts"
    )
    args = ap.parse_args()
    t = time.perf_counter()
    result = {"load_average_1m": round(os.getloadavg()[0], 2)}
    result.update(bench_tar(args.dir / "tar", args.members))
    result["bench_wall_s"] = round(time.perf_counter() - t, 1)
    for key, value in result.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
