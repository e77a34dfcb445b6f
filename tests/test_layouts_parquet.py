"""Parquet shards read in place: the same classes, names, selection and pixels as a class-folder
tree of the same images; only the row groups holding chosen rows are read; clear errors."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from varbench.core.files import Blob, read_rgb
from varbench.errors import DatasetError
from varbench.plan.datasets import imagenet_labels, list_dataset
from varbench.plan.layouts import parquet as P
from varbench.plan.layouts import rowgroups as R
from varbench.plan.layouts.base import DataSource, imagenet_wnids
from varbench.plan.manifest import _ranked, build_manifest
from varbench.plan.protocol import load_protocol

CLASSES = ["cat", "dog", "fox"]
PER_CLASS = 6
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def folder_spec(n: int):
    return load_protocol("folder_kshot").with_overrides({"n_per_class": str(n), "k": "1"})


def encoded(i: int) -> bytes:
    """A small noise image, PNG or JPEG by parity."""
    arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG" if i % 2 else "JPEG", quality=90)
    return buf.getvalue()


def rows():
    """(class index, file name in the tree, name as Hugging Face stores it, bytes)."""
    out = []
    for c, cls in enumerate(CLASSES):
        for j in range(PER_CLASS):
            i = c * PER_CLASS + j
            ext = ".png" if i % 2 else ".JPEG"
            out.append((c, f"img_{i:05d}{ext}", f"img_{i:05d}_{cls}{ext}", encoded(i)))
    return out


def hf_metadata(names: list[str]) -> dict[str, str]:
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_shards(folder: Path, data: list, n_shards: int = 2, names=CLASSES) -> list[Path]:
    """``data`` as HF-schema shards (``data/validation-0000i-of-0000n.parquet``), 4 rows/group."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(data) // n_shards)
    paths = []
    for s in range(n_shards):
        part = data[s * per : (s + 1) * per]
        table = pa.table({
            "image": pa.array([{"bytes": b, "path": hf} for _c, _f, hf, b in part], type=IMAGE),
            "label": pa.array([c for c, *_ in part], type=pa.int64()),
        }).replace_schema_metadata(hf_metadata(names))  # fmt: skip
        path = folder / f"validation-{s:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=4)
        paths.append(path)
    return paths


def write_tree(root: Path, data: list) -> Path:
    for c, file, _hf, b in data:
        (root / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        (root / CLASSES[c] / file).write_bytes(b)
    return root


def chosen_first(data: list, n: int) -> list:
    """Rows ordered so the top 2n of each class (what a run reads) fill the first row groups."""
    names = [f"{CLASSES[c]}/{f}" for c, f, _h, _b in data]
    top = set()
    for cls in CLASSES:
        top |= set(_ranked(tuple(x for x in names if x.startswith(cls + "/")), cls, 0)[: 2 * n])
    return sorted(data, key=lambda r: (f"{CLASSES[r[0]]}/{r[1]}" not in top, r[1]))


@pytest.fixture
def hf(tmp_path):
    data = rows()
    order = np.random.default_rng(1).permutation(len(data))  # shuffled, as HF's val split is
    write_shards(tmp_path / "hf" / "data", [data[i] for i in order])
    return tmp_path / "hf", write_tree(tmp_path / "tree", data)


def test_detect(hf, tmp_path):
    repo, tree = hf
    shard = next((repo / "data").glob("*.parquet"))
    for data in (str(shard), str(repo), str(repo / "data"), str(repo / "data" / "validation-*"),
                 str(repo / "data" / "validation-{00000..00001}-of-00002.parquet")):  # fmt: skip
        assert P.detect(DataSource(data)), data
    (tmp_path / "x.txt").write_text("x")
    for data in (str(tree), str(tmp_path / "x.txt"), str(tmp_path / "none-*.parquet")):
        assert not P.detect(DataSource(data)), data


def test_listing_matches_folder_tree(hf, tmp_path):
    repo, tree = hf
    spec = folder_spec(3)
    got = P.PARQUET.listing(DataSource(str(repo)), spec, tmp_path / "cache")
    want = list_dataset(tree, "imagefolder")
    assert got.classes == want.classes
    assert got.labels == want.labels
    assert not got.validate_all and got.layout == "imagefolder"
    assert got.origin["container"] == "parquet" and got.origin["n_rows"] == 18
    assert got.origin["image_column"] == "image" and got.origin["label_column"] == "label"
    assert "ClassLabel" in got.origin["label_source"] and len(got.origin["shards"]) == 2
    for names in want.classes.values():
        for name in names:
            blob = got.path(name)
            assert isinstance(blob, Blob) and blob.stamp[1:] and "::row" in blob.name
            assert np.array_equal(read_rgb(blob), read_rgb(want.path(name)))


def test_manifest_same_as_folder_tree(hf, tmp_path):
    repo, tree = hf
    spec = folder_spec(3)
    listing = P.PARQUET.listing(DataSource(str(repo / "data" / "*.parquet")), spec, tmp_path / "c")
    got, _ = build_manifest(spec, listing, tmp_path / "c")
    want, _ = build_manifest(spec, list_dataset(tree, "imagefolder"), tmp_path / "c2")
    assert [(c.name, c.references, c.conditioning, c.heldout) for c in got.classes] == [
        (c.name, c.references, c.conditioning, c.heldout) for c in want.classes
    ]
    assert got.pixel_sha256 == want.pixel_sha256
    assert got.sha256 == want.sha256  # the root is informational: same images, same manifest


def test_reads_only_row_groups_holding_chosen_rows(tmp_path, monkeypatch):
    n = 1  # a run reads the top 2 of each class: 6 rows, the first 2 row groups of 6
    paths = write_shards(tmp_path / "d", chosen_first(rows(), n))
    spec = folder_spec(n)
    before = dict(R.READS)
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    assert R.READS == before  # listing reads no image bytes
    build_manifest(spec, listing, tmp_path / "c")
    R.flush()  # the cache writer's thread is done
    meta = pq.ParquetFile(paths[0]).metadata
    image_bytes = sum(R._chunk_bytes(meta, rg, "image.bytes") for rg in (0, 1))
    assert R.READS["row_groups"] - before["row_groups"] == 2
    assert R.READS["bytes"] - before["bytes"] == image_bytes
    kept = sorted((tmp_path / "c" / "parquet").rglob("*.rows"))
    assert [p.name for p in kept] == ["rg000000.rows", "rg000001.rows"]
    assert sorted(R._read_index(kept[0])) == [0, 1, 2, 3]
    # a fresh listing (the run after the manifest) serves the chosen rows from the cache
    again = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    before = dict(R.READS)
    for cls in again.classes:
        for name in _ranked(again.classes[cls], cls, 0)[:2]:
            again.path(name).read()
    assert R.READS == before
    # a cache file cut short (a crash before its data reached disk) is read from the shard again
    kept[0].write_bytes(kept[0].read_bytes()[:-10])
    third = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    name = next(n for n in third.files if third.files[n].stamp[1:] == (0, 0))
    assert third.path(name).read() == again.path(name).read()
    assert R.READS["row_groups"] - before["row_groups"] == 1
    R.flush()
    assert sorted(R._read_index(kept[0])) == [0, 1, 2, 3]
    # a row no run reads is served from its row group (read once: the group stays in memory
    # for the next reads) and not kept
    other = next(n for n in third.files if third.files[n].stamp[1:] == (2, 8))
    before = dict(R.READS)
    assert third.path(other).read() == third.path(other).read()
    assert R.READS["row_groups"] - before["row_groups"] == 1
    R.flush()
    assert len(list((tmp_path / "c" / "parquet").rglob("*.rows"))) == 2
    # with no group kept in memory, each read of it reads its group
    monkeypatch.setattr(R, "_RECENT_GROUPS", 0)
    fourth = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    before = dict(R.READS)
    assert fourth.path(other).read() == fourth.path(other).read() == third.path(other).read()
    assert R.READS["row_groups"] - before["row_groups"] == 2


def test_threads_read_a_row_group_once(tmp_path):
    write_shards(tmp_path / "d", chosen_first(rows(), 1), n_shards=1)
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), folder_spec(1), tmp_path / "c")
    first_group = [
        n for n in listing.files if listing.files[n].stamp[1:] in {(0, r) for r in range(4)}
    ]
    assert len(first_group) == 4
    before = R.READS["row_groups"]
    start = threading.Barrier(4)

    def read(name):
        start.wait()
        return listing.path(name).read()

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, first_group))
    assert R.READS["row_groups"] - before == 1


def test_imagenet_labels_and_names(tmp_path):
    wnids = imagenet_wnids()
    data = [(c, f"ILSVRC2012_val_{i:08d}.JPEG", f"ILSVRC2012_val_{i:08d}_{wnids[c]}.JPEG", encoded(i * 2))
            for i, c in enumerate([0, 1, 2, 0, 1, 2])]  # fmt: skip
    write_shards(tmp_path / "d", data, n_shards=1, names=["tench", "goldfish", "shark"])
    spec = load_protocol("imagenet_1shot").with_overrides({"n_per_class": "1", "n_classes": "3"})
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    assert sorted(listing.classes) == wnids[:3]
    assert listing.classes[wnids[0]] == (
        f"{wnids[0]}/ILSVRC2012_val_00000000.JPEG",
        f"{wnids[0]}/ILSVRC2012_val_00000003.JPEG",
    )
    assert listing.labels[wnids[1]] == imagenet_labels()[wnids[1]]
    assert "ImageNet" in listing.origin["label_source"]


def test_imagenet_label_out_of_range(tmp_path):
    table = pa.table({
        "image": pa.array([{"bytes": encoded(i), "path": f"{i}.png"} for i in range(3)], type=IMAGE),
        "label": pa.array([5, 1000, 2], type=pa.int64()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "x.parquet")
    spec = load_protocol("imagenet_1shot")
    with pytest.raises(DatasetError, match=r"(?s)x\.parquet row 1.*label 1000 is outside 0-999"):
        P.PARQUET.listing(DataSource(str(tmp_path / "x.parquet")), spec, tmp_path / "c")


def test_missing_columns_name_file_columns_and_fix(tmp_path):
    pq.write_table(pa.table({"caption": ["a"], "label": [0]}), tmp_path / "a.parquet")
    with pytest.raises(
        DatasetError,
        match=r"(?s)a\.parquet has no image column.*caption \(string\).*data_image_column",
    ):
        P.PARQUET.listing(DataSource(str(tmp_path / "a.parquet")), folder_spec(1), tmp_path / "c")
    pq.write_table(pa.table({"jpg": [b"x"], "target": [0]}), tmp_path / "b.parquet")
    with pytest.raises(
        DatasetError,
        match=r"(?s)b\.parquet has no label column.*target \(int64\).*data_label_column",
    ):
        P.PARQUET.listing(DataSource(str(tmp_path / "b.parquet")), folder_spec(1), tmp_path / "c")


def test_column_overrides_and_unnamed_rows(tmp_path):
    data = [encoded(i) for i in range(6)]
    table = pa.table({
        "thumb": [b"\x00"] * 6,
        "picture": data,
        "label": ["junk"] * 6,
        "target": [0, 1, 2, 0, 1, 2],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=4)
    source = DataSource(str(tmp_path / "s.parquet"), image_column="picture", label_column="target")
    listing = P.PARQUET.listing(source, folder_spec(1), tmp_path / "c")
    assert (
        listing.origin["image_column"] == "picture" and listing.origin["label_column"] == "target"
    )
    # the shard's first image names the extension of all its rows; each decodes by its bytes
    assert listing.classes["0"] == ("0/s-00000000.jpg", "0/s-00000003.jpg")
    assert listing.path("0/s-00000003.jpg").read() == data[3]
    assert read_rgb(listing.path("0/s-00000003.jpg")).shape == (32, 32, 3)
    with pytest.raises(DatasetError, match="no column 'pic' \\(data_image_column\\)"):
        P.PARQUET.listing(DataSource(source.data, image_column="pic"), folder_spec(1), tmp_path)


def test_null_bytes_in_a_chosen_row(tmp_path):
    table = pa.table({
        "image": pa.array([{"bytes": None if i == 0 else encoded(i), "path": f"{i}.png"}
                           for i in range(4)] + [None], type=IMAGE),
        "label": [0, 0, 1, 1, 2],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "n.parquet")
    spec = folder_spec(1)
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "n.parquet")), spec, tmp_path / "c")
    with pytest.raises(OSError, match=r"(?s)row 0 of .*n\.parquet has no image bytes"):
        listing.path("0/0.png").read()
    with pytest.raises(OSError, match=r"(?s)row 4 of .*n\.parquet has no image bytes"):
        listing.path("2/n-00000004.png").read()  # a null Image: no name, no bytes
    with pytest.raises(DatasetError, match=r"(?s)n\.parquet::row 0.*no image bytes"):
        build_manifest(spec, listing, tmp_path / "c")


def test_not_parquet_and_mixed_splits(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=r"(?s)bad\.parquet is not a readable parquet file"):
        P.PARQUET.listing(DataSource(str(tmp_path / "bad.parquet")), folder_spec(1), tmp_path)
    d = tmp_path / "repo" / "data"
    write_shards(d, rows()[:4], n_shards=1)
    (d / "validation-00000-of-00001.parquet").rename(d / "train-00000-of-00001.parquet")
    write_shards(d, rows()[4:8], n_shards=1)
    with pytest.raises(
        DatasetError,
        match=r"(?s)2 splits \(train, validation\).*--data '.*data/validation-\*\.parquet'",
    ):
        P.PARQUET.listing(DataSource(str(tmp_path / "repo")), folder_spec(1), tmp_path)


def test_duplicate_names(tmp_path):
    table = pa.table({
        "image": pa.array([{"bytes": encoded(i), "path": "dir/same.png"} for i in range(2)], type=IMAGE),
        "label": [0, 0],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"(?s)'0/same.png' appears twice .*row 0 and .*row 1"):
        P.PARQUET.listing(DataSource(str(tmp_path / "d.parquet")), folder_spec(1), tmp_path)


def test_sun397_class_names(tmp_path):
    names = ["abbey", "/b/bedroom", "apartment_building/outdoor"]
    write_shards(tmp_path / "d", rows(), n_shards=1, names=names)
    spec = load_protocol("sun397_1shot").with_overrides({"n_classes": "3", "n_per_class": "1"})
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    assert listing.labels == {
        "a/abbey": "abbey",
        "b/bedroom": "bedroom",
        "a/apartment_building/outdoor": "apartment building outdoor",
    }
    assert (
        listing.classes["b/bedroom"][0] == "SUN397/b/bedroom/img_00006_dog.JPEG"
    )  # the tree's path


def test_sun397_names_and_class_label_metadata():
    assert P.sun397_class("/a/abbey") == "a/abbey"
    assert P.sun397_class("abbey") == "a/abbey"
    assert P.sun397_class("apartment_building/outdoor") == "a/apartment_building/outdoor"
    schema = pa.schema([("label", pa.int64())], metadata=hf_metadata(["x", "y"]))
    assert P.class_label_names(schema, "label") == ["x", "y"]
    assert P.class_label_names(pa.schema([("label", pa.int64())]), "label") is None


def test_webdataset_style_columns(tmp_path):
    table = pa.table({"__key__": ["a/x1", "a/x2"], "jpg": [encoded(0), encoded(2)], "cls": [3, 4]})
    pq.write_table(table, tmp_path / "w.parquet")
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "w.parquet")), folder_spec(1), tmp_path)
    assert listing.classes == {"3": ("3/x1.jpg",), "4": ("4/x2.jpg",)}
    assert listing.origin["label_source"] == "column cls"


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_kept_rows_are_the_rows_bytes(kind):
    """The cache writer's views into a column equal each row's bytes (nulls and empties skipped),
    on a sliced column and on a struct's child as Hugging Face's Image holds them."""
    rng = np.random.default_rng(0)
    values = [
        None if i % 7 == 3 else (b"" if i % 5 == 1 else rng.bytes(int(rng.integers(1, 50))))
        for i in range(60)
    ]
    column = pa.array(values, type=kind).slice(5, 50)
    gone = [i % 11 == 4 for i in range(60)]  # the struct itself null: no bytes either
    image = pa.StructArray.from_arrays(
        [pa.array(values, type=kind)], names=["bytes"], mask=pa.array(gone)
    ).slice(5, 50)
    struct_values = [None if g else v for v, g in zip(values, gone, strict=True)]
    for col, vals in ((column, values), (R.child(image, "image.bytes"), struct_values)):
        idx = sorted(rng.choice(50, size=30, replace=False).tolist())
        kept, sizes, views = R._Rows(col).spans(idx)
        expect = [(i, vals[5 + i]) for i in idx if vals[5 + i]]
        assert kept == [i for i, _v in expect]
        assert [bytes(v) for v in views] == [v for _i, v in expect]
        assert sizes == [len(v) for _i, v in expect]


def test_a_damaged_row_group_is_one_problem_with_a_count(tmp_path):
    """Every row of a row group that cannot be read fails for one reason: one line names the
    group and the fix, with the count of entries, rather than one line per row."""
    (path,) = write_shards(tmp_path / "d", chosen_first(rows(), 1), n_shards=1)
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert column.path_in_schema == "image.bytes"
    start = column.dictionary_page_offset or column.data_page_offset
    with open(path, "r+b") as f:  # the group's image chunk overwritten past its page header
        f.seek(start + 64)
        f.write(b"\xff" * (column.total_compressed_size - 128))
    spec = folder_spec(1)
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    with pytest.raises(DatasetError) as err:
        build_manifest(spec, listing, tmp_path / "c")
    lines = [p for p in err.value.problems if "row group 0" in p]
    assert len(lines) == 1, err.value.problems
    assert "(and 3 more entries with the same problem)" in lines[0]
    assert lines[0].count("fix:") == 1 and "download the shard again" in lines[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_cache_writes_work_in_a_forked_child(tmp_path):
    """A data loader's forked worker reads rows whose groups were not kept yet: its writes run
    (the parent's writer thread does not exist in the child)."""
    write_shards(tmp_path / "d", chosen_first(rows(), 1), n_shards=1)
    spec = folder_spec(1)
    listing = P.PARQUET.listing(DataSource(str(tmp_path / "d")), spec, tmp_path / "c")
    names = list(listing.files)
    listing.path(names[0]).read()  # the parent's writer thread exists now
    R.flush()
    kept = set((tmp_path / "c" / "parquet").rglob("*.rows"))
    _FORKED["listing"], _FORKED["names"] = listing, names  # inherited by the child, not pickled
    with multiprocessing.get_context("fork").Pool(1) as pool:
        sizes = pool.apply_async(_read_all_and_flush).get(timeout=60)
    assert sizes == [len(listing.path(n).read()) for n in names]
    assert set((tmp_path / "c" / "parquet").rglob("*.rows")) > kept  # the child's writes


_FORKED: dict = {}


def _read_all_and_flush() -> list[int]:
    out = [len(_FORKED["listing"].path(n).read()) for n in _FORKED["names"]]
    R.flush()
    return out
