"""LSUN: LMDBs made in code (WebP and JPEG values), the exported folder, broken databases."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import run_cli, run_json
from PIL import Image

from varbench.core.hashing import pixel_sha256
from varbench.errors import DatasetError
from varbench.plan.datasets import DatasetListing
from varbench.plan.demo_data import demo_image
from varbench.plan.lmdb_keys import LmdbLayoutError, iter_keys
from varbench.plan.lsun import key_name, list_lsun, sniff
from varbench.plan.manifest import build_manifest, select
from varbench.plan.protocol import load_protocol

PROTOCOLS = Path(__file__).parents[1] / "protocols"


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return buf.getvalue()


def lsun_key(i: int) -> bytes:
    """A 40-hex key like the release's."""
    return hashlib.sha1(str(i).encode()).hexdigest().encode()


def make_lmdb(path: Path, n: int, extra: dict[bytes, bytes] | None = None) -> Path:
    """An LMDB of ``n`` demo images, alternately WebP and JPEG, plus ``extra`` raw values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(lsun_key(i), encode(demo_image(i % 10, i), ("WEBP", "JPEG")[i % 2]))
        for k, v in (extra or {}).items():
            txn.put(k, v)
    env.close()
    return path


def spec(name: str = "lsun_church_1shot", n: int = 6, k: int = 2):
    return load_protocol(name).with_overrides({"n_per_class": str(n), "k": str(k)})


@pytest.fixture(scope="module")
def church(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("lsun")
    make_lmdb(data / "church_outdoor_train_lmdb", 40)
    return data


def test_key_names_are_file_safe_and_distinct():
    keys = [b"00ab", b"a/b", b"..", b".x", b"%2Ex", b"\xff\x00", "é".encode()]
    names = [key_name(k) for k in keys]
    assert names[0] == "00ab" and len(set(names)) == len(names)
    assert all("/" not in n and not n.startswith(".") and n.isprintable() for n in names)


def test_sniff_by_content_not_name():
    arr = demo_image(0, 0)
    assert [sniff(encode(arr, f)) for f in ("WEBP", "JPEG", "PNG")] == [".webp", ".jpg", ".png"]
    assert sniff(b"GIF89a....") is None and sniff(b"") is None


def cursor_keys(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = list(txn.cursor().iternext(keys=True, values=False))
    env.close()
    return keys


@pytest.mark.parametrize("value_size", [0, 40, 3000, 9000])  # empty, inline, 1 and 3 overflow pages
def test_tree_walk_lists_the_cursor_keys(tmp_path, value_size):
    """The page walker yields exactly the cursor's keys, in order, through a 3-level tree."""
    rng = np.random.default_rng(value_size)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for _ in range(6000 if value_size < 1000 else 1500):
            key = rng.bytes(int(rng.integers(1, 120)))  # varied lengths, any bytes
            txn.put(key, rng.bytes(value_size))
    depth = env.stat()["depth"]
    env.close()
    assert depth >= (3 if value_size < 1000 else 2)
    assert list(iter_keys(tmp_path / "db")) == cursor_keys(tmp_path / "db")


def test_tree_walk_refuses_layouts_it_does_not_know(tmp_path):
    env = lmdb.open(str(tmp_path / "dup"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"1")
    env.close()
    env = lmdb.open(str(tmp_path / "dup"), map_size=1 << 24, max_dbs=2)
    env.open_db(b"sub")  # a named database: a sub-database node in the main tree
    env.close()
    with pytest.raises(LmdbLayoutError):
        list(iter_keys(tmp_path / "dup"))


def _root_leaf(db: Path) -> tuple[bytearray, int, int]:
    """The bytes of ``db``/data.mdb, its page size and the offset of its root page (a leaf)."""
    raw = bytearray((db / "data.mdb").read_bytes())
    psize = struct.unpack_from("<I", raw, 16 + 24)[0]  # the free db's md_pad holds the page size
    # each meta page: header, magic .. mapsize, free db, main db (its root at 128), txnid at 144
    _txnid, root = max(struct.unpack_from("<128xQ8xQ", raw, at)[::-1] for at in (0, psize))
    assert raw[root * psize + 10] == 0x02  # P_LEAF: a few small entries fit in the root
    return raw, psize, root * psize


@pytest.mark.parametrize("reach", ["far", "page", "one_byte"])
def test_corrupt_key_size_is_a_layout_error_naming_the_file(tmp_path, reach):
    """A leaf node's key size pointing past its page is refused, not sliced into a short key."""
    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(5):
            txn.put(lsun_key(i), b"v" * 10)
    env.close()
    assert list(iter_keys(db)) == sorted(lsun_key(i) for i in range(5))
    raw, psize, at = _root_leaf(db)
    lower, upper = struct.unpack_from("<HH", raw, at + 12)
    assert lower == 16 + 2 * 5
    (node,) = struct.unpack_from("<H", raw, at + 16 + 2 * 4)  # the last (largest) key's node
    assert struct.unpack_from("<H", raw, at + node + 6) == (40,)  # its key size: 40 hex digits
    ksize = {"far": 0xFFFF, "page": psize, "one_byte": psize - node - 8 + 1}[reach]
    struct.pack_into("<H", raw, at + node + 6, ksize)
    (db / "data.mdb").write_bytes(raw)
    with pytest.raises(LmdbLayoutError, match="key size") as err:
        list(iter_keys(db))
    assert str(db / "data.mdb") in str(err.value)
    assert "outside the page" in str(err.value)


def test_key_out_of_order_is_a_layout_error(tmp_path):
    """A key changed in place so the leaf is no longer sorted: refused, not yielded."""
    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key in (b"aa", b"bb", b"cc"):
            txn.put(key, b"1")
    env.close()
    raw, _psize, at = _root_leaf(db)
    (node,) = struct.unpack_from("<H", raw, at + 16 + 2 * 1)  # b"bb"
    assert raw[at + node + 8 : at + node + 10] == b"bb"
    raw[at + node + 8 : at + node + 10] = b"zz"
    (db / "data.mdb").write_bytes(raw)
    with pytest.raises(LmdbLayoutError, match="out of order") as err:
        list(iter_keys(db))
    assert str(db / "data.mdb") in str(err.value)


def test_cursor_fallback_selects_the_same(church, tmp_path, monkeypatch):
    import varbench.plan.lsun as lsun

    s = spec()
    walked = list_lsun(church, s, tmp_path / "cache")

    def refuse(path):
        raise LmdbLayoutError("test")
        yield  # pragma: no cover

    monkeypatch.setattr(lsun, "iter_keys", refuse)
    fallback = list_lsun(church, s, tmp_path / "cache")
    assert fallback.classes == walked.classes and fallback.sources == walked.sources


def test_lmdb_listing_extracts_only_the_top_of_the_ranking(church, tmp_path):
    s = spec()
    listing = list_lsun(church, s, tmp_path / "cache")
    (names,) = listing.classes.values()
    keys = sorted(lsun_key(i).decode() for i in range(40))
    refs, _cond, held = select(tuple(keys), "church_outdoor", 6, 2, 0)
    assert set(names) == set(refs) | set(held[:6])  # n references + n held out, nothing more
    assert listing.root == (church / "church_outdoor_train_lmdb").resolve()
    assert listing.sources["church_outdoor"].n_files == 40
    # bytes exactly as stored, named by content; WebP and JPEG both present
    env = lmdb.open(str(listing.root), readonly=True, lock=False)
    with env.begin() as txn:
        for name in names:
            assert listing.path(name).read_bytes() == txn.get(name.encode())
    env.close()
    assert {listing.path(n).suffix for n in names} == {".webp", ".jpg"}


def test_selection_equals_build_manifest_on_every_name(church, tmp_path):
    """The extract nests: same references, conditioning and held-out order as the full listing."""
    cache = tmp_path / "cache"
    s = spec()
    m_lsun, _ = build_manifest(s, list_lsun(church, s, cache), cache)
    # the same names as a plain folder holding every entry
    full = tmp_path / "full"
    full.mkdir()
    env = lmdb.open(str(church / "church_outdoor_train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        for k, v in txn.cursor():
            (full / k.decode()).write_bytes(v)
    env.close()
    names = tuple(sorted(p.name for p in full.iterdir()))
    listing = DatasetListing(
        root=full, layout="imagefolder", classes={"church_outdoor": names}, labels={}
    )
    m_full, _ = build_manifest(s, listing, cache)
    again, _ = build_manifest(s, list_lsun(church, s, cache), cache)  # cached extract: no drift
    assert again.sha256 == m_lsun.sha256
    (a,), (b,) = m_lsun.classes, m_full.classes
    assert a.references == b.references and a.conditioning == b.conditioning
    assert a.heldout == b.heldout[: len(a.heldout)] and len(a.heldout) == 6
    assert m_lsun.pixel_sha256 == m_full.pixel_sha256
    # and references / conditioning nest across n_per_class and k, as on every protocol
    m_small, _ = build_manifest(spec(n=4, k=1), list_lsun(church, spec(n=4, k=1), cache), cache)
    assert set(m_small.classes[0].references) <= set(a.references)


def test_added_entry_is_drift(tmp_path):
    data = tmp_path / "d"
    make_lmdb(data / "church_outdoor_train_lmdb", 12)
    s = spec(n=2, k=1)
    before, _ = build_manifest(s, list_lsun(data, s, tmp_path / "c"), tmp_path / "c")
    env = lmdb.open(str(data / "church_outdoor_train_lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"zzzz-new", encode(demo_image(1, 99), "JPEG"))
    env.close()
    after, _ = build_manifest(s, list_lsun(data, s, tmp_path / "c"), tmp_path / "c")
    assert before.classes[0].n_files == 12 and after.classes[0].n_files == 13
    assert before.sha256 != after.sha256


def test_exported_folder(tmp_path):
    data = tmp_path / "exported"
    data.mkdir()
    for i in range(10):
        ext, fmt = [("webp", "WEBP"), ("jpg", "JPEG"), ("png", "PNG")][i % 3]
        (data / f"{lsun_key(i).decode()}.{ext}").write_bytes(encode(demo_image(i, i), fmt))
    (data / "README.txt").write_text("not an image")
    s = spec(n=3, k=1)
    listing = list_lsun(data, s, tmp_path / "cache")
    (names,) = listing.classes.values()
    assert len(names) == 6 and listing.sources["church_outdoor"].n_files == 10
    m, _ = build_manifest(s, listing, tmp_path / "cache")
    every = tuple(sorted(p.name for p in data.glob("*.*") if p.suffix != ".txt"))
    refs, cond, held = select(every, "church_outdoor", 3, 1, 0)
    assert m.classes[0].references == refs and m.classes[0].conditioning == cond
    assert m.classes[0].heldout == held[:3]


def broken(tmp_path: Path, case: str) -> Path:
    data = tmp_path / case
    db = data / "church_outdoor_train_lmdb"
    if case == "missing_data_mdb":
        db.mkdir(parents=True)
        (db / "lock.mdb").write_bytes(b"")
    elif case == "truncated":
        make_lmdb(db, 30)
        mdb = db / "data.mdb"
        mdb.write_bytes(mdb.read_bytes()[: mdb.stat().st_size // 2])
    elif case == "not_lmdb":
        db.mkdir(parents=True)
        (db / "data.mdb").write_bytes(b"this is not an lmdb file" * 400)
    elif case == "empty":
        make_lmdb(db, 0)
    elif case == "no_lsun_here":
        (data / "bedroom_train_lmdb").mkdir(parents=True)
        (data / "notes.txt").write_text("x")
    elif case == "value_not_image":
        # every entry is chosen (n_extract = 2 x 4 = 8 of 8), so the bad one is always reached
        make_lmdb(db, 7, {b"bad-key": b"<html>not an image</html>"})
    elif case == "value_truncated_jpeg":
        make_lmdb(db, 7, {b"cut-key": encode(demo_image(0, 0), "JPEG")[:200]})
    return data


CASES = {
    "missing_data_mdb": "missing",
    "truncated": "is truncated",
    "not_lmdb": "is not a readable LMDB database",
    "empty": "empty database",
    "no_lsun_here": "another category?",
    "value_not_image": "entry 'bad-key'",
    "value_truncated_jpeg": "cut-key",
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_lmdb_is_one_named_error(tmp_path, case):
    data = broken(tmp_path, case)
    s = spec(n=4, k=1)
    with pytest.raises(DatasetError) as err:
        build_manifest(s, list_lsun(data, s, tmp_path / "cache"), tmp_path / "cache")
    text = str(err.value)
    assert CASES[case] in text and str(data) in text and "fix" in text
    assert len(err.value.problems) == 1


@pytest.mark.parametrize("case", ["truncated", "value_not_image"])
def test_broken_lmdb_cli_has_no_traceback(tmp_path, case):
    data = broken(tmp_path, case)
    proc = run_cli(
        "manifest", "--protocol", "lsun_church_1shot", "--data", str(data),
        "--set", "n_per_class=4", "--set", "k=1", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and CASES[case] in proc.stderr
    assert "Traceback" not in proc.stderr


def test_read_only_copy_without_lock_file(church, tmp_path):
    """A shared copy: read-only folder and files, no lock.mdb; nothing is written beside it."""
    src = church / "church_outdoor_train_lmdb"
    data = tmp_path / "ro"
    db = data / "church_outdoor_train_lmdb"
    db.mkdir(parents=True)
    (db / "data.mdb").write_bytes((src / "data.mdb").read_bytes())
    (db / "data.mdb").chmod(0o444)
    db.chmod(0o555)
    try:
        s = spec()
        listing = list_lsun(data, s, tmp_path / "cache")
        assert len(listing.classes["church_outdoor"]) == 12
        assert sorted(p.name for p in db.iterdir()) == ["data.mdb"]
    finally:
        db.chmod(0o755)


def test_cli_manifest_and_run_copy(church, tmp_path):
    """`varbench manifest` on the shipped protocol, then a full `run --model copy`."""
    sets = ["--set", "n_per_class=6", "--set", "k=2"]
    m = run_json("manifest", "--protocol", "lsun_church_1shot", "--data", str(church), *sets)
    assert m["classes"][0]["n_files"] == 40 and len(m["classes"][0]["references"]) == 6
    # the shipped protocol's encoders need weights that are not here: same protocol, demo encoder
    text = (PROTOCOLS / "lsun_church_1shot.toml").read_text()
    text = text.replace('encoder = "inception"', 'encoder = "demo"')
    lines = [
        'metrics = ["fid", "precision_recall"]' if ln.startswith("metrics") else ln
        for ln in text.splitlines()
    ]
    proto = tmp_path / "lsun_church_1shot.toml"
    proto.write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    args = ["run", "--model", "copy", "--protocol", str(proto), "--data", str(church), *sets]
    args += ["--set", "resolution=64", "--out", str(out)]
    rows = run_json(*args)
    (row,) = rows
    assert row["protocol"].startswith("lsun_church_1shot[") and row["n_samples"] == 6
    assert row["precision"] == 1.0  # copies of references lie on the reference manifold
    (run,) = [p.parent for p in out.rglob("manifest.json")]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["root"] == str((church / "church_outdoor_train_lmdb").resolve())
    assert manifest["classes"][0]["references"] == m["classes"][0]["references"]
    samples = {
        pixel_sha256(np.asarray(Image.open(p))) for p in run.rglob("*.png") if "samples" in p.parts
    }
    assert len(samples) == 2  # 2 conditioning images, 3 identical copies each
    # the held-out margin (oracle, memorisation reference curve) is n_per_class entries
    assert manifest["classes"][0]["heldout"] == m["classes"][0]["heldout"]
    assert len(manifest["classes"][0]["heldout"]) == 6


def test_protocols_identity_and_sizes():
    b, c = load_protocol("lsun_bedroom_1shot"), load_protocol("lsun_church_1shot")
    for p, cat in ((b, "bedroom"), (c, "church_outdoor")):
        sizes = (p.n_per_class, p.k, p.samples_per_cond, p.resolution, p.n_classes)
        assert sizes == (10000, 1000, 10, 256, 1)
        assert p.identity()["category"] == cat and p.prepare == "adm_center_crop"
    # protocols without a category keep their identity (and run ids) unchanged
    assert "category" not in load_protocol("imagenet_1shot").identity()
    with pytest.raises(Exception, match="category"):
        dataclasses.replace(b, category=None).validate()
