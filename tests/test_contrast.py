"""Fig. 3 in one command: one-shot recall falls while full-set recall rises with guidance.

A test adapter blends a fresh draw of the class (what an unguided model might make) with the
conditioning image, more of the latter as guidance rises: copying wins full-set recall and
loses one-shot recall, the contrast the Semantica paper argues from.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from varbench.present.contrast import contrast_panels
from varbench.runner import RunConfig, run
from varbench.runs.views import load_runs, measured_frame

BLEND_SOURCE = '''
from __future__ import annotations
import numpy as np
from varbench.adapter import Adapter, Param
from varbench.plan.demo_data import CLASSES, demo_image


class Blend(Adapter):
    """Test plugin: (1 - w) * fresh class draw + w * conditioning image, w = g / (1 + g)."""

    description = "test plugin: guidance pulls samples towards the conditioning image"
    params = (Param("guidance", float, 1.0, "guidance", sweep=True),)

    def generate(self, requests):
        out = []
        for r in requests:
            g = float(r.point["guidance"])
            w = g / (1.0 + g)
            ci = CLASSES.index(r.class_name)
            cond = r.cond_image.astype(np.float64) / 255.0
            out.append([
                (1 - w) * demo_image(ci, seed).astype(np.float64) / 255.0 + w * cond
                for seed in r.seeds
            ])
        return out
'''


@pytest.fixture(scope="module")
def contrast_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blendplugin")
    (root / "vb_blend_plugin.py").write_text(BLEND_SOURCE)
    dist = root / "vb_blend_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vb-blend-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[varbench.adapters]\nguided_blend = vb_blend_plugin:Blend\n"
    )
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    out = tmp_path_factory.mktemp("contrast") / "runs"
    try:
        for protocol in ("demo_1shot", "demo_10shot"):
            run(
                RunConfig(
                    model="guided_blend", protocol=protocol, out=out, sets={"guidance": "0,20"}
                )
            )
        run(RunConfig(model="copy", protocol="demo_1shot", out=out))  # one side only
    finally:
        mp.undo()
    return out


def test_recall_moves_in_opposite_directions(contrast_runs):
    panels, missing = contrast_panels(measured_frame(load_runs(contrast_runs)))
    (panel,) = panels
    assert (panel.model, panel.one_shot, panel.full_set) == (
        "guided_blend",
        "demo_1shot",
        "demo_10shot",
    )

    def recall(rows):
        return {json.loads(r["params"])["guidance"]: r["recall"] for r in rows}

    one, full = recall(panel.one_rows), recall(panel.full_rows)
    assert one[20.0] < one[0.0]  # one-shot recall falls with guidance
    assert full[20.0] > full[0.0]  # full-set recall rises
    for r in panel.one_rows + panel.full_rows:  # the intervals drawn contain their estimates
        assert r["recall_lo"] <= r["recall"] <= r["recall_hi"]
    assert any("copy" in m and "demo_10shot" in m for m in missing)


def test_plot_contrast_cli_names_missing_side(contrast_runs, tmp_path):
    proc = run_cli("plot", "--runs", str(contrast_runs), "--kind", "contrast", "--out",
                   str(tmp_path), "--format", "png")  # fmt: skip
    (path,) = json.loads(proc.stdout)
    assert path.endswith("contrast.png") and (tmp_path / "contrast.png").stat().st_size > 5000
    assert "copy: runs on demo_1shot but none on its full-set counterpart" in proc.stderr


def test_report_has_contrast_section(contrast_runs):
    from varbench.present.report import build_report

    html = build_report(contrast_runs)
    assert 'id="contrast-section"' in html and "<svg" in html
    assert "copy: runs on demo_1shot but none" in html
