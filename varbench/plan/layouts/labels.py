"""Label files for flat image sets: ImageNet's devkit, Kaggle's CSV, or a two-column CSV.

Each gives ``file stem -> class`` (WordNet ids for ImageNet) and names its source for the
manifest's provenance. The devkit numbers classes by ILSVRC2012_ID (``meta.mat``), which is
not the sorted-wnid order of integer labels elsewhere, so ``meta.mat`` is required with it.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from varbench.core.files import atomic_write_json
from varbench.core.hashing import sha256_json
from varbench.errors import DatasetError

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
KAGGLE_CSV = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
_FILE_COLS = ("imageid", "filename", "file", "image", "path", "image_id", "name")
_CLASS_COLS = ("predictionstring", "label", "class", "wnid", "synset", "category")


@dataclass(frozen=True)
class Labels:
    """``stem -> class`` for every labelled image, human labels by class, and the source."""

    classes: dict[str, str]
    source: str
    names: dict[str, str] = field(default_factory=dict)


def _bad(path: Path | str, what: str, fix: str) -> DatasetError:
    return DatasetError(str(path), [f"{path}: {what}; fix: {fix}"])


def _meta_wnids(data: bytes, where: str) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC2012_ID -> wnid (and wnid -> first word) from the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        words = {str(s["WNID"]): str(s["words"]).split(",")[0].strip() for s in synsets}
    except Exception as exc:  # noqa: BLE001 - any unreadable meta.mat is one named problem
        raise _bad(where, f"not the devkit's meta.mat ({type(exc).__name__}: {exc})",
                   "pass the devkit archive ILSVRC2012_devkit_t12.tar.gz itself") from None  # fmt: skip
    return ids, words


def _ground_truth(text: str, ids: dict[int, str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, line in enumerate(text.split(), 1):
        try:
            wnid = ids[int(line)]
        except (ValueError, KeyError):
            raise _bad(where, f"line {i} is {line!r}, not an ILSVRC2012_ID of meta.mat",
                       "use the devkit's own ground-truth file") from None  # fmt: skip
        out[f"ILSVRC2012_val_{i:08d}"] = wnid
    return out


def read_devkit(path: Path) -> Labels:
    """The devkit archive, its extracted folder, or its ground-truth file with meta.mat beside."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        found: dict[str, bytes] = {}
        try:
            with tarfile.open(path) as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in (GROUND_TRUTH, META):
                        found[base] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _bad(path, f"not a readable devkit archive ({exc})",
                       "download ILSVRC2012_devkit_t12.tar.gz again") from None  # fmt: skip
        missing = [n for n in (GROUND_TRUTH, META) if n not in found]
        if missing:
            raise _bad(path, f"no {' or '.join(missing)} inside",
                       "pass ILSVRC2012_devkit_t12.tar.gz (it holds data/" + GROUND_TRUTH + ")")  # fmt: skip
        ids, words = _meta_wnids(found[META], f"{path}::{META}")
        gt = _ground_truth(found[GROUND_TRUTH].decode(), ids, f"{path}::{GROUND_TRUTH}")
        return Labels(gt, f"devkit {path}", words)
    folder = path if path.is_dir() else path.parent
    gt_file = next((p for p in (folder / GROUND_TRUTH, folder / "data" / GROUND_TRUTH) if p.is_file()), None)  # fmt: skip
    if path.is_file() and path.name != META:
        gt_file = path
    meta = next((p for p in (folder / META, folder / "data" / META) if p.is_file()), None)
    if gt_file is None or meta is None:
        raise _bad(path, f"needs both {GROUND_TRUTH} and {META} (found {gt_file or meta or 'neither'})",
                   "pass the devkit archive ILSVRC2012_devkit_t12.tar.gz or its data/ folder")  # fmt: skip
    ids, words = _meta_wnids(meta.read_bytes(), str(meta))
    return Labels(_ground_truth(gt_file.read_text(), ids, str(gt_file)), f"devkit {gt_file}", words)


def read_csv_labels(path: Path, wnids: list[str] | None) -> Labels:
    """Kaggle's ``LOC_val_solution.csv`` (ImageId, PredictionString: the wnid comes first) or
    any CSV with a file column and a class column (a name, or an integer label when ``wnids``)."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot read it as a CSV ({exc})", "save it as UTF-8 text") from None
    if not rows:
        raise _bad(path, "empty CSV", "use the label file the data set came with")
    header = [h.strip().lower() for h in rows[0]]
    fcol = next((header.index(c) for c in _FILE_COLS if c in header), None)
    ccol = next((header.index(c) for c in _CLASS_COLS if c in header), None)
    if fcol is None or ccol is None:
        raise _bad(path, f"header {rows[0]} has no file column ({', '.join(_FILE_COLS)}) and "
                   f"class column ({', '.join(_CLASS_COLS)})",
                   "name the columns, e.g. `filename,label`")  # fmt: skip
    out: dict[str, str] = {}
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            stem = (
                row[fcol].strip().rsplit("/", 1)[-1].rsplit(".", 1)[0]
                if "." in row[fcol]
                else row[fcol].strip()
            )
            value = row[ccol].split()[0]
        except IndexError:
            raise _bad(path, f"line {n} has no {header[ccol]!r} value",
                       "every row needs a file and a class") from None  # fmt: skip
        if wnids is not None and value.lstrip("-").isdigit():
            label = int(value)
            if not 0 <= label < len(wnids):
                raise _bad(path, f"line {n}: label {label} is outside 0-{len(wnids) - 1}",
                           "ImageNet labels count 0-999 in sorted WordNet-id order")  # fmt: skip
            value = wnids[label]
        if stem in out and out[stem] != value:
            raise _bad(path, f"line {n}: {stem!r} is labelled twice ({out[stem]}, {value})",
                       "keep one row per image")  # fmt: skip
        out[stem] = value
    names: dict[str, str] = {}
    synsets = path.parent / KAGGLE_SYNSETS
    if synsets.is_file():
        for line in synsets.read_text().splitlines():
            wnid, _, words = line.partition(" ")
            if wnid:
                names[wnid] = words.split(",")[0].strip()
    return Labels(out, f"csv {path}", names)


def read_labels(path: Path, wnids: list[str] | None, cache_dir: Path | None = None) -> Labels:
    """Any supported label file, recognised by name and content; parsed once per file version
    when ``cache_dir`` is given (the devkit's meta.mat needs scipy.io, slow to import)."""
    if not path.exists():
        raise _bad(path, "--labels: no such file or folder", "check the path")
    cached = None
    if cache_dir is not None and path.is_file():
        st = path.stat()
        key = sha256_json([str(path.resolve()), st.st_size, st.st_mtime_ns, wnids is not None])
        cached = Path(cache_dir) / "labels" / f"{key[:32]}.json"
        try:
            data = json.loads(cached.read_text())
            return Labels(data["classes"], data["source"], data["names"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if path.is_file() and path.suffix.lower() == ".csv":
        labels = read_csv_labels(path, wnids)
    else:
        labels = read_devkit(path)
    if cached is not None:
        atomic_write_json(
            cached, {"classes": labels.classes, "source": labels.source, "names": labels.names}
        )
    return labels


def find_labels(folder: Path) -> Path | None:
    """A label file beside the images: the release's own names up to four folders above (as
    Kaggle's tree nests its images), a generic ``labels.csv`` only in the folder itself."""
    if (folder / "labels.csv").is_file():
        return folder / "labels.csv"
    for d in [folder, *list(folder.parents)[:4]]:
        for name in (KAGGLE_CSV, "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH):
            if (d / name).is_file():
                return d / name
        if (d / "ILSVRC2012_devkit_t12" / "data" / GROUND_TRUTH).is_file():
            return d / "ILSVRC2012_devkit_t12" / "data" / GROUND_TRUTH
    return None
