"""Build a study file from finished runs: balanced pairs, seeded sides, checks, repeats, images.

Each main trial is one conditioning image and the same sample indices of two systems (a model
at one sweep point). Pairs cycle through every (model pair, conditioning image) combination in
seeded order, so pairs and images stay balanced; left/right is a seeded coin. Attention checks
put a heavily corrupted sample on one side (the other side is the known answer); repeats show a
main trial again later with the sides swapped. Images are copied in as thumbnails, so the file
alone is the study.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from varbench import __version__
from varbench.core.progress import progress_bar
from varbench.errors import UsageError
from varbench.runs.views import PointView, RunView, finite, load_runs, only_run
from varbench.study.db import create_db

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
    trials: int = 200
    seed: int = 0
    check_share: float = 0.1
    repeat_share: float = 0.1
    set_size: int = 1
    thumb_px: int = 512
    allow_tie: bool = False


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
                    point.sample_path(e),
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


def corrupt(image: Image.Image, seed: int) -> Image.Image:
    """A heavily corrupted copy: 4x4 tiles shuffled, colours inverted, strong noise."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    rng = np.random.default_rng(seed)
    h, w = arr.shape[0] // 4 * 4, arr.shape[1] // 4 * 4
    tiles = [
        arr[i : i + h // 4, j : j + w // 4]
        for i in range(0, h, h // 4)
        for j in range(0, w, w // 4)
    ]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[r * 4 + c]] for c in range(4)], axis=1) for r in range(4)]
    out = 255.0 - np.concatenate(rows, axis=0)
    out += rng.normal(0, 90, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


class ImageStore:
    """Thumbnails written into the study's ``images`` table, each distinct image once."""

    def __init__(self, con: sqlite3.Connection, size: int):
        self.con, self.size = con, size
        self._ids: dict[tuple[str, int], int] = {}

    def _put(self, image: Image.Image) -> int:
        image = image.convert("RGB")
        if max(image.size) > self.size:
            image.thumbnail((self.size, self.size), Image.LANCZOS)
        buf = io.BytesIO()
        if max(image.size) <= 256:
            image.save(buf, format="PNG")
            mime = "image/png"
        else:
            image.save(buf, format="JPEG", quality=92)
            mime = "image/jpeg"
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        row = self.con.execute("SELECT id FROM images WHERE sha256 = ?", (digest,)).fetchone()
        if row:
            return int(row[0])
        return int(
            self.con.execute(
                "INSERT INTO images (sha256, mime, data) VALUES (?, ?, ?)", (digest, mime, data)
            ).lastrowid
        )

    def file(self, path: Path, corrupt_seed: int = -1) -> int:
        """Id of the thumbnail of ``path`` (corrupted with ``corrupt_seed`` when >= 0)."""
        key = (str(path), corrupt_seed)
        if key not in self._ids:
            try:
                with Image.open(path) as im:
                    im.load()
                    image = corrupt(im, corrupt_seed) if corrupt_seed >= 0 else im.copy()
            except (OSError, ValueError) as exc:
                raise UsageError(
                    f"{path}: cannot read this image ({exc}); re-run the run that made it"
                ) from None
            self._ids[key] = self._put(image)
        return self._ids[key]


def _plan(spec: StudySpec, systems: list[System]) -> tuple[list[dict], list[str]]:
    """The trials (dicts of names and sample paths) and any warnings, from the seed alone."""
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
    conds = sorted(groups)
    pairs = list(combinations(range(len(systems)), 2))
    combos = [(p, c) for p in pairs for c in conds]
    rng = np.random.default_rng(spec.seed)
    seen: dict[tuple, int] = defaultdict(int)
    warnings: list[str] = []
    trials: list[dict] = []
    while len(trials) < spec.trials:
        for i in rng.permutation(len(combos)):
            if len(trials) >= spec.trials:
                break
            (ia, ib), cond = combos[i]
            k = seen[(ia, ib, cond)]
            seen[(ia, ib, cond)] += 1
            group = groups[cond][k % len(groups[cond])]
            if k == len(groups[cond]):
                warnings.append("more trials than distinct (pair, image, sample) combinations")
            if rng.random() < 0.5:
                ia, ib = ib, ia
            trials.append({"kind": "main", "cond": cond, "group": group, "left": ia, "right": ib})
    n_checks = int(round(spec.check_share * spec.trials))
    for _ in range(n_checks):
        base = trials[int(rng.integers(len(trials)))]
        bad = "left" if rng.random() < 0.5 else "right"
        good = "right" if bad == "left" else "left"
        trials.append({**base, "kind": "check", "corrupt": bad, "expected": good,
                       "corrupt_seed": int(rng.integers(2**31))})  # fmt: skip
    n_main = spec.trials
    n_rep = int(round(spec.repeat_share * n_main))
    for j in sorted(rng.choice(n_main, size=min(n_rep, n_main), replace=False).tolist()):
        base = trials[j]
        trials.append({**base, "kind": "repeat", "left": base["right"], "right": base["left"],
                       "repeat_of": j})  # fmt: skip
    return trials, sorted(set(warnings))


def create_study(spec: StudySpec, out: Path) -> dict:
    """Write the study file ``out`` (atomically: a temp file renamed at the end)."""
    if spec.trials < 1:
        raise UsageError(f"--trials {spec.trials}: must be >= 1")
    if spec.set_size < 1:
        raise UsageError(f"--set-size {spec.set_size}: must be >= 1")
    for name, v in (("--check-share", spec.check_share), ("--repeat-share", spec.repeat_share)):
        if not 0 <= v <= 1:
            raise UsageError(f"{name} {v}: must be between 0 and 1")
    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; pick a new file or delete it")
    systems = find_systems(spec)
    trials, warnings = _plan(spec, systems)
    for w in warnings:
        log.warning("study: %s; some trials repeat the same images", w)
    cond_run = systems[0].run
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    con = create_db(tmp)
    try:
        con.execute("BEGIN")
        images = ImageStore(con, spec.thumb_px)
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
                    sides[side] = [images.file(sysm.samples[(t["cond"], i)][1], seed)
                                   for i in t["group"]]  # fmt: skip
                repeat_of = ids[t["repeat_of"]] if "repeat_of" in t else None
                cur = con.execute(
                    "INSERT INTO trials (kind, class_label, cond, sample_index, cond_image, "
                    "left_model, right_model, left_images, right_images, expected, repeat_of) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (t["kind"], cond_run.class_label_of.get(cls, cls), t["cond"], t["group"][0],
                     images.file(cond_path), systems[t["left"]].label,
                     systems[t["right"]].label, json.dumps(sides["left"]),
                     json.dumps(sides["right"]), t.get("expected"), repeat_of),
                )  # fmt: skip
                ids.append(int(cur.lastrowid))
                advance(1)
        info = {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "varbench_version": __version__,
            "protocol": spec.protocol,
            "manifest_sha256": str(cond_run.info.get("manifest_sha256")),
            "seed": str(spec.seed),
            "set_size": str(spec.set_size),
            "allow_tie": "1" if spec.allow_tie else "0",
            "question": QUESTION_SETS if spec.set_size > 1 else QUESTION_SINGLE,
            "systems": json.dumps(
                [
                    {
                        "label": s.label,
                        "model": s.run.model,
                        "run_id": s.run.run_id,
                        "params": s.point.params,
                    }
                    for s in systems
                ]  # fmt: skip
            ),
        }
        con.executemany("INSERT INTO meta VALUES (?, ?)", list(info.items()))
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
    counts = defaultdict(int)
    for t in trials:
        counts[t["kind"]] += 1
    return {"study": str(out), "systems": [s.label for s in systems], "trials": dict(counts),
            "images": int(n_images), "warnings": warnings}  # fmt: skip
