"""`varbench report` and `varbench plot` on real runs, the report opened in headless Chromium.

Runs: the demo's copy and oracle baselines, a guidance sweep of the tiny random-weight SD-IV
pipeline (--model-path), and the augment baseline on a class-folder dataset (protocol TOML given
by path) whose class folder is named ``<img src=x onerror=alert(1)>``.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_folder_dataset, run_cli, run_json
from PIL import Image

HOSTILE = "<img src=x onerror=alert(1)>"
FOLDER_TOML = """
name = "hostile_folder"
version = 1
description = "class folders, one with a hostile name"
layout = "imagefolder"
n_per_class = 4
k = 1
seed = 0
resolution = 64
encoder = "demo"
metrics = ["fid", "kid", "precision_recall", "bootstrap"]
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One runs folder with the four runs described in the module docstring."""
    from tiny_pipelines import save_tiny_sd_image_variation

    root = tmp_path_factory.mktemp("report")
    cache = tmp_path_factory.getbasetemp() / "varbench-cache"
    env = {"VARBENCH_CACHE": str(cache), "VARBENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    out = root / "runs"
    for model in ("copy", "oracle"):
        run_json("run", "--model", model, "--protocol", "demo_1shot", "--out", str(out), env=env)
    sdiv = save_tiny_sd_image_variation(root / "sdiv")
    run_json(
        "run", "--model", "sd_iv", "--model-path", str(sdiv), "--protocol", "demo_1shot",
        "--set", "steps=2", "--set", "resolution=64", "--set", "guidance=1,4",
        "--set", "n_per_class=2", "--set", "k=1", "--out", str(out), env=env,
    )  # fmt: skip
    data = make_folder_dataset(root / "data", {HOSTILE: 8, "plain_class": 8, "other": 8})
    toml = root / "hostile_folder.toml"
    toml.write_text(FOLDER_TOML)
    run_json("run", "--model", "augment", "--protocol", str(toml), "--data", str(data),
             "--out", str(out), env=env)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report_out")
    path = folder / "report.html"
    info = run_json("report", "--runs", str(runs), "--out", str(path))
    assert info["report"] == str(path)
    return path


def test_report_is_one_self_contained_file(report):
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html"]
    text = report.read_text()
    # Nothing that could fetch: every src/href is a data: URI or an in-document reference.
    for attr in re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', text):
        assert attr.startswith("data:") or attr.startswith("#"), attr
    assert 'http-equiv="Content-Security-Policy"' in text and "default-src 'none'" in text
    assert len(re.findall(r"<script", text)) == 1
    assert "@import" not in text
    assert all(u.startswith("#") for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", text))


def test_hostile_class_name_is_escaped(report):
    text = report.read_text()
    assert HOSTILE not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_leaderboard_rows_match_the_parquet_files(runs, report):
    text = report.read_text()
    rows = pd.concat([pd.read_parquet(p) for p in runs.rglob("results.parquet")])
    assert len(rows) == 5  # copy, oracle, sd_iv x 2 guidance values, augment
    table = text[
        text.index('id="leaderboard"') : text.index("</table>", text.index('id="leaderboard"'))
    ]
    for r in rows.itertuples():
        assert f'data-v="{float(r.fid)!r}"' in table
        assert f'data-v="{float(r.recall)!r}"' in table
        assert f"{r.fid_lo:.4g}, {r.fid_hi:.4g}" in table


def test_plot_writes_every_kind(runs, tmp_path):
    made = {}
    for kind, fmt in (("sweep", "svg"), ("pr", "png"), ("grid", "pdf"), ("memorisation", "png")):
        made[kind] = run_json("plot", "--runs", str(runs), "--kind", kind, "--out",
                              str(tmp_path / kind), "--format", fmt)  # fmt: skip
    protocols = {
        json.loads((p.parent / "run.json").read_text())["protocol_label"]
        for p in runs.glob("*/run.json")
    }
    assert len(made["sweep"]) == len(protocols) and len(made["pr"]) == len(protocols)
    assert len(made["grid"]) == 5  # one per sweep point
    assert made["memorisation"] == []  # these protocols do not compute memorisation
    for path in made["pr"]:
        assert Image.open(path).format == "PNG"
    for path in made["grid"]:
        assert Path(path).read_bytes().startswith(b"%PDF")
    sweep_sd = [p for p in made["sweep"] if "demo_1shot" in Path(p).name and "n_per_class" in p]
    assert sweep_sd and "guidance" in Path(sweep_sd[0]).read_text()


def _closest_fixture(runs: Path, tmp_path: Path) -> Path:
    """A copy of the copy run with a memorisation artifact written by hand (rendering test)."""
    import shutil

    src = next(p.parent for p in runs.glob("copy-*/run.json"))
    dst = tmp_path / "runs" / src.name
    shutil.copytree(src, dst)
    point = dst / "points" / "default"
    index = json.loads((point / "index.json").read_text())
    manifest = json.loads((dst / "manifest.json").read_text())
    ref_of_cond = [manifest["pixel_sha256"][e["cond"]] for e in index]
    dists = [0.5 + 0.001 * i for i in range(len(index))]
    dists[7] = 0.0125
    art = {
        "bin_edges": np.linspace(0, 1, 11).tolist(),
        "samples_hist": [0, 0, 0, 0, 0, 100, 0, 0, 0, 0],
        "heldout_hist": [0, 0, 0, 10, 50, 40, 0, 0, 0, 0],
        "samples_nn": dists,
        "samples_nn_reference": ref_of_cond,
        "heldout_nn": [0.45] * 100,
    }
    (point / "artifacts" / "memorisation.json").write_text(json.dumps(art))
    return tmp_path / "runs"


def test_closest_pairs_and_memorisation_render(runs, tmp_path):
    from varbench.present.report import ReportOptions, build_report

    text = build_report(_closest_fixture(runs, tmp_path), opts=ReportOptions(closest=3))
    section = text[text.index("Closest to a reference") :]
    assert "d = 0.0125" in section and "d = 0.5<" in section and "d = 0.501<" in section
    assert "memorisation" in text.lower() and "held-out reals" in text


# Hostile strings in a run's own results (model name, params, notes): markup, an attribute
# break-out, an entity that must stay literal, and non-ASCII text that must stay verbatim.
HOSTILE_MODEL = "copy<script>alert(1)</script>\"onmouseover=alert(2) x='&amp; ünïcødé ✓"
HOSTILE_PARAMS = '{"note": "<script>alert(3)</script>", "q": "\\"onmouseover=alert(4) &amp;"}'
HOSTILE_NOTES = '<script>alert(5)</script> "onmouseover=alert(6) &amp; 注意'


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each td (decoded by the parser)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _hostile_fixture(runs: Path, tmp_path: Path) -> Path:
    """The copy and oracle runs, the copy run's model name, params and notes made hostile."""
    import shutil

    from varbench.runs.results import read_results, write_results

    out = tmp_path / "runs"
    for model in ("copy", "oracle"):
        src = next(p.parent for p in runs.glob(f"{model}-*/run.json"))
        shutil.copytree(src, out / src.name)
    run = next(out.glob("copy-*"))
    rows = read_results(run / "results.parquet").to_dict("records")
    for row in rows:  # params are not JSON any more: the point keeps its folder ("default")
        row.update(model=HOSTILE_MODEL, params=HOSTILE_PARAMS[1:], notes=HOSTILE_NOTES)
    write_results(run / "results.parquet", rows)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "model": HOSTILE_MODEL}))
    return out


def test_hostile_results_strings_are_escaped_and_the_report_is_deterministic(runs, tmp_path):
    from markupsafe import escape

    from varbench.present.report import ReportOptions, build_report

    opts = ReportOptions(grid_classes=1, grid_samples=1, closest=0, worst_classes=1)
    folder = _hostile_fixture(runs, tmp_path)
    text = build_report(folder, opts=opts)
    assert build_report(folder, opts=opts) == text  # the same runs give the same bytes
    assert "<script>alert" not in text.lower()
    params = HOSTILE_PARAMS[1:]
    for value in (HOSTILE_MODEL, params, HOSTILE_NOTES):
        assert str(escape(value)) in text  # escaped once: &amp; arrives as &amp;amp;
    assert "&amp;amp;" in text and "ünïcødé ✓" in text and "注意" in text  # UTF-8, not entities
    parser = _Tags()
    parser.feed(text)
    assert [t for t, _ in parser.tags].count("script") == 1  # the page's own sorting script
    assert not [(t, a) for t, attrs in parser.tags for a, _ in attrs if a.startswith("on")]
    # Decoded, the cells show the data exactly: leaderboard (model, params), per-point notes.
    assert HOSTILE_MODEL in parser.cells and params in parser.cells
    assert HOSTILE_NOTES in parser.cells
    heading = f"<h2>Run {next(folder.glob('copy-*')).name}</h2><p>{escape(HOSTILE_MODEL)} on "
    assert heading in text
    table = text[text.index('<table id="paired">') :]
    assert str(escape(HOSTILE_MODEL)) in table[: table.index("</table>")]


def test_report_in_headless_chromium(report, tmp_path):
    from browser import chromium_binary, open_page

    if chromium_binary() is None:
        if os.environ.get("VARBENCH_REQUIRE_BROWSER"):  # set by .ci/run: never skip there
            pytest.fail("chromium not installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed (.ci/run installs it: apt-get install -y chromium)")

    log = open_page(
        report,
        {
            "leaderboard": "document.getElementById('leaderboard').innerText",
            "body": "document.body.innerText",
            "images": "Array.from(document.images).filter(i => i.naturalWidth > 0).length",
            "broken": "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length",
            "svgs": "document.querySelectorAll('svg').length",
            "hostile_imgs": "document.querySelectorAll('img[src=\"x\"]').length",
            "sorted": "(function(){var th=document.querySelectorAll('#leaderboard th');"
            "var col=Array.from(th).findIndex(h=>h.textContent==='fid');th[col].click();"
            "return Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
            ".map(r=>r.cells[col].getAttribute('data-v'))})()",
        },
    )
    (tmp_path / "report.png").write_bytes(log.screenshot)
    assert log.console_errors == []
    assert log.requests == []
    assert log.dialogs == []
    assert log.values["hostile_imgs"] == 0
    assert HOSTILE in log.values["body"]
    lb = log.values["leaderboard"]
    for model in ("copy", "oracle", "sd_iv", "augment"):
        assert model in lb
    assert log.values["images"] > 20 and log.values["broken"] == 0
    assert log.values["svgs"] >= 4
    fids = [float(v) for v in log.values["sorted"] if v]
    assert fids == sorted(fids) and len(fids) >= 5
    shot = np.asarray(Image.open(__import__("io").BytesIO(log.screenshot)).convert("L"), float)
    assert shot.std() > 10 and (shot < 128).mean() > 0.005  # text and plots, not a blank page


def test_report_cli_errors_name_the_flag(tmp_path):
    proc = run_cli("report", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"),
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "--runs" in proc.stderr


def test_junit_and_text_formats(runs, tmp_path):
    base = tmp_path / "base.parquet"
    run_json("baseline", "--runs", str(runs), "--protocol", "demo_1shot", "--model", "copy",
             "--out", str(base))  # fmt: skip
    junit = run_cli("check", "--runs", str(runs), "--baseline", str(base), "--tolerance", "ci",
                    "--format", "junit").stdout  # fmt: skip
    suite = ET.fromstring(junit)
    assert suite.get("failures") == "0"
    names = {c.get("name").split()[0] for c in suite.iter("testcase")}
    assert {"fid", "precision", "recall"} <= names
    # rows of other models and protocols have no baseline row: reported (skipped), not failed
    assert any(c.find("skipped") is not None for c in suite.iter("testcase"))
