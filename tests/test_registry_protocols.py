"""Registries, third-party entry points, protocol specs and published results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, run_json

from varbench.adapter import adapter_registry, get_adapter_class
from varbench.core.registry import Registry
from varbench.errors import UsageError
from varbench.plan.protocol import load_protocol, parse_protocol, protocol_files
from varbench.present.leaderboard import published_rows_from_csv
from varbench.runs.results import published_results


def test_registry_lazy_and_did_you_mean():
    reg: Registry = Registry(kind="thing")
    reg.register("json_dumps", "json:dumps")
    assert "json" not in reg._loaded
    import json

    assert reg.get("json_dumps") is json.dumps
    with pytest.raises(UsageError, match="Did you mean 'json_dumps'"):
        reg.get("json_dump")
    with pytest.raises(ValueError):
        reg.register("Bad Name", "json:dumps")


def test_builtin_adapters_come_from_entry_points():
    assert {"copy", "augment", "oracle", "blend"} <= set(adapter_registry.names())
    cls = get_adapter_class("copy")
    assert cls.__module__ == "varbench_adapters.baselines"


def test_third_party_plugin_via_entry_point(tmp_path, plugin_env):
    models = run_json("list", "models", env=plugin_env)
    plugin = next(m for m in models if m["name"] == "slow_noise")
    assert plugin["default_sweep"] == {"mix": [0.5]}
    rows = run_json(
        "run",
        "--model",
        "slow_noise",
        "--protocol",
        "demo_1shot",
        "--out",
        str(tmp_path),
        "--set",
        "n_per_class=2",
        env=plugin_env,
    )
    assert rows[0]["model"] == "slow_noise" and rows[0]["n_samples"] == 20


def test_list_protocols_and_metrics():
    names = {p["name"] for p in run_json("list", "protocols")}
    assert {
        "demo_1shot",
        "imagenet_1shot",
        "imagenet_2shot",
        "imagenet_5shot",
        "imagenet_10shot",
        "sun397_1shot",
        "folder_kshot",
    } <= names
    assert {"fid", "kid", "precision_recall"} <= {m["name"] for m in run_json("list", "metrics")}


def test_protocol_counts_match_the_paper():
    im = load_protocol("imagenet_1shot")
    assert (im.n_classes, im.n_per_class, im.k, im.samples_per_cond) == (1000, 10, 1, 10)
    assert im.n_classes * im.n_per_class == 10_000
    sun = load_protocol("sun397_1shot")
    assert sun.n_classes * sun.n_per_class == 9_925 and sun.samples_per_cond == 25
    full = load_protocol("imagenet_10shot")
    assert full.k == full.n_per_class and full.samples_per_cond == 1
    assert load_protocol("imagenet_1shot").sweeps["ip_adapter"]["scale"] == [0.5, 1.0]


def test_protocol_validation_errors(tmp_path):
    base = dict(
        name="x",
        version=1,
        layout="imagefolder",
        n_per_class=10,
        k=3,
        seed=0,
        resolution=64,
        encoder="demo",
        metrics=["fid"],
    )
    with pytest.raises(UsageError, match="multiple of k"):
        parse_protocol(base, "x.toml")
    with pytest.raises(UsageError, match="Did you mean 'fid'"):
        parse_protocol({**base, "k": 1, "metrics": ["fdi"]}, "x.toml")
    with pytest.raises(UsageError, match="unknown key 'seeed'"):
        parse_protocol({**base, "k": 1, "seeed": 1}, "x.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\nversion = 1\nlayout = "demo"\nn_per_class = 4\nk = 8\nseed = 0\nresolution = 64\nencoder = "demo"\n'
    )
    proc = run_cli("validate", str(bad), check=False)
    assert proc.returncode == 2 and "bad.toml" in proc.stderr or "bad" in proc.stderr
    assert run_json("validate")["valid"]
    assert len(protocol_files()) >= 7


def test_published_parquet_matches_csv():
    pub = published_results()
    src = pd.DataFrame(published_rows_from_csv())
    assert len(pub) == len(src) > 40
    pd.testing.assert_series_equal(
        pub["fid"].reset_index(drop=True), src["fid"].astype(float), check_names=False
    )
    assert set(pub["source"]) == set(src["source"])
    assert (pub["source"] != "varbench").all()


def test_readme_quickstart_commands_exist():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "varbench run --model copy --protocol demo_1shot" in readme
    assert "pytest" in readme


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).parents[1]
    ci_line = [
        line for line in (root / ".ci" / "run").read_text().splitlines() if "pytest" in line
    ][0]
    assert ci_line in (root / "README.md").read_text()


def test_plugin_installed_after_first_lookup_is_found(tmp_path, monkeypatch):
    """Entry points are re-read once for an unknown name (a plugin installed since the first
    lookup in this process), so the lookup order of a long-lived process does not matter."""
    from varbench.adapter import adapter_registry

    assert "late_plugin_model" not in adapter_registry.names()  # entry points read now
    (tmp_path / "late_plugin.py").write_text("from varbench_adapters.copy import *\n")
    info = tmp_path / "late_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: late-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[varbench.adapters]\nlate_plugin_model = late_plugin:CopyAdapter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert adapter_registry.target("late_plugin_model") == "late_plugin:CopyAdapter"
    del adapter_registry._targets["late_plugin_model"]  # leave the registry as it was


def test_protocol_file_form_round_trips_and_runs_read_it_back():
    """``to_dict`` is the spec's own serialisation: ``parse_protocol`` gives back an equal spec
    (with its ``--set`` record), and ``protocol_of_run`` reads it from a run.json-shaped record
    as JSON leaves it; a run made before the record is read from its identity."""
    import json

    from varbench.plan.protocol import (
        RUN_KEY,
        load_protocol_file,
        parse_protocol,
        protocol_files,
        protocol_of_run,
    )

    for path in protocol_files().values():
        spec = load_protocol_file(path)
        for s in (spec, spec.with_overrides({"seed": "7", "k": "1"})):
            data = json.loads(json.dumps(s.to_dict()))
            back = parse_protocol(data, "x", recorded=("overrides",))
            assert back == s and back.label == s.label and back.identity() == s.identity()
            info = {RUN_KEY: data, "protocol": s.identity()}
            assert protocol_of_run(info, "run.json") == s
            legacy = protocol_of_run({"protocol": s.identity()}, "run.json", s.encoder)
            assert legacy.identity() == s.identity()
    with pytest.raises(UsageError, match="unknown key 'overrides'"):
        parse_protocol({**spec.to_dict(), "overrides": {"k": 1}}, "file.toml")
