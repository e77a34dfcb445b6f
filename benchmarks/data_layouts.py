"""Manifest work on data as users have it (issue 24): time, bytes read and memory per container.

Each section generates its data once in a temporary folder (deleted at the end), then measures
the work a `varbench manifest` does on it in a FRESH process (``measure``: a spawned
interpreter, so nothing generated or imported here counts): wall seconds, peak RSS
(``ru_maxrss``) and peak anonymous memory (the high-water of ``RssAnon`` in
``/proc/self/status``, sampled every 50 ms; page cache and mapped files excluded). Figures are
printed as ``name=value`` lines on stdout; progress goes to stderr.

Parquet (``--rows``, default 50,000 as ImageNet's validation split): 14 shards in Hugging
Face's schema (an Image struct of bytes and path, an integer label with ClassLabel metadata),
rows in random class order as HF's split is, row groups of 100 rows, JPEGs of ~110 KB each (a
few hundred noise JPEGs encoded once, each row made unique by a JPEG comment, so pixel hashes
repeat: fine for timing). Measured: listing plus ranking for ``imagenet_1shot``
(``n_per_class = 10``) and reading the bytes of the entries a manifest validates (the top
``2 x n_per_class`` of each class) without decoding them, with an empty cache (cold: the row
groups are read) and again in a new process (warm: served from the cache). Classes are
``min(1000, rows / 50)``, 50 rows each, so ``--rows 5000`` keeps the shape at a tenth.

Tar (``--members``, default 50,000 as ``ILSVRC2012_img_val.tar``, about 6.3 GiB): flat JPEGs of
~130 KB (64 distinct 500 x 375 noise images made unique by trailing bytes) and a devkit
(``meta.mat`` with ILSVRC2012_IDs not in wnid order, ground truth 50 per class). Measured:
``tar_index_s`` (indexing with an empty cache: headers only), ``tar_manifest_cold_s``
(`imagenet_1shot`'s ``build_manifest`` with the index cached and the validation cache empty: it
decodes the 20,000 entries a run reads) and ``tar_manifest_warm_s`` (the same once both are
cached, the bar: < 2 s), each with its peak RSS and peak anonymous memory.

The page cache is warm (the data was just written, then synced, so no write-back runs during a
measurement) unless it exceeds free memory; the
machine's load average is printed, since it is shared.

    python benchmarks/data_layouts.py [--rows 50000] [--members 50000] [--only parquet|tar] [--dir /tmp]

To add a section: write ``make_X(folder, args) -> path`` and a module-level measured function
``X_work(path, cache) -> dict`` (extra figures), and a ``section_X(args, tmp)`` printing
``figure(...)`` lines from ``measure(X_work, ...)``; list it in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proc_memory import status_kib

GIB = 1 << 30


# --- the harness ------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    return status_kib("self", field) or 0


def _io_bytes() -> dict[str, int]:
    """``rchar`` (bytes read through read/pread, page cache included) and ``read_bytes`` (disk)."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}
    except OSError:
        return {}


def _child(fn: Callable[..., dict], args: tuple, conn) -> None:
    """Run ``fn(*args)`` with a 50 ms RssAnon sampler; send the figures back."""
    peak = [_status_kib("RssAnon")]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], _status_kib("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    io0 = _io_bytes()
    t = time.perf_counter()
    try:
        extra = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, which raises
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    seconds = time.perf_counter() - t
    io1 = _io_bytes()
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _status_kib("RssAnon"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send({
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss / (1 << 20),  # KiB on Linux
        "peak_anon_gib": peak[0] / (1 << 20),
        "rchar": io1.get("rchar", 0) - io0.get("rchar", 0),
        "extra": extra or {},
    })  # fmt: skip


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall time of fn alone (not the interpreter's start)
    peak_rss: float  # GiB, the whole process (imports included)
    peak_anon: float  # GiB
    cpu_s: float  # user + sys of the whole process
    rchar: int  # bytes read through read()/pread() while fn ran
    extra: dict[str, Any]  # what fn returned


def measure(fn: Callable[..., dict], *args: Any) -> Measured:
    """``fn(*args)`` in a fresh interpreter (spawned: no memory inherited from this one).

    ``fn`` must be a module-level function of an importable module (this script is); it returns
    a dict of extra figures.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, child))
    proc.start()
    child.close()
    try:
        out = parent.recv()
    except EOFError:
        out = {"error": "the measured process died"}
    proc.join()
    if "error" in out:
        raise SystemExit(f"{fn.__name__}: {out['error']} (exit code {proc.exitcode})")
    return Measured(
        out["seconds"], out["peak_rss_gib"], out["peak_anon_gib"], out["cpu_s"], out["rchar"],
        out["extra"],
    )  # fmt: skip


def figure(name: str, value: Any) -> None:
    """One ``name=value`` line on stdout."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}={value}", flush=True)


def report(prefix: str, m: Measured) -> None:
    figure(f"{prefix}_s", m.seconds)
    figure(f"{prefix}_cpu_s", m.cpu_s)
    figure(f"{prefix}_peak_rss_gib", m.peak_rss)
    figure(f"{prefix}_peak_anon_gib", m.peak_anon)
    for k, v in m.extra.items():
        figure(f"{prefix}_{k}", v)


def need_room(tmp: Path, need: float) -> None:
    """Stop before generating data the disk cannot hold (keeping a fifth of it free)."""
    free = shutil.disk_usage(tmp).free
    if need > free * 0.8:
        raise SystemExit(f"needs ~{need / GIB:.1f} GiB in {tmp}, {free / GIB:.1f} GiB free")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --- parquet ----------------------------------------------------------------------------------

N_SHARDS = 14
ROW_GROUP = 100
PER_CLASS = 50
DISTINCT = 200
JPEG_SIDE = 348  # a noise JPEG this side at quality 90 is ~110 KB


def _jpegs(n: int) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (JPEG_SIDE, JPEG_SIDE, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _unique(jpeg: bytes, i: int) -> bytes:
    """The same JPEG with a comment segment (COM) carrying ``i`` right after SOI."""
    return jpeg[:2] + b"\xff\xfe\x00\x0a" + struct.pack(">Q", i) + jpeg[2:]


def make_parquet(folder: Path, rows: int) -> Path:
    """HF-schema shards ``data/validation-000NN-of-00014.parquet`` of ``rows`` rows."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from varbench.plan.layouts.base import imagenet_wnids

    n_classes = min(1000, max(1, rows // PER_CLASS))
    wnids = imagenet_wnids()
    labels = np.random.default_rng(1).permutation(np.arange(rows) % n_classes)
    jpegs = _jpegs(DISTINCT)
    features = {
        "image": {"_type": "Image"},
        "label": {"names": wnids, "_type": "ClassLabel"},
    }
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image), ("label", pa.int64())], metadata=meta)
    data = folder / "data"
    data.mkdir(parents=True)
    per = -(-rows // N_SHARDS)
    for s in range(N_SHARDS):
        path = data / f"validation-{s:05d}-of-{N_SHARDS:05d}.parquet"
        with pq.ParquetWriter(path, schema) as w:
            for start in range(s * per, min(rows, (s + 1) * per), ROW_GROUP):
                idx = range(start, min(rows, (s + 1) * per, start + ROW_GROUP))
                cells = [
                    {
                        "bytes": _unique(jpegs[i % DISTINCT], i),
                        "path": f"ILSVRC2012_val_{i + 1:08d}_{wnids[labels[i]]}.JPEG",
                    }
                    for i in idx
                ]
                batch = pa.table(
                    {"image": pa.array(cells, type=image), "label": labels[list(idx)]},
                    schema=schema,
                )
                w.write_table(batch, row_group_size=ROW_GROUP)
        log(f"wrote {path.name} ({path.stat().st_size / GIB:.2f} GiB)")
    return data


def parquet_work(data: str, cache: str, n_classes: int) -> dict:
    """`varbench manifest`'s data work on the shards: listing, ranking, reading what it validates
    (the top 2 x n_per_class of each class, in its order, 4 threads as it uses), no decoding."""
    import os as _os
    from concurrent.futures import ThreadPoolExecutor

    _os.environ["VARBENCH_NO_PROGRESS"] = "1"
    from varbench.plan.datasets import storage_order
    from varbench.plan.layouts import parquet, rowgroups
    from varbench.plan.layouts.base import DataSource
    from varbench.plan.manifest import _ranked
    from varbench.plan.protocol import load_protocol

    spec = load_protocol("imagenet_1shot").with_overrides({"n_classes": str(n_classes)})
    io0, t = _io_bytes(), time.perf_counter()
    listing = parquet.PARQUET.listing(DataSource(data), spec, Path(cache))
    t_list, io1 = time.perf_counter() - t, _io_bytes()
    todo = [
        f
        for c, fs in listing.classes.items()
        for f in _ranked(fs, c, spec.seed)[: 2 * spec.n_per_class]
    ]
    # in the order validation reads them (storage order)
    todo = [f for f, _s in storage_order(listing, [(f, list(listing.path(f).stamp)) for f in todo])]
    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        # sizes only, as validation keeps hashes only: no entry outlives its reading thread
        n_bytes = sum(pool.map(lambda f: len(listing.path(f).read()), todo))
    rowgroups.flush()  # the cache writes are part of the work
    t_read, io2 = time.perf_counter() - t, _io_bytes()
    files = sum(Path(p).stat().st_size for p in listing.origin["shards"])
    groups = 0
    for p in listing.origin["shards"]:
        import pyarrow.parquet as pq

        groups += pq.ParquetFile(p).metadata.num_row_groups
    return {
        "listing_s": t_list,
        "read_chosen_s": t_read,
        "entries_read": len(todo),
        "entry_bytes": n_bytes,
        "row_groups_read": rowgroups.READS["row_groups"],
        "row_groups": groups,
        "bytes_read_fraction": rowgroups.READS["bytes"] / files,
        "file_bytes": files,
        # read()/pread() bytes, page cache included: listing (labels, file names, the shards'
        # fingerprints: 2 MiB each) and reading the chosen entries (row groups, then the cache)
        "listing_rchar_fraction": (io1.get("rchar", 0) - io0.get("rchar", 0)) / files,
        "read_rchar_fraction": (io2.get("rchar", 0) - io1.get("rchar", 0)) / files,
    }


def section_parquet(args, tmp: Path) -> None:
    rows = args.rows
    n_classes = min(1000, max(1, rows // PER_CLASS))
    need_room(tmp, rows * 115_000 * 1.45)  # shards, and the cache of the top 2 x 10 of 50 per class
    t = time.perf_counter()
    data = make_parquet(tmp / "parquet", rows)
    os.sync()  # the kernel's write-back of the generated shards is not the manifest's work
    log(f"generated {rows:,} rows in {time.perf_counter() - t:.0f} s")
    figure("parquet_rows", rows)
    figure("parquet_classes", n_classes)
    cache = tmp / "cache"
    cold = measure(parquet_work, str(data), str(cache), n_classes)
    warm = measure(parquet_work, str(data), str(cache), n_classes)
    figure("parquet_file_gib", cold.extra["file_bytes"] / GIB)
    figure("parquet_manifest_s", cold.seconds)
    figure("parquet_listing_s", cold.extra["listing_s"])
    figure("parquet_read_chosen_s", cold.extra["read_chosen_s"])
    figure("parquet_entries_read", cold.extra["entries_read"])
    figure("parquet_row_groups_read", f"{cold.extra['row_groups_read']}/{cold.extra['row_groups']}")
    figure("parquet_bytes_read_fraction", cold.extra["bytes_read_fraction"])
    figure("parquet_listing_rchar_fraction", cold.extra["listing_rchar_fraction"])
    figure("parquet_read_rchar_fraction", cold.extra["read_rchar_fraction"])
    figure("parquet_cpu_s", cold.cpu_s)
    figure("peak_rss_gib", cold.peak_rss)
    figure("peak_anon_gib", cold.peak_anon)
    figure("parquet_warm_manifest_s", warm.seconds)
    figure("parquet_warm_row_groups_read", warm.extra["row_groups_read"])
    figure("parquet_warm_peak_anon_gib", warm.peak_anon)


# --- tar -------------------------------------------------------------------------------------


def _tar_jpegs(n: int = 64) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(n):
        arr = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
        arr = (arr // 2 + np.linspace(0, 120, 500)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=91)
        pool.append(buf.getvalue())
    return pool


def _add(tf, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_tar(folder: Path, members: int) -> Path:
    """``ILSVRC2012_img_val.tar`` (flat) and ``ILSVRC2012_devkit_t12.tar.gz`` beside it."""
    import io
    import tarfile

    import numpy as np
    from scipy.io import savemat

    from varbench.plan.layouts.base import imagenet_wnids

    folder.mkdir(parents=True, exist_ok=True)
    pool = _tar_jpegs()
    tar = folder / "ILSVRC2012_img_val.tar"
    with open(tar, "wb") as f, tarfile.open(fileobj=f, mode="w") as tf:
        for i in range(members):
            _add(tf, f"ILSVRC2012_val_{i + 1:08d}.JPEG", pool[i % len(pool)] + f"#{i}".encode())
    wnids = imagenet_wnids()
    synsets = np.zeros(len(wnids), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, w in enumerate(wnids):
        synsets[i] = (1000 - i, w, w)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    gt = "".join(f"{1000 - (i % 1000)}\n" for i in range(members)).encode()
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        _add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)
    return tar


def tar_index_work(tar: str, cache: str) -> dict:
    from varbench.plan.layouts.tarindex import tar_index

    return {"members": len(tar_index(Path(tar), Path(cache)).members)}


def tar_manifest_work(tar: str, cache: str, n_classes: int) -> dict:
    """`varbench manifest`'s work: list (index, devkit), rank, validate, select."""
    os.environ["VARBENCH_NO_PROGRESS"] = "1"
    from varbench.plan.layouts import DataSource, open_listing
    from varbench.plan.manifest import build_manifest
    from varbench.plan.protocol import load_protocol

    spec = load_protocol("imagenet_1shot").with_overrides({"n_classes": str(n_classes)})
    t = time.perf_counter()
    listing = open_listing(DataSource(tar), spec, Path(cache))
    t_list = time.perf_counter() - t
    manifest, _ = build_manifest(spec, listing, Path(cache))
    return {"listing_s": t_list, "references": len(manifest.references)}


def section_tar(args, tmp: Path) -> None:
    members = args.members
    n_classes = min(1000, max(1, members // PER_CLASS))
    need_room(tmp, members * 135_000)
    t = time.perf_counter()
    tar = make_tar(tmp / "tar", members)
    os.sync()  # as for parquet: write-back of the generated tar is not the index's work
    log(f"generated {members:,} members in {time.perf_counter() - t:.0f} s")
    figure("tar_members", members)
    figure("tar_gib", tar.stat().st_size / GIB)
    cache = tmp / "cache"
    report("tar_index", measure(tar_index_work, str(tar), str(cache)))
    report("tar_manifest_cold", measure(tar_manifest_work, str(tar), str(cache), n_classes))
    report("tar_manifest_warm", measure(tar_manifest_work, str(tar), str(cache), n_classes))


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], None]] = {
    "parquet": section_parquet,
    "tar": section_tar,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="parquet rows (default 50,000)")
    ap.add_argument("--members", type=int, default=50_000, help="tar members (default 50,000)")
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append", help="sections to run")
    ap.add_argument("--dir", default=None, help="where the temporary data goes (default: TMPDIR)")
    args = ap.parse_args()
    figure("load_average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    figure("cpus", os.cpu_count())
    for name in args.only or list(SECTIONS):
        tmp = Path(tempfile.mkdtemp(prefix=f"varbench-bench-{name}-", dir=args.dir))
        try:
            SECTIONS[name](args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    figure("load_average_end", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
