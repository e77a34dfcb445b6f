"""Every container lists, selects and reads the same images as a class-folder tree of them."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import layout_builders as lb
import numpy as np
import pytest

from varbench.core.files import Blob, read_rgb
from varbench.errors import DatasetError, UsageError
from varbench.plan.layouts import DataSource, detect, open_listing
from varbench.plan.layouts.base import expand
from varbench.plan.manifest import build_manifest
from varbench.plan.protocol import load_protocol


def spec_for(n: int = 3, k: int = 1):
    base = load_protocol("imagenet_1shot")
    return dataclasses.replace(
        base, n_classes=None, n_per_class=n, k=k, resolution=64, encoder="demo"
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, DataSource]:
    t = tmp_path_factory.mktemp("layouts")
    return {
        "class folders": DataSource(str(lb.folders(t / "folders"))),
        "tar": DataSource(str(lb.official_tar(t / "official"))),
        "flat folder + labels": DataSource(str(lb.kaggle(t / "kaggle"))),
        "webdataset": DataSource(lb.webdataset(t / "wds")),
        "tar.gz": DataSource(str(lb.targz(t / "val.tar.gz"))),
        "parquet": DataSource(str(lb.parquet(t / "hf")) + "/validation-*.parquet"),
    }


@pytest.mark.parametrize("n,k", [(3, 1), (5, 5)])
def test_every_container_gives_the_folder_manifest(data, tmp_path, n, k):
    spec = spec_for(n, k)
    manifests = {}
    for name, source in data.items():
        assert detect(source).name == name
        listing = open_listing(source, spec, tmp_path / "cache")
        assert listing.origin["container"] in (name, "tar", "flat folder", "class folders")
        manifests[name], _ = build_manifest(spec, listing, tmp_path / "cache")
    ref = manifests.pop("class folders")
    assert len(ref.classes) == lb.N_CLASSES
    gz = manifests.pop("tar.gz")
    for name, m in manifests.items():
        assert m.sha256 == ref.sha256, name
        assert m.pixel_sha256 == ref.pixel_sha256, name
        assert [c.label for c in m.classes] == [c.label for c in ref.classes], name
    # tar.gz keeps 2n per class: the same references, conditioning images, counts and name
    # hashes, and the held-out list's first n (all of it when a class has at most 2n images)
    assert gz.pixel_sha256 == ref.pixel_sha256
    for a, b in zip(gz.classes, ref.classes, strict=True):
        assert (a.references, a.conditioning) == (b.references, b.conditioning)
        assert (a.n_files, a.listing_sha256) == (b.n_files, b.listing_sha256)
        assert a.heldout == b.heldout[:n]
    assert (gz.sha256 == ref.sha256) == (2 * n >= lb.PER_CLASS)


def test_entries_decode_like_the_files(data, tmp_path):
    spec = spec_for()
    folder = open_listing(data["class folders"], spec, tmp_path)
    for name in ("tar", "webdataset", "parquet", "tar.gz"):
        listing = open_listing(data[name], spec, tmp_path)
        for cls, entries in listing.classes.items():  # tar.gz: the 2n it keeps
            assert set(entries) <= set(folder.classes[cls])
        assert listing.classes == folder.classes or name == "tar.gz"
        m, _ = build_manifest(spec, listing, tmp_path)
        for _c, rel in m.references:
            src = listing.path(rel)
            assert np.array_equal(read_rgb(src), read_rgb(folder.path(rel)))
        if name != "tar.gz":
            assert all(isinstance(listing.path(r), Blob) for _c, r in m.references)


def test_tar_index_is_cached_and_reads_in_place(data, tmp_path):
    spec = spec_for()
    listing = open_listing(data["tar"], spec, tmp_path)
    assert len(list((tmp_path / "tarindex").glob("*.json"))) == 1
    assert "devkit" in listing.origin["label_source"]
    again = open_listing(data["tar"], spec, tmp_path)
    assert again.classes == listing.classes


def test_brace_pattern():
    assert [p.name for p in expand("/x/s-{0008..0011}.tar")] == [
        "s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"
    ]  # fmt: skip


def test_unknown_layout_lists_every_layout(tmp_path):
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(UsageError) as e:
        detect(DataSource(str(odd)))
    for name in ("parquet", "tar.gz", "webdataset", "tar", "flat folder + labels", "class folders"):
        assert name in str(e.value)


def test_truncated_tar_is_named(data, tmp_path):
    tar = Path(data["tar"].data)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(
        (tar.parent / "ILSVRC2012_devkit_t12.tar.gz").read_bytes()
    )
    with pytest.raises(DatasetError, match="truncated") as e:
        open_listing(DataSource(str(cut)), spec_for(), tmp_path / "cache")
    assert str(cut) in str(e.value)


def test_ground_truth_line_count_must_match(data, tmp_path):
    tar = Path(data["tar"].data)
    short = tmp_path / "short.tar"
    with tarfile.open(tar) as src, tarfile.open(short, "w") as dst:
        for m in src.getmembers()[:-2]:
            dst.addfile(m, src.extractfile(m))
    devkit = tar.parent / "ILSVRC2012_devkit_t12.tar.gz"
    with pytest.raises(DatasetError, match="absent") as e:
        open_listing(DataSource(str(short), labels=str(devkit)), spec_for(), tmp_path)
    assert "2 image(s)" in str(e.value) and "ILSVRC2012_val_00000020" in str(e.value)
    assert f"labels {lb.N_CLASSES * lb.PER_CLASS} images" in str(e.value)


def test_csv_naming_absent_images_and_unlabelled(data, tmp_path):
    root = Path(data["flat folder + labels"].data)
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    extra = tmp_path / "extra.csv"
    extra.write_text(
        (root / "LOC_val_solution.csv").read_text() + "ILSVRC2012_val_09999999,n01440764 1 2 3 4\n"
    )
    with pytest.raises(DatasetError, match="absent"):
        open_listing(DataSource(str(val), labels=str(extra)), spec_for(), tmp_path)


def test_webdataset_duplicate_keys(data, tmp_path):
    first = expand(data["webdataset"].data)[0]
    twin = tmp_path / "wds"
    twin.mkdir()
    for i in range(2):
        (twin / f"s-{i}.tar").write_bytes(first.read_bytes())
    with pytest.raises(DatasetError, match="duplicate key"):
        open_listing(DataSource(str(twin / "s-{0..1}.tar")), spec_for(), tmp_path)


def test_webdataset_labels_are_read_once_per_shard_version(tmp_path, monkeypatch):
    from varbench.plan.layouts import webdataset as W

    shards = lb.webdataset(tmp_path / "wds")
    reads: list[str] = []
    real = W._read_small
    monkeypatch.setattr(W, "_read_small", lambda index, m: reads.append(m) or real(index, m))
    first = open_listing(DataSource(shards), spec_for(), tmp_path / "c")
    n_small = len(reads)
    n0, n1 = len(lb.images()[0::2]), len(lb.images()[1::2])
    assert n_small == 2 * n0 + n1  # .cls each, and .json in the first shard
    again = open_listing(DataSource(shards), spec_for(), tmp_path / "c")
    assert len(reads) == n_small and again.classes == first.classes  # from the cache
    # a shard written again with other labels is read again
    with tarfile.open(expand(shards)[1], "w") as tf:
        for name, _wnid, data in lb.images()[1::2]:
            key = name.rsplit(".", 1)[0]
            lb.add(tf, f"{key}.JPEG", data)
            lb.add(tf, f"{key}.cls", b"7")
    changed = open_listing(DataSource(shards), spec_for(), tmp_path / "c")
    assert len(reads) == n_small + n1  # the changed shard's .cls only
    assert len(changed.classes[lb.imagenet_wnids()[7]]) == n1


def test_webdataset_label_out_of_range(tmp_path):
    with tarfile.open(tmp_path / "s-0.tar", "w") as tf:
        lb.add(tf, "a.jpg", lb.images()[0][2])
        lb.add(tf, "a.cls", b"1000")
    with pytest.raises(DatasetError, match="outside 0-999"):
        open_listing(DataSource(str(tmp_path / "s-0.tar")), spec_for(), tmp_path)


def test_tar_member_not_an_image_is_named_before_generation(tmp_path):
    items = lb.images()
    with tarfile.open(tmp_path / "t.tar", "w") as tf:
        for name, wnid, data in items:
            lb.add(tf, f"{wnid}/{name}", b"not a jpeg" if name.endswith("01.JPEG") else data)
    spec = spec_for(n=lb.PER_CLASS)
    listing = open_listing(DataSource(str(tmp_path / "t.tar")), spec, tmp_path)
    with pytest.raises(DatasetError, match="t.tar::.*ILSVRC2012_val_00000001.JPEG"):
        build_manifest(spec, listing, tmp_path)


def test_classes_short_for_n_per_class(data, tmp_path):
    spec = spec_for(n=lb.PER_CLASS + 1)
    listing = open_listing(data["tar"], spec, tmp_path)
    with pytest.raises(DatasetError, match="needs n_per_class"):
        build_manifest(spec, listing, tmp_path)


PROTOCOL = """
name = "tiny_imagenet_layouts"
version = 1
description = "test: ImageNet-named classes from any container"
layout = "imagefolder"
class_names = "imagenet"
n_per_class = 3
k = 1
seed = 0
resolution = 64
encoder = "demo"
metrics = ["fid", "precision_recall"]
"""


def test_runs_from_every_container_are_the_same_run(data, tmp_path):
    """Same run id (manifest), same samples (seeds from entry names) and the same metric bits;
    provenance names the container."""
    from conftest import run_json

    proto = tmp_path / "tiny.toml"
    proto.write_text(PROTOCOL)
    rows = {}
    for name in ("class folders", "tar", "webdataset", "flat folder + labels", "parquet", "tar.gz"):
        out = tmp_path / name.replace(" ", "_")
        got = run_json(
            "run", "--model", "augment", "--protocol", str(proto), "--data", data[name].data,
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        )  # fmt: skip
        rows[name] = got[0]
    ref = rows.pop("class folders")
    for name, row in rows.items():
        if name != "tar.gz":  # its manifest keeps n held out of this class size (see above)
            assert row["run_id"] == ref["run_id"], name
        for key in ("fid", "precision", "recall"):
            assert row[key] == ref[key], (name, key)
        assert json.loads(row["data_source"])["container"] in name
    # reports and studies show a container run's references: the entry's bytes as a file
    from varbench.runs.views import load_runs

    tree = Path(data["class folders"].data)
    for name in ("tar", "parquet", "webdataset"):
        (view,) = load_runs(tmp_path / name.replace(" ", "_"))
        refs = [r for c in view.manifest["classes"] for r in c["references"]]
        for rel in refs:
            shown = view.data_path(rel)
            assert shown is not None and shown.read_bytes() == (tree / rel).read_bytes(), rel


def test_oracle_export_and_manifest_cli_from_a_tar(data, tmp_path):
    """The oracle (held-out images), export (conditioning PNGs) and `manifest`'s summary."""
    from conftest import run_cli, run_json

    proto = tmp_path / "tiny.toml"
    proto.write_text(PROTOCOL)
    cache = str(tmp_path / "cache")
    fids = []
    for name in ("class folders", "tar"):
        row = run_json(
            "run", "--model", "oracle", "--protocol", str(proto), "--data", data[name].data,
            "--out", str(tmp_path / name.replace(" ", "_")), "--cache-dir", cache,
        )[0]  # fmt: skip
        fids.append(row["fid"])
    assert fids[0] == fids[1]
    run_json("export", "--protocol", str(proto), "--data", data["tar"].data,
             "--out", str(tmp_path / "plan"), "--cache-dir", cache)  # fmt: skip
    assert len(list((tmp_path / "plan").rglob("*.png"))) == lb.N_CLASSES
    proc = run_cli("manifest", "--protocol", str(proto), "--data", data["webdataset"].data,
                   "--cache-dir", cache)  # fmt: skip
    assert "webdataset" in proc.stderr and "images per class" in proc.stderr
    assert json.loads(proc.stdout)["sha256"]


def test_sun397_tree_tar_and_tar_gz_agree(tmp_path):
    """SUN397 as it unpacks, as a tar and as the .tar.gz: same classes, references and hashes."""
    cats = ["a/abbey", "a/apartment_building/outdoor", "b/bedroom"]
    tree = tmp_path / "tree"
    with tarfile.open(tmp_path / "SUN397.tar", "w") as tf, tarfile.open(tmp_path / "SUN397.tar.gz", "w:gz") as gz:  # fmt: skip
        for ci, cat in enumerate(cats):
            for i in range(5):
                data = lb.jpeg(lb.demo_image(ci, 50 + i))
                rel = f"SUN397/{cat}/sun_{ci}{i:03d}.jpg"
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_bytes(data)
                lb.add(tf, rel, data)
                lb.add(gz, rel, data)
    spec = dataclasses.replace(
        load_protocol("sun397_1shot"), n_classes=None, n_per_class=2, k=1, encoder="demo"
    )
    got = {}
    for data in (tree, tmp_path / "SUN397.tar", tmp_path / "SUN397.tar.gz"):
        listing = open_listing(DataSource(str(data)), spec, tmp_path / "cache")
        got[data.name], _ = build_manifest(spec, listing, tmp_path / "cache")
    ref = got.pop("tree")
    assert [c.name for c in ref.classes] == sorted(cats)
    for name, m in got.items():
        assert m.pixel_sha256 == ref.pixel_sha256, name
        assert [c.references for c in m.classes] == [c.references for c in ref.classes], name
    assert got["SUN397.tar"].sha256 == ref.sha256


def test_cli_routes_labels_and_data_options(data, tmp_path):
    """--labels and --set data_*=... reach the layout; without --data they are a usage error."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import run_cli

    from varbench.plan.layouts.base import imagenet_wnids

    proto = tmp_path / "tiny.toml"
    proto.write_text(PROTOCOL)
    wnids = imagenet_wnids()
    items = lb.images()
    pq.write_table(
        pa.table({"picture": [d for _n, _w, d in items], "synset": [w for _n, w, _d in items]}),
        tmp_path / "odd.parquet",
    )
    cache = str(tmp_path / "cache")
    bad = run_cli("manifest", "--protocol", str(proto), "--data", str(tmp_path / "odd.parquet"),
                  "--cache-dir", cache, check=False)  # fmt: skip
    assert bad.returncode != 0 and "data_label_column" in bad.stderr  # "picture" was found
    ok = run_cli("manifest", "--protocol", str(proto), "--data", str(tmp_path / "odd.parquet"),
                 "--set", "data_image_column=picture", "--set", "data_label_column=synset",
                 "--cache-dir", cache)  # fmt: skip
    classes = [c["name"] for c in json.loads(ok.stdout)["classes"]]
    assert classes == sorted({w for _n, w, _d in items}) and set(classes) <= set(wnids)
    # a flat folder of the images with a two-column CSV given by --labels
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["filename,label"]
    for name, wnid, payload in items:
        (flat / name).write_bytes(payload)
        rows.append(f"{name},{wnids.index(wnid)}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    got = run_cli("manifest", "--protocol", str(proto), "--data", str(flat),
                  "--labels", str(tmp_path / "mine.csv"), "--cache-dir", cache)  # fmt: skip
    ref = run_cli("manifest", "--protocol", str(proto), "--data", data["class folders"].data,
                  "--cache-dir", cache)  # fmt: skip
    assert json.loads(got.stdout)["sha256"] == json.loads(ref.stdout)["sha256"]
    assert "csv" in got.stderr
    orphan = run_cli("manifest", "--protocol", str(proto), "--labels", "x.csv", check=False)
    assert orphan.returncode != 0 and "--data" in orphan.stderr


def test_a_folder_holding_the_archive_points_at_it(data, tmp_path):
    tar = Path(data["tar"].data)
    with pytest.raises(DatasetError, match="point --data at the archive itself"):
        open_listing(DataSource(str(tar.parent)), spec_for(), tmp_path)


def test_tar_cut_at_a_member_boundary_or_damaged_mid_way(data, tmp_path):
    """tarfile stops quietly at a damaged header: the index must not list half an archive."""
    tar = Path(data["tar"].data)
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    raw = tar.read_bytes()
    cut = tmp_path / "cut.tar"  # ends right after a member's data: no end-of-archive blocks
    end = members[9].offset_data + -(-members[9].size // 512) * 512
    cut.write_bytes(raw[:end])
    with pytest.raises(DatasetError, match="no end-of-archive marker"):
        open_listing(DataSource(str(cut)), spec_for(), tmp_path / "c1")
    hurt = tmp_path / "hurt.tar"  # the 10th member's header overwritten
    at = members[10].offset
    hurt.write_bytes(raw[:at] + b"\x7f" * 512 + raw[at + 512 :])
    with pytest.raises(DatasetError, match=f"header at byte {at:,} is not a tar header"):
        open_listing(DataSource(str(hurt)), spec_for(), tmp_path / "c2")


def test_truncated_tar_gz_is_named(data, tmp_path):
    gz = Path(data["tar.gz"].data)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size * 2 // 3])
    with pytest.raises(DatasetError, match="truncated or corrupt") as e:
        open_listing(DataSource(str(cut)), spec_for(), tmp_path)
    assert "gunzip" in str(e.value)


def test_tar_links_read_their_targets(tmp_path):
    """A tarred tree in which GNU tar stored repeated files as hard links (and one symbolic link)
    lists every name, each read at its target's bytes, like the tree it was made from."""
    tree = lb.folders(tmp_path / "tree")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    first, second, third = files[0], files[1], files[-1]
    second.unlink()
    second.hardlink_to(first)  # the tree as tar sees it: two names of one inode
    third.unlink()
    third.symlink_to(Path("..") / first.parent.name / first.name)
    tar = tmp_path / "tree.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(tree, arcname=".")
    with tarfile.open(tar) as tf:  # the archive really holds links
        kinds = {m.name.removeprefix("./"): m for m in tf.getmembers()}
    rel = lambda p: p.relative_to(tree).as_posix()  # noqa: E731
    assert kinds[rel(second)].islnk() and kinds[rel(third)].issym()
    spec = spec_for()
    folder = open_listing(DataSource(str(tree)), spec, tmp_path / "c")
    listing = open_listing(DataSource(str(tar)), spec, tmp_path / "c")
    assert listing.classes == folder.classes
    for p in (first, second, third):
        assert listing.path(rel(p)).read() == first.read_bytes()
