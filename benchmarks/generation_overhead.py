"""Harness overhead of grouped generation: `varbench run` vs a plain diffusers loop, same run.

Both sides run the tiny random-weight SD Image Variations pipeline (tests/tiny_pipelines.py) on
the demo protocol's conditioning images with the same images per pipeline call, the same
per-sample CPU generators, the same preprocessing and the same number of steps. The varbench side
is timed over its generation stage (reading conditioning images, building requests, the pipeline
calls, writing PNGs and progress files); the plain loop saves each image as a PNG with PIL;
pipeline loading and scoring are excluded on both sides.

Prints ``key=value`` lines; ``generation_overhead_ratio`` = varbench time / plain loop time
(issue bar: <= 1.10), the median over ``--repeats`` alternating measurements, and its range.

    python benchmarks/generation_overhead.py [--steps 4] [--resolution 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def plain_loop(
    model_dir: Path, groups, conds, steps: int, size: int, guidance: float, out_dir: Path
) -> float:
    """Seconds for the groups through the pipeline directly (one call per group), each image
    saved as a PNG with PIL (what a minimal script does; same compression level as varbench)."""
    import torch
    from diffusers import StableDiffusionImageVariationPipeline
    from PIL import Image

    from varbench.core.files import read_rgb
    from varbench_adapters.sd_iv import clip_preprocess

    pipe = StableDiffusionImageVariationPipeline.from_pretrained(
        str(model_dir), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    enc_size = int(pipe.image_encoder.config.image_size)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for group in groups:
            prepped = {
                c: clip_preprocess([read_rgb(conds[c])], enc_size)
                for c in dict.fromkeys(s.cond_id for s in group)
            }
            pixels = torch.cat([prepped[s.cond_id] for s in group])
            gens = [torch.Generator("cpu").manual_seed(int(s.seed)) for s in group]
            out = pipe(
                image=pixels,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
            ).images
            for s, im in zip(group, out, strict=True):
                arr = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(out_dir / s.relpath.replace("/", "_"), compress_level=1)
    return time.perf_counter() - t0


def varbench_run(model_dir: Path, out: Path, steps: int, size: int, guidance: float) -> float:
    """Seconds spent in the generation room (``generate.generate_groups``) of one `varbench run`."""
    from varbench import runner
    from varbench.generate import sampling as generate

    spent = [0.0]
    original = generate.generate_groups

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    generate.generate_groups = timed
    try:
        runner.run(
            runner.RunConfig(
                model="sd_iv",
                protocol="demo_1shot",
                out=out,
                model_path=str(model_dir),
                device="cpu",
                sets={"steps": str(steps), "resolution": str(size), "guidance": str(guidance)},
                cache_dir=out / "cache",
            )
        )
    finally:
        generate.generate_groups = original
    return spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import os

    os.environ.setdefault("VARBENCH_NO_PROGRESS", "1")
    from tiny_pipelines import save_tiny_sd_image_variation

    from varbench.adapter import get_adapter_class
    from varbench.plan.demo_data import demo_root
    from varbench.plan.manifest import build_manifest
    from varbench.plan.planner import load_dataset
    from varbench.plan.protocol import load_protocol
    from varbench.plan.slots import generation_groups, sample_slots

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_tiny_sd_image_variation(tmp / "sdiv")
        spec = load_protocol("demo_1shot")
        listing = load_dataset(spec, None, tmp / "cache")
        manifest, _ = build_manifest(spec, listing, tmp / "cache")
        slots = sample_slots(manifest, spec.samples_per_cond, spec.seed)
        cls = get_adapter_class("sd_iv")
        groups = generation_groups(slots, cls.images_per_call, cls.group_by_condition)
        conds = {s.cond_id: listing.path(s.cond_id) for s in slots}
        assert demo_root(tmp / "cache").is_dir()
        ratios, ours_t, plain_t = [], [], []
        for r in range(args.repeats):
            ours = varbench_run(
                model_dir, tmp / f"runs{r}", args.steps, args.resolution, args.guidance
            )
            plain_dir = tmp / f"plain{r}"
            plain_dir.mkdir()
            plain = plain_loop(
                model_dir, groups, conds, args.steps, args.resolution, args.guidance, plain_dir
            )
            ours_t.append(ours)
            plain_t.append(plain)
            ratios.append(ours / plain)
        print(f"images_per_call={cls.images_per_call}")
        print(f"samples={len(slots)}")
        print(f"varbench_generation_seconds={statistics.median(ours_t):.3f}")
        print(f"plain_loop_seconds={statistics.median(plain_t):.3f}")
        print(f"generation_overhead_ratio={statistics.median(ratios):.3f}")
        print(f"generation_overhead_ratio_range={min(ratios):.3f}-{max(ratios):.3f}")
        print(f"generation_overhead_runs={len(ratios)}")


if __name__ == "__main__":
    main()
