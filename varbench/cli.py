"""The `varbench` command line (typer): thin wrappers over the library; JSON on stdout."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from varbench.errors import UsageError, VarbenchError
from varbench.interrupt import Interrupted
from varbench.progress import setup_logging, stderr_console

app = typer.Typer(
    help="varbench: reproducible few-shot evaluation of image-variation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


class ListWhat(str, Enum):
    models = "models"
    protocols = "protocols"
    metrics = "metrics"
    encoders = "encoders"


def _parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(
                f"--weights {item!r}: expected NAME=PATH (e.g. inception=/w/pt_inception.pth)"
            )
        out[name.strip()] = path.strip()
    return out


def _parse_shard(text: str) -> tuple[int, int]:
    if text.strip() == "auto":
        from varbench.cluster import shard_from_slurm

        return shard_from_slurm()
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected INDEX/COUNT (e.g. 0/4) or auto") from None
    return i, n


def _echo_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command()
def run(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="adapter name (see `varbench list models`), or external: score samples made "
        "elsewhere (--set samples=PATH --set name=NAME; see `varbench export`)",
    ),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol name or .toml path"),
    data: Path = typer.Option(None, "--data", help="dataset root (not needed for demo_1shot)"),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="folder that holds run folders"),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="KEY=VALUE override (adapter, protocol or metric option); lists: guidance=1,4",
    ),
    model_path: str = typer.Option(
        None, "--model-path", help="local weights (diffusers folder or checkpoint)"
    ),
    device: str = typer.Option(
        "auto", "--device", help="cuda, cuda:1, cpu; auto = cuda when available"
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="float32, float16, bfloat16; auto = fp16 on GPU, fp32 on CPU"
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="retired: accepted and ignored (model calls are fixed groups, see --images-per-call)",
    ),
    images_per_call: int = typer.Option(
        None,
        "--images-per-call",
        help="generation group size G (default: the model's, >= 8 for diffusion models); "
        "another G is statistically equivalent, not bit-identical, and is another run",
    ),
    shard: str = typer.Option(
        "0/1",
        "--shard",
        help="INDEX/COUNT: generate only this shard's groups; auto: from SLURM array/srun "
        "variables (under torchrun each rank further takes its share)",
    ),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    cache_dir: Path = typer.Option(
        None,
        "--cache-dir",
        help="feature/validation cache (default $VARBENCH_CACHE or ~/.cache/varbench)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Generate samples for a model under a protocol, score them, write results.parquet.

    Example: varbench run --model copy --protocol demo_1shot --out runs
    """
    setup_logging(verbose)
    from varbench.interrupt import stop_on_signals
    from varbench.runner import RunConfig, parse_sets
    from varbench.runner import run as run_

    with stop_on_signals():
        rows = _run_config(
            run_,
            RunConfig(
                model=model,
                protocol=protocol,
                out=out,
                data=data,
                sets=parse_sets(set_),
                model_path=model_path,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                images_per_call=images_per_call,
                cache_dir=cache_dir,
                shard=_parse_shard(shard),
                weights=_parse_weights(weights),
            ),
        )
    if rows is not None:
        _echo_json(rows)


def _run_config(run_, cfg):
    """Run; under torchrun only rank 0 prints the rows (the others return None)."""
    import os

    rows = run_(cfg)
    return rows if os.environ.get("RANK", "0") in ("", "0") else None


@app.command()
def status(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run folders"),
    json_: bool = typer.Option(False, "--json", help="JSON instead of the table"),
) -> None:
    """Per run and sweep point: samples done/total, shards finished, scored, lock holders."""
    from varbench.status import render, runs_status

    if not runs.is_dir():
        raise UsageError(f"--runs {runs}: no such folder")
    st = runs_status(runs)
    if json_:
        _echo_json(st)
    else:
        sys.stdout.write(render(st) + "\n")


@app.command()
def leaderboard(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for results.parquet"
    ),
    protocol: str = typer.Option(None, "--protocol", "-p", help="only this protocol"),
    model: str = typer.Option(None, "--model", "-m", help="only this model"),
    fmt: Format = typer.Option(
        Format.table, "--format", "-f", help="table | csv | markdown | json"
    ),
    published: bool = typer.Option(
        True, "--published/--no-published", help="include the papers' numbers"
    ),
    columns: str = typer.Option(None, "--columns", help="comma-separated columns to show"),
    study: list[Path] = typer.Option(
        [], "--study", help="study file(s): add human preference columns (repeatable)"
    ),
    paired: bool = typer.Option(
        True,
        "--compare/--no-compare",
        help="json: add vs_best, each model's best point against the best model's, paired "
        "(reads every run's features from the cache); --no-compare skips it",
    ),
) -> None:
    """Show every run under --runs beside the published numbers, best FID first.

    Example: varbench leaderboard --runs runs --protocol demo_1shot --format csv
    """
    from varbench.leaderboard import collect, render, select

    df = select(collect(runs, include_published=published), protocol, model)
    if study:
        from varbench.leaderboard import DISPLAY_COLUMNS
        from varbench.study.join import attach

        df = attach(df, study)
        columns = columns or ",".join([*DISPLAY_COLUMNS[:-1], "human_pref", "source"])
    if fmt == Format.json and paired:  # best point of each model against the best, paired
        from varbench.compare import attach_to_leaderboard

        df = attach_to_leaderboard(df, runs)
    text = render(df, fmt.value, columns.split(",") if columns else None)
    if text is not None:
        sys.stdout.write(text)


@app.command("list")
def list_(
    what: ListWhat = typer.Argument(..., help="models | protocols | metrics | encoders"),
) -> None:
    """List registered models, protocols, metrics or encoders (JSON on stdout).

    Example: varbench list models
    """
    if what == ListWhat.models:
        from varbench.adapter import adapter_registry, get_adapter_class

        out = []
        for name in adapter_registry.names():
            try:
                cls = get_adapter_class(name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            defaults = cls.default_options()
            out.append(
                {
                    "name": name,
                    "description": cls.description,
                    "guidance_convention": cls.guidance_convention,
                    "hub_ids": list(cls.hub_ids),
                    "default_sweep": {a: list(defaults[a]) for a in cls.sweep_axes()},
                    "params": {p.name: p.default for p in cls.params if not p.sweep},
                }
            )
        out.append(
            {
                "name": "external",
                "description": "samples made outside varbench (folder or ADM .npz per sweep "
                "point), scored under the same protocol; see `varbench export`",
                "params": {"samples": "PATH (required)", "name": "NAME (required)"},
            }
        )
    elif what == ListWhat.protocols:
        from varbench.protocol import load_protocol_file, protocol_files

        out = []
        for name, path in protocol_files().items():
            s = load_protocol_file(path)
            out.append(
                {
                    "name": name,
                    "version": s.version,
                    "description": s.description,
                    "layout": s.layout,
                    "full_set": s.full_set,
                    "n_classes": s.n_classes,
                    "n_per_class": s.n_per_class,
                    "k": s.k,
                    "samples_per_cond": s.samples_per_cond,
                    "resolution": s.resolution,
                    "encoder": s.encoder,
                    "prepare": s.image_prep.label,
                    "metrics": list(s.metrics),
                    "example": s.example,
                }
            )
    elif what == ListWhat.metrics:
        from varbench.metrics import metric_registry

        out = [
            {
                "name": n,
                "keys": list(metric_registry.get(n).keys),
                "encoders": list(metric_registry.get(n).encoders),
            }
            for n in metric_registry.names()
        ]
    else:
        from varbench.encoders import encoder_registry

        out = [
            {"name": n, "resize_mode": encoder_registry.get(n).resize_mode}
            for n in encoder_registry.names()
        ]
    _echo_json(out)


@app.command()
def manifest(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: Path = typer.Option(None, "--data", help="dataset root (not needed for demo_1shot)"),
    set_: list[str] = typer.Option(
        [], "--set", help="protocol override KEY=VALUE (n_per_class, k, seed)"
    ),
    output: Path = typer.Option(
        None, "--output", help="write the manifest JSON here (default: stdout)"
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir"),
) -> None:
    """Validate a dataset and print (or write) the protocol's manifest.

    Example: varbench manifest --protocol folder_kshot --data ./my_classes --set n_per_class=5
    """
    setup_logging()
    from varbench.manifest import build_manifest, write_manifest
    from varbench.plan import load_dataset, parse_sets
    from varbench.protocol import load_protocol
    from varbench.results import default_cache_dir

    spec = load_protocol(protocol)
    sets = parse_sets(set_)
    if sets:
        spec = spec.with_overrides(sets)
    cache = Path(cache_dir or default_cache_dir())
    m, _ = build_manifest(spec, load_dataset(spec, data, cache), cache)
    if output:
        write_manifest(output, m)
        stderr_console.print(f"wrote {output} (sha256 {m.sha256})")
    else:
        _echo_json(m.to_json())


@app.command()
def export(
    protocol: str = typer.Option(..., "--protocol", "-p"),
    data: Path = typer.Option(None, "--data", help="dataset root (not needed for the demo)"),
    out: Path = typer.Option(..., "--out", help="folder to write the plan into"),
    set_: list[str] = typer.Option(
        [], "--set", help="protocol override KEY=VALUE (n_per_class, k, seed, ...)"
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir"),
) -> None:
    """Write a protocol's plan (conditioning PNGs, plan.csv/.jsonl, manifest, README) for
    generating its samples outside varbench; score them with `varbench run --model external`.

    Example: varbench export --protocol demo_1shot --out plan
    """
    setup_logging()
    from varbench.export import export_plan
    from varbench.plan import make_plan, parse_sets
    from varbench.protocol import load_protocol
    from varbench.results import default_cache_dir
    from varbench.runner import split_sets

    spec = load_protocol(protocol)
    sets, _, _ = split_sets(parse_sets(set_), {}, "export")
    if sets:
        spec = spec.with_overrides(sets)
    plan = make_plan(spec, data, Path(cache_dir or default_cache_dir()))
    _echo_json(export_plan(plan, out))


@app.command()
def validate(
    paths: list[Path] = typer.Argument(None, help="protocol .toml files (default: all shipped)"),
) -> None:
    """Validate protocol spec files.

    Example: varbench validate protocols/my_protocol.toml
    """
    from varbench.protocol import load_protocol_file, protocol_files

    files = paths or list(protocol_files().values())
    for p in files:
        load_protocol_file(p)
    _echo_json({"valid": [str(p) for p in files]})


class CheckFormat(str, Enum):
    json = "json"
    text = "text"
    junit = "junit"


@app.command()
def check(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="measured results: a runs folder or a results.parquet"
    ),
    baseline: Path = typer.Option(
        ..., "--baseline", help="baseline results: a runs folder or a results.parquet"
    ),
    tolerance: str = typer.Option(
        None,
        "--tolerance",
        help="'ci' (outside the baseline's interval in the worse direction fails), or allowed "
        "worsening per metric, e.g. fid=0.5,recall=0.01, or both: ci,kid=0.001 "
        "(default: 0 for fid,kid,precision,recall)",
    ),
    fmt: CheckFormat = typer.Option(
        CheckFormat.json,
        "--format",
        "-f",
        help="stdout: json (default), text (one line per finding) or junit XML",
    ),
) -> None:
    """CI regression gate: exit 1 if any metric is worse than its baseline beyond tolerance.

    One line per finding goes to stderr; --format chooses stdout. Measured rows with no baseline
    row are reported, not failed.

    Example: varbench check --runs runs --baseline results/baselines/demo_1shot.parquet --tolerance ci
    """
    from varbench.check import check as check_
    from varbench.check import load_rows, parse_tolerances, to_junit

    findings = check_(load_rows(runs), load_rows(baseline), parse_tolerances(tolerance))
    lines = [f.describe() for f in findings]
    if fmt != CheckFormat.text:
        for line in lines:
            stderr_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if fmt == CheckFormat.json:
        _echo_json([f.__dict__ for f in findings])
    elif fmt == CheckFormat.junit:
        sys.stdout.write(to_junit(findings))
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    if not any(f.status != "no_baseline" for f in findings):
        raise UsageError(
            "varbench check: no measured row matches a baseline row (model, protocol, params)"
        )
    n_bad = sum(not f.ok for f in findings)
    stderr_console.print(
        f"varbench check: {n_bad} regression(s) in {sum(f.status in ('ok', 'regression') for f in findings)} checked metric(s)",
        markup=False,
        highlight=False,
    )
    if n_bad:
        raise typer.Exit(1)


@app.command()
def report(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for run folders"
    ),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    out: Path = typer.Option(
        Path("report.html"), "--out", "-o", help="the HTML file to write (nothing else is written)"
    ),
    grid_classes: int = typer.Option(
        6, "--grid-classes", help="classes per sample grid (seeded choice)"
    ),
    grid_samples: int = typer.Option(
        6, "--grid-samples", help="samples shown per conditioning image"
    ),
    closest: int = typer.Option(
        8, "--closest", help="closest-to-a-reference pairs per sweep point"
    ),
    worst_classes: int = typer.Option(10, "--worst-classes", help="rows of the per-class table"),
    thumb_px: int = typer.Option(96, "--thumb-px", help="thumbnail size (pixels, longest side)"),
    seed: int = typer.Option(0, "--seed", help="seed of the grid's class choice"),
    study: list[Path] = typer.Option(
        [], "--study", help="study file(s): a human preference section (repeatable)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write one self-contained HTML report (leaderboard, plots, samples, provenance).

    Example: varbench report --runs runs --protocol demo_1shot --out report.html
    """
    setup_logging(verbose)
    from varbench.report import ReportOptions, write_report

    for name, value in (("--grid-classes", grid_classes), ("--grid-samples", grid_samples),
                        ("--closest", closest), ("--worst-classes", worst_classes)):  # fmt: skip
        if value < 0:
            raise UsageError(f"{name} {value}: must be >= 0")
    if thumb_px < 8:
        raise UsageError(f"--thumb-px {thumb_px}: must be >= 8")
    opts = ReportOptions(grid_classes, grid_samples, closest, worst_classes, thumb_px, seed=seed)
    path = write_report(runs, out, protocol or None, opts, studies=study or None)
    _echo_json({"report": str(path), "bytes": path.stat().st_size})


class PlotKind(str, Enum):
    sweep = "sweep"
    pr = "pr"
    memorisation = "memorisation"
    grid = "grid"
    contrast = "contrast"
    vendi = "vendi"


class PlotFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


@app.command()
def plot(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for run folders"
    ),
    kind: PlotKind = typer.Option(
        ..., "--kind", help="sweep | pr | memorisation | grid | contrast | vendi"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the figure files"),
    fmt: PlotFormat = typer.Option(PlotFormat.png, "--format", "-f", help="png | svg | pdf"),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    grid_classes: int = typer.Option(6, "--grid-classes"),
    grid_samples: int = typer.Option(6, "--grid-samples"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write the report's figures as files for papers (one per protocol, run or sweep point).

    Example: varbench plot --runs runs --kind sweep --out figures --format pdf
    """
    from varbench import plots
    from varbench.results import published_results
    from varbench.runview import load_runs

    found = load_runs(runs, None if kind == PlotKind.contrast else (protocol or None))
    names = protocol or list(dict.fromkeys(r.protocol for r in found))
    if kind == PlotKind.contrast:
        from varbench.contrast import contrast_panels
        from varbench.runview import measured_frame

        for line in contrast_panels(measured_frame(found), protocol or None)[1]:
            stderr_console.print(f"contrast: {line}")
    written = []
    for stem, fig in plots.figures(kind.value, found, published_results(), names,
                                   grid_classes, grid_samples, seed):  # fmt: skip
        written.append(str(plots.save(fig, out / plots.safe_stem(stem), fmt.value)))
    if not written:
        stderr_console.print(f"no {kind.value} figure: no run under {runs} has the data for it")
    _echo_json(written)


@app.command()
def baseline(
    runs: Path = typer.Option(
        Path("runs"), "--runs", help="folder searched recursively for results.parquet"
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="baseline parquet, e.g. results/baselines/NAME.parquet"
    ),
    protocol: list[str] = typer.Option(
        [], "--protocol", "-p", help="only these protocols (repeatable)"
    ),
    model: list[str] = typer.Option([], "--model", "-m", help="only these models (repeatable)"),
) -> None:
    """Freeze measured rows (values, intervals, provenance) as a baseline for `varbench check`.

    Example: varbench baseline --runs runs --protocol demo_1shot --out results/baselines/demo_1shot.parquet
    """
    from varbench.baseline import baseline_rows, write_baseline

    df = baseline_rows(runs, protocol or None, model or None)
    path = write_baseline(df, out)
    _echo_json({"baseline": str(path), "rows": len(df)})


@app.command()
def metrics(
    real: Path = typer.Option(
        ...,
        "--real",
        help="folder of real images (searched recursively), or a reference file: ADM batch "
        ".npz (arr_0 or mu/sigma), clean-fid .npz, torch-fidelity .pt, `varbench stats` .npz",
    ),
    fake: Path = typer.Option(..., "--fake", help="folder of generated images"),
    metrics_: str = typer.Option(
        "fid,kid,precision_recall",
        "--metrics",
        help="comma-separated metric names or result keys (precision, recall -> precision_recall)",
    ),
    encoder: str = typer.Option("inception", "--encoder", help="feature space of the metrics"),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    set_: list[str] = typer.Option(
        [], "--set", help="metric option KEY=VALUE, e.g. kid_subset_size=50"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1"),
    prepare: str = typer.Option(
        None,
        "--prepare",
        help="preparation of both folders' images, e.g. adm_center_crop (default: none)",
    ),
    resolution: int = typer.Option(
        None, "--resolution", help="target size of --prepare (e.g. 512)"
    ),
    fmt: Format = typer.Option(Format.json, "--format", "-f", help="json (default) or table"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score two image folders with registered metrics (like torch-fidelity's `fidelity`).

    Example: varbench metrics --real refs/ --fake samples/ --metrics fid,kid,precision,recall
    """
    setup_logging(verbose)
    from varbench.plan import parse_sets
    from varbench.scoring import score_folders

    values = score_folders(
        real,
        fake,
        [m.strip() for m in metrics_.split(",") if m.strip()],
        encoder=encoder,
        weights=_parse_weights(weights),
        sets=parse_sets(set_),
        device=device,
        cache_dir=cache_dir,
        prepare=prepare,
        resolution=resolution,
    )
    if fmt == Format.json:
        _echo_json(values)
    else:
        sys.stdout.write("".join(f"{k}\t{v}\n" for k, v in values.items()))


class CompareFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def compare(
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder searched for run folders"),
    protocol: str = typer.Option(..., "--protocol", "-p", help="protocol both runs used"),
    models: str = typer.Option(..., "--models", help="A,B: the two models to compare"),
    metrics_: str = typer.Option(
        "fid,precision,recall",
        "--metrics",
        help="comma-separated: fid, precision, recall, density, kid, fd_dinov2",
    ),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    fmt: CompareFormat = typer.Option(CompareFormat.table, "--format", "-f", help="table | json"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Is A better than B? A - B per metric and sweep point, paired 95 % interval, verdict.

    Example: varbench compare --runs runs --protocol demo_1shot --models oracle,copy
    """
    setup_logging(verbose)
    from varbench.compare import compare_runs, render_table

    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(f"--models {models!r}: expected two different models, A,B")
    rows = compare_runs(
        runs, protocol, names[0], names[1],
        [m.strip() for m in metrics_.split(",") if m.strip()],
        cache_dir, _parse_weights(weights),
    )  # fmt: skip
    if fmt == CompareFormat.json:
        _echo_json(rows)
    else:
        sys.stdout.write(render_table(rows))


@app.command()
def stats(
    real: Path = typer.Option(..., "--real", help="folder of reference images (recursive)"),
    out: Path = typer.Option(..., "--out", "-o", help="statistics file to write (.npz)"),
    encoder: str = typer.Option("inception", "--encoder", help="feature space of the statistics"),
    weights: list[str] = typer.Option([], "--weights", help="encoder weights file, NAME=PATH"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1"),
    prepare: str = typer.Option(
        None, "--prepare", help="preparation of the images, e.g. adm_center_crop (default: none)"
    ),
    resolution: int = typer.Option(
        None, "--resolution", help="target size of --prepare (e.g. 512)"
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="feature cache (default $VARBENCH_CACHE)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write reference statistics (mu, sigma in the ADM layout, with varbench's provenance).

    Example: varbench stats --real refs/ --out refs.npz && varbench metrics --real refs.npz --fake samples/ --metrics fid
    """
    setup_logging(verbose)
    from varbench.statsfile import reference_statistics, write_stats

    mu, sigma, meta = reference_statistics(
        real, encoder, _parse_weights(weights), device, cache_dir, prepare, resolution
    )
    path = write_stats(out, mu, sigma, meta)
    _echo_json({"stats": str(path), **{k: meta[k] for k in ("encoder", "encoder_key",
                "prepare_label", "n_images", "dim")}})  # fmt: skip


@app.command()
def fetch(
    protocol: str = typer.Option(
        None, "--protocol", "-p", help="fetch every encoder this protocol's metrics use"
    ),
    encoders: str = typer.Option(None, "--encoders", help="comma-separated encoder names"),
    model: str = typer.Option(None, "--model", "-m", help="also fetch this adapter's weights"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Download weights into the torch hub / Hugging Face caches so compute nodes can run offline.

    Example: varbench fetch --protocol imagenet_1shot --model ip_adapter
    """
    setup_logging(verbose)
    from varbench.fetching import fetch as fetch_

    names = [e.strip() for e in encoders.split(",") if e.strip()] if encoders else []
    _echo_json(fetch_(names, protocol, model))


from varbench.study.cli import study_app  # noqa: E402

app.add_typer(study_app, name="study")


def main() -> None:
    """Console-script entry: user errors print one clear message, no traceback."""
    try:
        app()
    except VarbenchError as exc:
        stderr_console.print(
            f"error: {exc}", markup=False, highlight=False, soft_wrap=True, style="red"
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr_console.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    except Interrupted as exc:
        stderr_console.print(
            f"interrupted by {exc}: every finished sample, feature and result is kept and no "
            "temporary file is left; re-run the same command to resume (the numbers will be "
            "identical)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
