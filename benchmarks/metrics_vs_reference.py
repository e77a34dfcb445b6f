"""Speed and agreement of varbench's array metrics against reference implementations.

Usage: python benchmarks/metrics_vs_reference.py [--n 10000] [--dim 2048] [--lpips-weights PATH]

Prints ``key=value`` lines. Speed ratios compare against the reference in the same run, each
side timed as the fastest of ``--repeats`` runs (the machine may be shared, so absolute times
vary). The precision/recall speed reference is torch-fidelity on float32 features (its usual
input); ``prc_equal`` compares against torch-fidelity on float64 features (no float32 ties);
``prc_floor_ratio`` is varbench's P/R time over the time of the three float32 products it needs
(real x real, fake x fake, real x fake, plain ``torch.mm``), with their GFLOPS. One function per
section: add a section by writing ``section_<name>(args, real, fake) -> dict`` and listing it in
``SECTIONS``; run a subset with ``--sections extract,prc``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def synthetic_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Inception-like float32 features: non-negative, low-rank structure plus noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(12345).standard_normal((64, dim)) / 8.0
    z = rng.standard_normal((n, 64)) + shift
    x = z @ basis + 0.3 * rng.standard_normal((n, dim)) + 0.2
    return np.maximum(x, 0.0).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[object, float]:
    """(result, fastest of ``repeats`` wall times): the minimum is the least load-sensitive."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def section_fid(args: argparse.Namespace, real: np.ndarray, fake: np.ndarray) -> dict[str, object]:
    """Eigen/pivoted-Cholesky FID vs scipy.linalg.sqrtm on the same statistics."""
    import scipy.linalg

    from varbench.metrics.gaussian import fid_features_to_statistics, fid_statistics_to_metric

    mu1, s1 = fid_features_to_statistics(real)
    mu2, s2 = fid_features_to_statistics(fake)

    def reference() -> float:
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        diff = mu1 - mu2
        return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean).real)

    ours, t_ours = timed(lambda: fid_statistics_to_metric(mu1, s1, mu2, s2), args.repeats)
    ref, t_ref = timed(reference, args.repeats)
    return {
        "fid": ours,
        "fid_scipy": ref,
        "fid_seconds": t_ours,
        "fid_scipy_seconds": t_ref,
        "fid_speedup_vs_scipy": t_ref / t_ours,
        "fid_max_rel_diff": abs(ours - ref) / abs(ref),
    }


def section_prc(args: argparse.Namespace, real: np.ndarray, fake: np.ndarray) -> dict[str, object]:
    """Exact precision/recall vs torch-fidelity's prc (float32 for speed, float64 for equality)."""
    import torch
    from torch_fidelity.metric_prc import prc_features_to_metric

    from varbench.metrics.prdc import precision_recall

    ours, t_ours = timed(lambda: precision_recall(real, fake, k=3), args.repeats)
    # The floor: the three float32 products real x real, fake x fake and real x fake that an
    # exact P/R needs (a k-NN search per set, the ball decisions between them), same run.
    tr, tf = torch.from_numpy(real), torch.from_numpy(fake)

    def products() -> None:
        torch.mm(tr, tr.T)
        torch.mm(tf, tf.T)
        torch.mm(tr, tf.T)

    products()  # warm-up: thread pool, allocations
    _, t_products = timed(products, args.repeats)
    flops = 2.0 * real.shape[1] * (len(real) ** 2 + len(fake) ** 2 + len(real) * len(fake))

    def reference(dtype: torch.dtype) -> dict:
        f1 = torch.from_numpy(fake).to(dtype)  # torch-fidelity: input 1 = generated
        f2 = torch.from_numpy(real).to(dtype)
        return prc_features_to_metric(f1, f2, prc_neighborhood=3, verbose=False)

    ref32, t_ref = timed(lambda: reference(torch.float32), args.repeats)
    ref64 = reference(torch.float64)
    n_fake, n_real = len(fake), len(real)

    def same(a: dict, b: dict) -> bool:
        # torch-fidelity returns a float32 mean; compare the implied counts.
        return round(a["precision"] * n_fake) == round(b["precision"] * n_fake) and round(
            a["recall"] * n_real
        ) == round(b["recall"] * n_real)

    return {
        "precision": ours["precision"],
        "recall": ours["recall"],
        "prc_seconds": t_ours,
        "prc_torch_fidelity_seconds": t_ref,
        "prc_speedup_vs_torch_fidelity": t_ref / t_ours,
        "prc_products_seconds": t_products,
        "prc_products_gflops": flops / t_products / 1e9,
        "prc_floor_ratio": t_ours / t_products,
        "prc_equal": same(ours, ref64),
        "prc_equal_float32_reference": same(ours, ref32),
    }


def section_memorisation(
    args: argparse.Namespace, real: np.ndarray, fake: np.ndarray
) -> dict[str, object]:
    """Exact LPIPS nearest neighbours (phi embeddings + certified product) vs brute force.

    The brute force calls ``lpips.LPIPS.forward`` on every (query, reference) pair, references in
    batches of 64 per query, as one would without the embedding identity. Both sides use the
    same prepared tensors (demo images at ``--mem-size`` px: the encoder's resolution is set to
    it so the brute force stays within tens of seconds) and the same module: ``--lpips-weights``
    or, offline, AlexNet-LPIPS with a random trunk and the package's bundled linear layers.
    varbench's side runs its real code path: references spilled to a file, queries in blocks.
    """
    import tempfile
    from pathlib import Path

    import torch

    from varbench.encoders.lpips import LpipsEncoder
    from varbench.metrics.memorisation import RowFile, agreement, embed_all, search_images
    from varbench.plan.demo_data import demo_image

    refs = [demo_image(i % 10, i) for i in range(args.mem_real)]
    queries = [demo_image(i % 10, 10**6 + i) for i in range(args.mem_fake)]
    none = [np.zeros(0, np.int64)] * len(queries)

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.lpips_weights
        if weights is None:
            import lpips

            torch.manual_seed(0)
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
            weights = str(Path(tmp) / "lpips-random-trunk.pth")
            torch.save(net.state_dict(), weights)
        enc = LpipsEncoder(weights=weights)
        enc.image_size = args.mem_size
        module = enc.network()

        def exact() -> tuple[np.ndarray, np.ndarray]:
            base = RowFile(Path(tmp) / "phi.f32", enc.embed(refs[:1]).shape[1])
            try:
                embed_all(enc, refs.__getitem__, len(refs), base)
                return search_images(enc, queries.__getitem__, len(queries), base, none)
            finally:
                base.close()

        def brute() -> np.ndarray:
            ref_t = torch.cat([enc.prepare([r]) for r in refs])
            dist = np.empty((len(queries), len(refs)))
            with torch.no_grad():
                for i, qim in enumerate(queries):
                    qt = enc.prepare([qim])
                    for s in range(0, len(refs), 64):
                        batch = ref_t[s : s + 64]
                        out = module(qt.expand(len(batch), -1, -1, -1), batch)
                        dist[i, s : s + len(batch)] = out.view(-1).double().numpy()
            return dist

        with torch.no_grad():  # warm-up (thread pools, first-call allocations) for both sides
            module(enc.prepare(refs[:2]), enc.prepare(queries[:2]))
        (ours_d, ours_i), t_ours = timed(exact, args.repeats)
        ref, t_ref = timed(brute, args.repeats)
    ref_d = ref.min(axis=1)
    return {
        "memorisation_queries": len(queries),
        "memorisation_references": len(refs),
        "memorisation_image_size": args.mem_size,
        "memorisation_lpips_weights": "given" if args.lpips_weights else "random trunk (offline)",
        "memorisation_exact_seconds": t_ours,
        "memorisation_bruteforce_seconds": t_ref,
        "memorisation_speedup_vs_bruteforce": t_ref / t_ours,
        "memorisation_agreement": float(agreement(ours_d, ours_i, ref).mean()),
        "memorisation_same_argmin": float(np.mean(ours_i == ref.argmin(axis=1))),
        "memorisation_max_rel_diff": float(np.max(np.abs(ours_d - ref_d) / ref_d)),
    }


def section_extract(
    args: argparse.Namespace, real: np.ndarray, fake: np.ndarray
) -> dict[str, object]:
    """`varbench metrics --metrics fid` vs torch-fidelity calculate_metrics(fid=True), Inception.

    Two folders of ``--extract-n`` PNGs (256 px); the same random-weight Inception file on both
    sides (BatchNorm recalibrated so features do not vanish); varbench starts with an empty
    feature cache each time, so its time includes hashing, decoding, encoding and cache writes.
    """
    import sys
    import tempfile
    from pathlib import Path

    import torch_fidelity
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import random_inception_file

    from varbench.plan.demo_data import demo_image
    from varbench.score.folders import score_folders

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = {}
        for name, offset in (("real", 0), ("fake", 5000)):
            d = dirs[name] = root / name
            d.mkdir()
            for i in range(args.extract_n):
                im = Image.fromarray(demo_image(i % 10, offset + i)).resize((256, 256))
                im.save(d / f"{i:04d}.png")
        calib = [
            np.asarray(Image.open(p).convert("RGB"))
            for p in sorted(dirs["real"].glob("*.png"))[:64]
        ]
        weights = random_inception_file(root / "inception.pth", calib)
        runs = []

        def ours() -> dict:
            cache = root / f"cache{len(runs)}"
            runs.append(cache)
            return score_folders(
                dirs["real"], dirs["fake"], ["fid"], weights={"inception": str(weights)},
                cache_dir=cache,
            )  # fmt: skip

        def reference() -> dict:
            return torch_fidelity.calculate_metrics(
                input1=str(dirs["fake"]), input2=str(dirs["real"]), fid=True, cuda=False,
                feature_extractor_weights_path=str(weights), verbose=False,
            )  # fmt: skip

        times_ours, times_ref = [], []
        for _ in range(max(1, args.repeats)):  # alternate, so load affects both sides alike
            got, t = timed(ours)
            times_ours.append(t)
            ref, t = timed(reference)
            times_ref.append(t)
    ratios = sorted(o / r for o, r in zip(times_ours, times_ref, strict=True))
    return {
        "extract_images": 2 * args.extract_n,
        "extract_seconds": float(np.median(times_ours)),
        "extract_torch_fidelity_seconds": float(np.median(times_ref)),
        "extract_time_ratio_vs_torch_fidelity": float(np.median(ratios)),
        "extract_time_ratio_range": f"{ratios[0]:.3f}-{ratios[-1]:.3f}",
        "extract_fid_rel_diff": abs(got["fid"] - ref["frechet_inception_distance"])
        / ref["frechet_inception_distance"],
    }


def section_intervals(
    args: argparse.Namespace, real: np.ndarray, fake: np.ndarray
) -> dict[str, object]:
    """Cost of the 95 % intervals (B half-samples by class) vs one evaluation of FID + P/R.

    Classes: ``--classes`` equal blocks of consecutive rows (ImageNet 1-shot at n = 10,000 has
    1,000 classes of 10 references and 10 samples). The interval side is what the bootstrap
    metric computes: the estimate plus B replicates; the reference is ``fid_from_features`` plus
    ``precision_recall`` once, as the fid and precision_recall metrics compute them.
    """
    from varbench.metrics.bootstrap import DEFAULT_REPLICATES, half_sample_replicates
    from varbench.metrics.gaussian import fid_from_features
    from varbench.metrics.prdc import SubsetPrecisionRecall, precision_recall

    real64, fake64 = real.astype(np.float64), fake.astype(np.float64)
    rc = np.arange(len(real)) * args.classes // len(real)
    fc = np.arange(len(fake)) * args.classes // len(fake)

    def one() -> float:
        precision_recall(real64, fake64, 3)
        return fid_from_features(real64, fake64)

    def intervals() -> np.ndarray:
        plan = SubsetPrecisionRecall(real64, fake64)
        plan(k=3)
        fid_from_features(real64, fake64)
        return half_sample_replicates(
            real64, fake64, rc, fc, args.replicates, seed=0, k=3, plan=plan
        )[1]

    _, t_one = timed(one, 1)
    reps, t_int = timed(intervals, 1)
    # Spot check: the plan's sub-matrix route equals recomputing on a half-sample.
    half = np.flatnonzero(rc % 2 == 0), np.flatnonzero(fc % 2 == 0)
    plan = SubsetPrecisionRecall(real64, fake64)
    same = plan(*half, k=3) == precision_recall(real64[half[0]], fake64[half[1]], 3)
    return {
        "interval_replicates": args.replicates,
        "interval_default_replicates": DEFAULT_REPLICATES,
        "interval_classes": args.classes,
        "one_fid_prc_seconds": t_one,
        "interval_seconds": t_int,
        "interval_cost_ratio": t_int / t_one,
        "interval_subset_equal": bool(same),
        "interval_fid_sd": float(reps[:, 0].std(ddof=1)),
    }


def section_memory(
    args: argparse.Namespace, real: np.ndarray, fake: np.ndarray
) -> dict[str, object]:
    """Peak RSS of scoring one point with every array metric on the CPU (run it alone).

    FID, KID, precision/recall, density/coverage and the intervals on ``--n`` x ``--n`` features;
    the peak is the process's high-water mark (``ru_maxrss``), so it includes the features.
    """
    import resource

    from varbench.metrics.bootstrap import half_sample_replicates
    from varbench.metrics.gaussian import fid_from_features
    from varbench.metrics.kid import kid_features_to_metric
    from varbench.metrics.prdc import SubsetPrecisionRecall, density_coverage

    real64, fake64 = real.astype(np.float64), fake.astype(np.float64)
    rc = np.arange(len(real)) * args.classes // len(real)
    fc = np.arange(len(fake)) * args.classes // len(fake)
    fid_from_features(real64, fake64)
    kid_features_to_metric(fake64, real64)
    density_coverage(real64, fake64, 5)
    plan = SubsetPrecisionRecall(real64, fake64)
    plan(k=3)
    half_sample_replicates(real64, fake64, rc, fc, 3, seed=0, k=3, plan=plan)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return {"peak_rss_gib": round(peak, 3)}


def section_novelty(
    args: argparse.Namespace, real: np.ndarray, fake: np.ndarray
) -> dict[str, object]:
    """Extra cost of every new diversity/novelty metric on one point, over FID + precision/recall.

    Both sides run the code scoring runs: one ``PointCache`` (``varbench.metrics.pointcache``) per
    point. Baseline: a fresh plan computing FID and precision/recall only. Full: a fresh plan
    computing FID, precision/recall, then every new metric, each step timed.

    Shared inside the plan: the means and covariance factors and the real covariance's
    pivoted-Cholesky factor (FID, FD-infinity, MiFID's FID), the real covariance (C_T's PCA),
    the float32 screening matrices and exact k-NN radii of precision/recall (realism's radii,
    AuthPct's nearest-other-real distances; AuthPct's, realism's and MiFID's fake-to-real
    searches screen from the cached real x fake matrix). Not shared: FLS (a KDE on 1,000-row
    subsets), Vendi (per-group Grams) and CMMD, timed on separate L2-normalised
    ``--cmmd-dim``-wide features (CLIP ViT-L/14's 768: in a run CMMD has its own feature
    space, unit-length rows from ``clip_l336``; its encoder pass aside).

    ``novelty_cost_ratio``: the new metrics' steps over the FID + precision/recall steps, both
    timed inside the full run (same load). ``novelty_cost_ratio_vs_separate_baseline``:
    (full - baseline) / baseline, the baseline timed separately (sensitive to load drift).
    ``novelty_direct_baseline_seconds``: FID + precision/recall by the standalone functions,
    for comparison. Held-out set: ``--n // 10`` rows (C_T's and FLS's test set); Vendi over
    groups of ``--vendi-group`` samples and ``--classes`` classes, twice (DINOv2 and Inception
    spaces). Each side timed once (they are long), after an untimed warm-up of the full side
    on 400 rows. Run it alone: ``peak_rss_gib`` is the process's high-water mark.
    """
    import resource

    from varbench.metrics.cmmd import cmmd
    from varbench.metrics.fls import fls_scores, fls_subsets
    from varbench.metrics.gaussian import fid_from_features
    from varbench.metrics.mifid import cached_mifid
    from varbench.metrics.novelty import CT_PCA_DIM, cached_authpct, cached_pca, ct_score
    from varbench.metrics.pointcache import PointCache
    from varbench.metrics.prdc import precision_recall
    from varbench.metrics.realism import cached_realism_scores
    from varbench.metrics.vendi import grouped_vendi

    heldout = synthetic_features(max(2, args.n // 10), args.dim, seed=2)
    # CMMD's inputs are L2-normalised CLIP embeddings (encoder ``clip_l336``)
    clip_real = synthetic_features(args.n, args.cmmd_dim, seed=3)
    clip_fake = synthetic_features(args.n, args.cmmd_dim, seed=4, shift=0.15)
    for x in (clip_real, clip_fake):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    cond = np.arange(len(fake)) // args.vendi_group
    cls = np.arange(len(fake)) * min(args.classes, len(fake)) // len(fake)
    times: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> object:
        out, times[name] = timed(fn)
        return out

    def baseline() -> tuple[float, dict]:
        plan = PointCache(real, fake)
        return plan.fid(), plan.precision_recall(3)

    def full(real=real, fake=fake, heldout=heldout) -> dict[str, object]:
        plan = PointCache(real, fake)
        out: dict[str, object] = {}
        out["fid"] = step("base_fid", plan.fid)
        out["prc"] = step("base_prc", lambda: plan.precision_recall(3))
        out["fd_infinity"] = step("fd_infinity", lambda: plan.fd_infinity(seed=0))
        out["authpct"] = step("authpct", lambda: cached_authpct(plan))
        out["realism"] = step("realism", lambda: cached_realism_scores(plan, 5))
        out["mifid"] = step("mifid", lambda: cached_mifid(plan))
        out["ct"] = step(
            "ct", lambda: ct_score(real, heldout, fake, seed=0, pca=cached_pca(plan, CT_PCA_DIM))
        )
        out["fls"] = step("fls", lambda: fls_scores(*fls_subsets(real, heldout, fake, seed=0)))

        def vendi_both() -> None:
            for _ in range(2):  # DINOv2 and Inception spaces
                grouped_vendi(fake, cond[: len(fake)])
                grouped_vendi(fake, cls[: len(fake)])

        step("vendi", vendi_both)
        out["cmmd"] = step("cmmd", lambda: cmmd(clip_real, clip_fake))
        return out

    def direct() -> None:
        fid_from_features(real, fake)
        precision_recall(real, fake, 3)

    # warm-up on a small slice (first calls: thread pools, autograd, allocations); untimed
    full(real[:400], fake[:400], heldout[:100])
    times.clear()
    (b_fid, b_prc), t_base = timed(baseline)
    values, t_full = timed(full)
    _, t_direct = timed(direct)
    out: dict[str, object] = {
        "novelty_baseline_seconds": round(t_base, 3),
        "novelty_direct_baseline_seconds": round(t_direct, 3),
        "novelty_full_seconds": round(t_full, 3),
        "novelty_same_fid_prc": values["fid"] == b_fid and values["prc"] == b_prc,
    }
    for name, t in times.items():
        out[f"novelty_{name}_seconds"] = round(t, 3)
        if not name.startswith("base_"):
            out[f"novelty_{name}_ratio"] = round(t / t_base, 3)
    # Same conditions: the new metrics' steps over FID + P/R's steps inside the one full run
    # (a shared machine's load drifts between separately timed runs by up to 2x here).
    base_in_run = times["base_fid"] + times["base_prc"]
    extra = sum(t for name, t in times.items() if not name.startswith("base_"))
    out["novelty_base_in_run_seconds"] = round(base_in_run, 3)
    out["novelty_extra_seconds"] = round(extra, 3)
    out["novelty_cost_ratio"] = round(extra / base_in_run, 3)
    out["novelty_cost_ratio_vs_separate_baseline"] = round((t_full - t_base) / t_base, 3)
    out["peak_rss_gib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3
    )
    return out


SECTIONS: dict[str, Callable[[argparse.Namespace, np.ndarray, np.ndarray], dict[str, object]]] = {
    "fid": section_fid,
    "prc": section_prc,
    "memorisation": section_memorisation,
    "extract": section_extract,
    "intervals": section_intervals,
    "memory": section_memory,
    "novelty": section_novelty,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="rows per set")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats per side (min)")
    parser.add_argument("--mem-real", type=int, default=160, help="memorisation: reference images")
    parser.add_argument("--mem-fake", type=int, default=40, help="memorisation: query samples")
    parser.add_argument("--mem-size", type=int, default=64, help="memorisation: image size (px)")
    parser.add_argument("--lpips-weights", default=None, help="whole-module LPIPS state dict")
    parser.add_argument("--extract-n", type=int, default=300, help="extract: images per folder")
    parser.add_argument("--classes", type=int, default=1000, help="intervals: classes (units)")
    parser.add_argument("--replicates", type=int, default=50, help="intervals: B half-samples")
    parser.add_argument("--vendi-group", type=int, default=10, help="novelty: samples per cond")
    parser.add_argument("--cmmd-dim", type=int, default=768, help="novelty: CMMD feature width")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    args = parser.parse_args()
    real = synthetic_features(args.n, args.dim, seed=0)
    fake = synthetic_features(args.n, args.dim, seed=1, shift=0.15)
    print(f"n={args.n}", flush=True)
    print(f"dim={args.dim}", flush=True)
    for name in args.sections.split(","):
        for key, value in SECTIONS[name.strip()](args, real, fake).items():
            print(f"{key}={value}", flush=True)


if __name__ == "__main__":
    main()
