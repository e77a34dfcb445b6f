"""Small versions of every container, built in code from the same images (tests only)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from varbench.plan.demo_data import demo_image  # noqa: F401 - re-exported for tests
from varbench.plan.layouts.base import imagenet_wnids

N_CLASSES = 3
PER_CLASS = 7


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def images() -> list[tuple[str, str, bytes]]:
    """(official file name, wnid, JPEG bytes), numbered as the validation set, classes mixed."""
    wnids = imagenet_wnids()[:N_CLASSES]
    out = []
    for i in range(N_CLASSES * PER_CLASS):
        c = (i * 5) % N_CLASSES
        arr = demo_image(c, 1000 + i)
        out.append((f"ILSVRC2012_val_{i + 1:08d}.JPEG", wnids[c], jpeg(arr)))
    return out


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def folders(root: Path) -> Path:
    for name, wnid, data in images():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        (root / wnid / name).write_bytes(data)
    return root


def devkit(path: Path, ids: dict[str, int] | None = None) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (ILSVRC2012_ID not in wnid order) + ground truth."""
    wnids = imagenet_wnids()
    ids = ids or {w: 1000 - i for i, w in enumerate(wnids)}  # reversed, as the devkit is unsorted
    synsets = np.zeros(len(wnids), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, w in enumerate(wnids):
        synsets[i] = (ids[w], w, f"words of {w}, more")
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    gt = "".join(f"{ids[w]}\n" for _n, w, _d in images())
    with tarfile.open(path, "w:gz") as tf:
        add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt.encode())
    return path


def official_tar(folder: Path) -> Path:
    """ILSVRC2012_img_val.tar (flat) with the devkit beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as tf:
        for name, _w, data in images():
            add(tf, name, data)
    devkit(folder / "ILSVRC2012_devkit_t12.tar.gz")
    return folder / "ILSVRC2012_img_val.tar"


def kaggle(root: Path) -> Path:
    """Kaggle's tree: ILSVRC/Data/CLS-LOC/val/*.JPEG with LOC_val_solution.csv at the root."""
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for name, wnid, data in images():
            (val / name).write_bytes(data)
            w.writerow([name.rsplit(".", 1)[0], f"{wnid} 1 2 30 40 {wnid} 5 6 70 80"])
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} name of {w}, other\n" for w in imagenet_wnids())
    )
    return root


def webdataset(folder: Path, shards: int = 2) -> str:
    """timm-style shards: KEY.jpg + KEY.cls (+ KEY.json with the file name in the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    wnids = imagenet_wnids()
    items = images()
    for s in range(shards):
        with tarfile.open(folder / f"val-{s:04d}.tar", "w") as tf:
            for name, wnid, data in items[s::shards]:
                key = name.rsplit(".", 1)[0]
                if s == 0:  # the file name from the json
                    add(tf, f"{key}.jpg", data)
                    add(tf, f"{key}.json", json.dumps({"filename": name}).encode())
                else:  # no json: KEY.<ext> as written
                    add(tf, f"{key}.JPEG", data)
                add(tf, f"{key}.cls", str(wnids.index(wnid)).encode())
    return str(folder) + "/val-{0000.." + f"{shards - 1:04d}" + "}.tar"


def targz(path: Path) -> Path:
    """A class-folder tree under val/ in a .tar.gz."""
    with tarfile.open(path, "w:gz") as tf:
        for name, wnid, data in images():
            add(tf, f"val/{wnid}/{name}", data)
    return path


def parquet(folder: Path, shards: int = 2) -> Path:
    """Hugging Face's schema: an Image struct (bytes, path with the ``_<wnid>`` suffix HF's
    archives carry), an integer label in sorted-wnid order, ClassLabel names in the metadata,
    small row groups, rows in the set's order (classes mixed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    wnids = imagenet_wnids()
    features = {"image": {"_type": "Image"}, "label": {"names": wnids, "_type": "ClassLabel"}}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image), ("label", pa.int64())], metadata=meta)
    items = images()
    for s in range(shards):
        part = items[s::shards]
        cells = [{"bytes": d, "path": n.replace(".JPEG", f"_{w}.JPEG")} for n, w, d in part]
        table = pa.table(
            {"image": pa.array(cells, type=image), "label": [wnids.index(w) for _n, w, _d in part]},
            schema=schema,
        )
        pq.write_table(
            table, folder / f"validation-{s:05d}-of-{shards:05d}.parquet", row_group_size=4
        )
    return folder
