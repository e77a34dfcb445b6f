"""Build a study file from finished runs: counterbalanced slices, checks, repeats, images.

Each main trial is one conditioning image and the same sample indices of two systems (a model
at one sweep point); ``plan`` lays them out in counterbalanced twins and slices, ``images``
stores every candidate at one size and format. The entry (platform, codes, consent,
questions) and the exclusion rule are stored with the study, so the file alone is the study.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from varbench import __version__
from varbench.core.progress import progress_bar
from varbench.errors import UsageError
from varbench.runs.views import PointView, RunView, finite, load_runs, only_run
from varbench.study.db import create_db
from varbench.study.images import ImageStore
from varbench.study.plan import Layout, plan
from varbench.study.platforms import Exit
from varbench.study.rules import ExclusionRule

log = logging.getLogger(__name__)

QUESTION_SINGLE = (
    "You will see an example image with an object, and two alternative images made from it. "
    "Which one is the better variation of the example image? Its main object should look "
    "similar to the example image."
)
# The Semantica paper's prompt to raters (Sec. 5, User Study), with its sets named by side.
QUESTION_SETS = (
    "You will see an example image with an object. You get to choose between two alternative "
    "sets, Set 1 and Set 2 of related images. Please choose the set that matches the following "
    "criteria: 1) The main object of the images in the set should look similar to the example "
    "image. 2) There should be diversity between the images in the set. e.g. background and "
    "perspective."
)


@dataclass(frozen=True)
class StudySpec:
    """What `varbench study create` was asked for."""

    runs: Path
    protocol: str
    models: tuple[str, ...]
    points: str = "best"  # best | all | JSON {"model": {param: value}}
    layout: Layout = field(default_factory=Layout)
    set_size: int = 1
    image_px: int = 512
    image_format: str = "jpeg"
    allow_tie: bool = False
    exit: Exit = field(default_factory=Exit)
    rule: ExclusionRule = field(default_factory=ExclusionRule)
    consent: str = ""
    questions: tuple[dict, ...] = ()
    seconds_per_trial: float = 6.0


@dataclass(frozen=True)
class System:
    """One side of a comparison: a model at one sweep point, its samples by (cond, index)."""

    label: str
    run: RunView
    point: PointView
    samples: dict[tuple[str, int], tuple[str, Path]]  # (cond, sample_index) -> (class, png)


def _pick_points(run: RunView, points: str, model: str) -> list[PointView]:
    if not run.points:
        raise UsageError(f"run {run.folder} has no finished sweep point")
    if points == "all":
        return list(run.points)
    if points == "best":
        scored = [(finite(p.row.get("fid")), i, p) for i, p in enumerate(run.points)]
        scored = [s for s in scored if s[0] is not None] or [(0.0, 0, run.points[0])]
        return [min(scored, key=lambda s: (s[0], s[1]))[2]]
    try:
        wanted = json.loads(points)
    except ValueError:
        raise UsageError(
            f"--points {points!r}: expected best, all or JSON such as "
            '\'{"sd_iv": {"guidance": 4.0}}\''
        ) from None
    if not isinstance(wanted, dict) or model not in wanted:
        return _pick_points(run, "best", model)
    match = [p for p in run.points if p.params == wanted[model]]
    if not match:
        have = ", ".join(json.dumps(p.params) for p in run.points)
        raise UsageError(f"--points: {model} has no point {json.dumps(wanted[model])} (has {have})")
    return match


def find_systems(spec: StudySpec) -> list[System]:
    """The runs of ``spec.models`` on ``spec.protocol`` (one each, same manifest) as systems."""
    runs = load_runs(spec.runs, [spec.protocol])
    systems: list[System] = []
    manifests: dict[str, str] = {}
    for model in spec.models:
        run = only_run(runs, model, spec.protocol, spec.runs)
        manifests[str(run.folder)] = str(run.info.get("manifest_sha256"))
        picked = _pick_points(run, spec.points, model)
        for point in picked:
            label = model if len(picked) == 1 else f"{model}[{point.pid}]"
            samples = {
                (str(e.get("cond")), int(e.get("sample_index", 0))): (
                    str(e.get("class", "")),
                    _inside(run.folder, point, e),
                )
                for e in point.index
            }
            if not samples:
                raise UsageError(f"{point.folder}/index.json: no samples listed; re-run the run")
            systems.append(System(label, run, point, samples))
    if len(set(manifests.values())) > 1:
        detail = "; ".join(f"{f}: {h[:12]}" for f, h in manifests.items())
        raise UsageError(
            f"--models: the runs used different manifests ({detail}); compare runs of the same "
            "protocol and data"
        )
    if len(systems) < 2:
        raise UsageError("--models: a study needs at least two models (or --points all)")
    return systems


def _inside(folder: Path, point: PointView, entry: dict) -> Path:
    """The sample file an index entry names, refused unless it lies under the run's folder."""
    path = point.sample_path(entry)
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise UsageError(
            f"{point.folder}/index.json names {entry.get('file')!r}, outside the run's folder "
            f"{folder}; the index is damaged or hand-edited: re-run the run"
        )
    return path


def _groups(spec: StudySpec, systems: list[System]) -> dict[str, list[list[int]]]:
    """Per conditioning image, the groups of ``set_size`` sample indices every system has."""
    common = set.intersection(*(set(s.samples) for s in systems))
    by_cond: dict[str, list[int]] = defaultdict(list)
    for cond, idx in sorted(common):
        by_cond[cond].append(idx)
    groups = {
        c: [ix[k : k + spec.set_size] for k in range(0, len(ix) - spec.set_size + 1, spec.set_size)]
        for c, ix in by_cond.items()
    }
    groups = {c: g for c, g in groups.items() if g}
    if not groups:
        raise UsageError(
            f"--set-size {spec.set_size}: the runs share no conditioning image with that many "
            "samples; lower --set-size"
        )
    return groups


def _validate(spec: StudySpec, out: Path) -> StudySpec:
    """``spec`` with its parts validated (exit URLs filled in), or a UsageError."""
    if spec.set_size < 1:
        raise UsageError(f"--set-size {spec.set_size}: must be >= 1")
    if not 64 <= spec.image_px <= 2048:
        raise UsageError(f"--image-px {spec.image_px}: must be between 64 and 2048")
    if not 1 <= spec.seconds_per_trial <= 600:
        raise UsageError(f"--seconds-per-trial {spec.seconds_per_trial}: must be 1-600")
    spec.layout.validate()
    spec.rule.validate()
    if Path(out).exists():
        raise UsageError(f"--out {out}: already exists; pick a new file or delete it")
    return replace(spec, exit=spec.exit.validate())


def _write_trials(con, spec: StudySpec, systems: list[System], trials: list[dict],
                  images: ImageStore) -> None:  # fmt: skip
    """Insert the planned trials with their stored images (ids of originals for repeats)."""
    cond_run = systems[0].run
    ids: list[int] = []
    with progress_bar("study images", len(trials)) as advance:
        for t in trials:
            cls, _ = systems[t["left"]].samples[(t["cond"], t["group"][0])]
            cond_path = cond_run.data_path(t["cond"])
            if cond_path is None:
                raise UsageError(
                    f"conditioning image {t['cond']} is not under the run's data root "
                    f"{cond_run.data_root}; make that data available (the path in "
                    f"{cond_run.folder}/run.json) and re-run `varbench study create`"
                )
            sides = {}
            for side in ("left", "right"):
                sysm = systems[t[side]]
                seed = t["corrupt_seed"] if t.get("corrupt") == side else -1
                sides[side] = [images.candidate(sysm.samples[(t["cond"], i)][1], sysm.label, seed)
                               for i in t["group"]]  # fmt: skip
            repeat_of = ids[t["repeat_of"]] if "repeat_of" in t else None
            slice_id = None if t["slice"] is None else t["slice"] + 1
            cur = con.execute(
                "INSERT INTO trials (kind, slice_id, class_label, cond, sample_index, samples, "
                "cond_image, left_model, right_model, left_images, right_images, expected, "
                "repeat_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (t["kind"], slice_id, cond_run.class_label_of.get(cls, cls), t["cond"],
                 t["group"][0], json.dumps(t["group"]), images.conditioning(cond_path),
                 systems[t["left"]].label, systems[t["right"]].label,
                 json.dumps(sides["left"]), json.dumps(sides["right"]), t.get("expected"),
                 repeat_of),
            )  # fmt: skip
            ids.append(int(cur.lastrowid))
            advance(1)


def _info(spec: StudySpec, systems: list[System]) -> dict[str, str]:
    """The study's metadata rows: provenance, layout, entry and exit, and the exclusion rule."""
    run = systems[0].run
    main, checks, repeats = spec.layout.per_slice()
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "varbench_version": __version__,
        "protocol": spec.protocol,
        "manifest_sha256": str(run.info.get("manifest_sha256")),
        "seed": str(spec.layout.seed),
        "set_size": str(spec.set_size),
        "allow_tie": "1" if spec.allow_tie else "0",
        "question": QUESTION_SETS if spec.set_size > 1 else QUESTION_SINGLE,
        "layout": json.dumps({**asdict(spec.layout), "main_per_slice": main,
                              "checks_per_slice": checks, "repeats_per_slice": repeats}),
        "images": json.dumps({"px": spec.image_px, "format": spec.image_format}),
        "exit": json.dumps(spec.exit.as_dict()),
        "rule": spec.rule.to_json(),
        "consent": spec.consent,
        "questions": json.dumps(list(spec.questions)),
        "seconds_per_trial": str(spec.seconds_per_trial),
        "closed": "0",
        "systems": json.dumps([{"label": s.label, "model": s.run.model, "run_id": s.run.run_id,
                                "params": s.point.params} for s in systems]),
    }  # fmt: skip


def create_study(spec: StudySpec, out: Path) -> dict:
    """Write the study file ``out`` (atomically: a temp file renamed at the end)."""
    out = Path(out)
    spec = _validate(spec, out)
    systems = find_systems(spec)
    trials, n_slices, warnings = plan(spec.layout, len(systems), _groups(spec, systems))
    main, checks, repeats = spec.layout.per_slice()
    if not spec.rule.catches_one_side_clicker(checks, main + repeats):
        warnings.append(f"a rater who always clicks one side fails {checks // 2} of {checks} "
                        f"checks per slice and gives {main + repeats} side votes, too few for the "
                        "side rule: the rule cannot catch them; raise --check-share or "
                        "--slice-trials")  # fmt: skip
    if checks and checks <= spec.rule.max_failed_checks:
        warnings.append(f"{checks} checks per slice and --max-failed-checks "
                        f"{spec.rule.max_failed_checks}: no rater can fail the checks rule; "
                        "raise --check-share or lower --max-failed-checks")  # fmt: skip
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    con = create_db(tmp)
    try:
        con.execute("BEGIN")
        con.executemany("INSERT INTO slices (id, planned) VALUES (?, ?)",
                        [(s + 1, spec.layout.raters_per_slice) for s in range(n_slices)])  # fmt: skip
        images = ImageStore(con, spec.image_px, spec.image_format)
        _write_trials(con, spec, systems, trials, images)
        if (size_note := images.size_warning()) is not None:
            warnings.append(size_note)
        con.executemany("INSERT INTO meta VALUES (?, ?)", list(_info(spec, systems).items()))
        n_images = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        os.replace(tmp, out)
    except BaseException:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        raise
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    for w in warnings:
        log.warning("study: %s", w)
    counts = defaultdict(int)
    for t in trials:
        counts[t["kind"]] += 1
    return {"study": str(out), "systems": [s.label for s in systems], "trials": dict(counts),
            "slices": n_slices, "per_slice": {"main": main, "checks": checks,
                                              "repeats": repeats},
            "raters_per_slice": spec.layout.raters_per_slice, "images": int(n_images),
            "warnings": warnings}  # fmt: skip
