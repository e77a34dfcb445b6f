"""Manifest of an LSUN LMDB at scale (issue bar, extrapolated to 3 million entries: < 60 s, < 2 GiB).

Generates once (kept in --dir) an LMDB shaped like the release: 40-hex keys, WebP and JPEG values
of ~3 KB, so each value lies on its own overflow page as LSUN's 256 px images do and listing the
keys never touches a value page. The values are a handful of distinct encoded noise images
reused under different keys (all valid images). Then times the real CLI end to end in a fresh
process, `varbench manifest --protocol lsun_bedroom_1shot` (10,000 references, 1,000
conditioning, 10,000 held out: 20,000 entries extracted and decoded), with an empty cache each
time, and reads its peak RSS from the kernel (wait4). A second process times the part that grows
with the database (key iteration and ranking) for the extrapolation:

    t(3M) = t_total + (3M / N - 1) * t_keys
    rss(3M) = peak_rss + (3M / N - 1) * (branch + leaf pages of the LMDB)

(an upper bound: the tree pages are read one by one with pread, never kept or mapped; the memory
of the listing is the 2 x n_per_class best-ranked names, whatever N).

CPU seconds (user + sys, from the kernel) are printed beside wall seconds because the shared
machine is loaded; the load average is printed too. The page cache is warm (the database was just written or read); a cold disk adds read time.

    python benchmarks/lsun_manifest.py [--entries 300000] [--dir /tmp/varbench-bench-lsun]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from proc_memory import run_measured

TARGET = 3_000_000
RANK_ONLY = """
import json, sys, time
from pathlib import Path
from varbench.plan.lsun import _open, rank_keys
from varbench.plan.protocol import load_protocol
spec = load_protocol("lsun_bedroom_1shot")
env = _open(Path(sys.argv[1]))
st = env.stat()
t, c = time.perf_counter(), time.process_time()
with env.begin() as txn:
    top, _ = rank_keys(Path(sys.argv[1]), txn, spec, st["entries"])
t, c = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"t_keys": t, "cpu_keys": c, "index_bytes": (st["branch_pages"] + st["leaf_pages"]) * st["psize"],
                  "overflow_pages": st["overflow_pages"], "entries": st["entries"]}))
"""


def _values(n: int = 8) -> list[bytes]:
    """A few distinct ~3 KB WebP and JPEG noise images (over LMDB's inline limit of ~2 KB)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=("WEBP", "JPEG")[i % 2], quality=90)
        out.append(buf.getvalue())
    return out


def make_lmdb(path: Path, entries: int) -> None:
    """Write the benchmark LMDB once; a marker file records the entry count."""
    import lmdb

    marker = path / "entries.txt"
    if marker.is_file() and marker.read_text().strip() == str(entries):
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    values = _values()
    sizes = sorted(len(v) for v in values)
    print(
        f"# generating {entries:,} entries (values {sizes[0]}-{sizes[-1]} bytes)", file=sys.stderr
    )
    env = lmdb.open(str(path), map_size=entries * 12_000 + (1 << 30), writemap=True)
    step = 50_000
    for start in range(0, entries, step):
        with env.begin(write=True) as txn:
            for i in range(start, min(entries, start + step)):
                key = hashlib.sha1(str(i).encode()).hexdigest().encode()
                txn.put(key, values[i % len(values)])
    env.sync()
    env.close()
    marker.write_text(str(entries))


def manifest_once(data: Path) -> tuple[float, float, float, float]:
    """Wall and CPU seconds, peak RSS and peak anonymous memory (GiB) of `varbench manifest`
    in a fresh process (``proc_memory.run_measured``)."""
    with tempfile.TemporaryDirectory(prefix="lsun-bench-cache-") as cache:
        env = {**os.environ, "VARBENCH_NO_PROGRESS": "1", "VARBENCH_CACHE": cache}
        cmd = [sys.executable, "-m", "varbench.cli", "manifest", "--protocol",
               "lsun_bedroom_1shot", "--data", str(data), "--cache-dir", cache,
               "--output", str(Path(cache) / "manifest.json")]  # fmt: skip
        got = run_measured(cmd, env)
        if got["returncode"] != 0:
            raise SystemExit(f"varbench manifest failed ({got['returncode']})")
        m = json.loads((Path(cache) / "manifest.json").read_text())
        assert len(m["classes"][0]["references"]) == 10_000
        assert len(m["classes"][0]["heldout"]) == 10_000
    return got["s"], got["cpu_s"], got["peak_rss_gib"], got["peak_anon_gib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=300_000)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "varbench-bench-lsun")
    args = ap.parse_args()
    db = args.dir / "bedroom_train_lmdb"
    make_lmdb(db, args.entries)
    load = os.getloadavg()[0]
    seconds, cpu, rss, anon = manifest_once(args.dir)
    out = subprocess.run(
        [sys.executable, "-c", RANK_ONLY, str(db)], check=True, capture_output=True, text=True
    )
    part = json.loads(out.stdout)
    scale = TARGET / part["entries"] - 1
    result = {
        "entries": part["entries"],
        "lsun_manifest_s": round(seconds, 2),
        "lsun_manifest_peak_rss_gib": round(rss, 3),
        "lsun_manifest_peak_anon_gib": round(anon, 3),
        "lsun_manifest_cpu_s": round(cpu, 2),
        "lsun_keys_s": round(part["t_keys"], 2),
        "lsun_keys_cpu_s": round(part["cpu_keys"], 2),
        "lsun_index_gib": round(part["index_bytes"] / 2**30, 4),
        "lsun_overflow_pages": part["overflow_pages"],
        "lsun_manifest_s_at_3m": round(seconds + scale * part["t_keys"], 1),
        "lsun_manifest_peak_rss_gib_at_3m": round(rss + scale * part["index_bytes"] / 2**30, 3),
        "lsun_manifest_cpu_s_at_3m": round(cpu + scale * part["cpu_keys"], 1),
        "load_average_1m": round(load, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
