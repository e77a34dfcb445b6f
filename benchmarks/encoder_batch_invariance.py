"""How much a feature row depends on its batch companions, per encoder, on this machine.

Encodes ``--n`` demo images once as one batch (the CPU chunk size, 64) and once one image at a
time, with random-weight networks of the real architectures (the numbers measure kernels, not
weights), and prints per encoder and output the largest absolute difference and the largest
difference relative to the row's norm. docs/metrics.md quotes these lines.

    python benchmarks/encoder_batch_invariance.py [--n 64] [--encoders inception,dinov2,clip]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def differences(batched: np.ndarray, single: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / |b| over rows) of two (n, d) feature arrays."""
    diff = np.abs(batched.astype(np.float64) - single.astype(np.float64))
    norms = np.linalg.norm(single.astype(np.float64), axis=1)
    rel = np.linalg.norm(batched.astype(np.float64) - single, axis=1) / np.maximum(norms, 1e-30)
    return float(diff.max()), float(rel.max())


def build(name: str, tmp: Path, images: list[np.ndarray]):
    """An encoder of the real architecture with random weights saved the way users load theirs."""
    import torch

    torch.manual_seed(0)
    if name == "inception":
        from conftest import random_inception_file

        from varbench.encoders.inception import InceptionEncoder

        return InceptionEncoder(weights=str(random_inception_file(tmp / "inc.pth", images)))
    if name == "dinov2":
        import timm
        from safetensors.torch import save_file

        from varbench.encoders.dinov2 import DinoV2Encoder

        src = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)
        save_file(
            {k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp / "d.safetensors")
        )
        return DinoV2Encoder(weights=str(tmp / "d.safetensors"))
    if name == "clip":
        import open_clip

        from varbench.encoders.clip import ClipEncoder

        src = open_clip.create_model("ViT-B-16-quickgelu").eval()
        torch.save(src.state_dict(), tmp / "clip.pt")
        return ClipEncoder(weights=str(tmp / "clip.pt"))
    raise SystemExit(f"--encoders: unknown encoder {name!r} (inception, dinov2, clip)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images (one batch of this size)")
    parser.add_argument("--encoders", default="inception,dinov2,clip")
    args = parser.parse_args()

    import torch

    from varbench.plan.demo_data import demo_image

    images = [demo_image(i % 10, 7000 + i) for i in range(args.n)]
    print(f"images={args.n}", flush=True)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders.split(","):
            enc = build(name.strip(), Path(tmp), images)
            outputs = ["features", "logits", "spatial"] if name == "inception" else ["features"]
            batched = enc.encode_many(images, outputs)
            singles = [enc.encode_many([im], outputs) for im in images]
            for out in outputs:
                single = np.concatenate([s[out] for s in singles])
                abs_d, rel_d = differences(batched[out], single)
                print(f"{name}_{out}_max_abs_diff={abs_d:.3g}", flush=True)
                print(f"{name}_{out}_max_rel_diff={rel_d:.3g}", flush=True)
                print(f"{name}_{out}_identical={bool(abs_d == 0.0)}", flush=True)


if __name__ == "__main__":
    main()
