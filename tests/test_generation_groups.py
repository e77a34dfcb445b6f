"""Generation groups: model calls are fixed by the protocol and the group size, never by
--batch-size, shards or resumes; OOM back-off is recorded in the row."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from varbench.adapter import Adapter, Request, adapter_registry
from varbench.plan.demo_data import demo_image
from varbench.plan.slots import SampleSlot, generation_groups
from varbench.runner import RunConfig, run


def _slots(conds: dict[str, int]) -> list[SampleSlot]:
    return [
        SampleSlot(0, "c", "c", 0, cond, s, seed=hash((cond, s)) & 0xFFFF)
        for cond, n in conds.items()
        for s in range(n)
    ]


def test_generation_groups_are_consecutive_chunks():
    slots = _slots({"a": 10, "b": 10, "c": 5})
    groups = generation_groups(slots, 8)
    assert [len(g) for g in groups] == [8, 8, 8, 1]
    assert [s for g in groups for s in g] == slots  # manifest order, every slot once
    by_cond = generation_groups(slots, 8, by_condition=True)
    assert [len(g) for g in by_cond] == [8, 2, 8, 2, 5]
    assert all(len({s.cond_id for s in g}) == 1 for g in by_cond)
    with pytest.raises(ValueError):
        generation_groups(slots, 0)


CALLS: list[tuple[int, ...]] = []


class Recording(Adapter):
    """Records the seeds of every generate() call; images depend on the call's composition."""

    name = "recording_groups"
    images_per_call = 8

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        seeds = tuple(s for r in requests for s in r.seeds)
        CALLS.append(seeds)
        salt = sum(seeds) % 7  # like a batch-shape-dependent kernel: the group leaves a trace
        out = []
        for r in requests:
            ci = int(r.class_index) % 10
            out.append([(demo_image(ci, int(s) % 1000) // 2 + salt) for s in r.seeds])
        return out


class OomOnce(Adapter):
    """Raises CUDA OOM for any call with more than 4 samples, through the shared back-off."""

    name = "oom_groups"
    images_per_call = 8

    def generate(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        import torch

        from varbench_adapters.hf import with_oom_backoff

        items = [(ri, s) for ri, r in enumerate(requests) for s in r.seeds]

        def call(chunk):
            if len(chunk) > 4:
                raise torch.cuda.OutOfMemoryError("simulated")
            return [demo_image(requests[ri].class_index % 10, int(s) % 1000) for ri, s in chunk]

        flat = with_oom_backoff(call, items, self.warn)
        out: list[list[np.ndarray]] = [[] for _ in requests]
        for (ri, _), img in zip(items, flat, strict=True):
            out[ri].append(img)
        return out


@pytest.fixture(autouse=True)
def _register():
    for cls in (Recording, OomOnce):
        if cls.name not in adapter_registry:
            adapter_registry.register(cls.name, cls)


def _run(out, model="recording_groups", **kw):
    return run(RunConfig(model=model, protocol="demo_1shot", out=out, device="cpu", **kw))


def _pngs(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root).as_posix()).split("/", 1)[1]: p.read_bytes()
        for p in sorted(root.rglob("*.png"))
    }


def test_calls_and_bits_do_not_depend_on_batch_size_shards_or_resume(tmp_path):
    CALLS.clear()
    a = _run(tmp_path / "a", batch_size=1)
    calls_a = sorted(CALLS)
    assert sorted(len(c) for c in CALLS) == [4] + [8] * 12  # 100 samples in groups of 8
    assert a[0]["images_per_call"] == 8 and a[0]["generation_warnings"] == 0

    CALLS.clear()
    b = _run(tmp_path / "b", batch_size=7)
    assert sorted(CALLS) == calls_a
    for i in (2, 0, 1):
        CALLS.clear()
        c = _run(tmp_path / "c", shard=(i, 3))
    assert c[0]["fid"] == a[0]["fid"] == b[0]["fid"]
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b") == _pngs(tmp_path / "c")

    # resume: delete two samples of one group; the whole group is regenerated, bits unchanged
    run_dir = next((tmp_path / "a").iterdir())
    victims = sorted(run_dir.rglob("*.png"))[9:11]
    for v in victims:
        v.unlink()
    (run_dir / "results.parquet").unlink()
    for p in run_dir.glob("points/*/result.json"):
        p.unlink()
    CALLS.clear()
    again = _run(tmp_path / "a")
    assert len(CALLS) == 1 and CALLS[0] in calls_a  # one whole group, as in the first run
    assert again[0]["fid"] == a[0]["fid"]
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b")

    # another group size is another run (statistically equivalent, not bit-identical)
    d = _run(tmp_path / "a", images_per_call=5)
    assert d[0]["run_id"] != a[0]["run_id"] and d[0]["images_per_call"] == 5


def test_oom_backoff_is_recorded_in_the_row(tmp_path):
    rows = _run(tmp_path / "o", model="oom_groups")
    row = rows[0]
    assert row["generation_warnings"] > 0
    assert "out of GPU memory" in row["notes"] and "NOT bit-identical" in row["notes"]
    run_dir = next((tmp_path / "o").iterdir())
    (warn,) = list(run_dir.glob("points/*/warnings.json"))
    assert len(json.loads(warn.read_text())) == row["generation_warnings"]
