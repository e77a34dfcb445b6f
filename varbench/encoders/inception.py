"""torch-fidelity's TF-compatible InceptionV3: pool3 features, logits and sFID's spatial map.

Outputs (all float32 from the network, stored as float64):
- ``features``: pool3, 2048-d (torch-fidelity feature ``2048``), for FID, KID, precision/recall.
- ``logits``: ``logits_unbiased`` (1008-d, fc without bias), for the Inception Score.
- ``spatial``: the ADM evaluator's ``mixed_6/conv:0`` as used for sFID: the ReLU output of the
  1x1 branch of TF block ``mixed_6`` (torch-fidelity's ``Mixed_6d.branch1x1``, 192 x 17 x 17),
  first 7 channels, flattened in TF's height-width-channel order -> 17 * 17 * 7 = 2023 dims.
  torch-fidelity's own ``768`` feature is the spatially pooled ``Mixed_6e`` output, so it is
  not this; the map is taken with a forward hook on the same network pass.

Images go through the network in batches of equal-shaped images (64 on CPU, 256 on GPU, as
torch-fidelity batches); CPU convolution kernels are not row-exact across batch compositions,
so a row can differ in the last float32 bits with its batch companions (measured in
docs/metrics.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from varbench.encoders.filed import WeightsFileEncoder
from varbench.encoders.weights import (
    load_state_dict_file,
    network_timeout,
    torch_hub_checkpoint,
    weights_only_loads,
)

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_HOST = "github.com"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
OUTPUTS = ("features", "logits", "spatial")
SPATIAL_LAYER = "Mixed_6d.branch1x1"  # TF mixed_6/conv (torch-fidelity's conversion table)
SPATIAL_CHANNELS = 7
DIMS = {"features": 2048, "logits": 1008, "spatial": 2023}


def _torch_loadable(path: Path) -> str | io.BytesIO:
    """What torch-fidelity's ``torch.load`` can read: the path, or a .safetensors file re-serialised."""
    if path.suffix != ".safetensors":
        return str(path)
    import torch

    buf = io.BytesIO()
    torch.save(load_state_dict_file(path), buf)
    buf.seek(0)
    return buf


class InceptionEncoder(WeightsFileEncoder):
    """InceptionV3 as torch-fidelity computes it (its own TF1-style bilinear resize to 299)."""

    name = "inception"
    resize_mode = "torch_fidelity_bilinear_299"
    outputs = OUTPUTS

    host = WEIGHTS_HOST

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._spatial = None

    @classmethod
    def weights_file(cls) -> str:
        return WEIGHTS_FILE

    def cached_candidates(self) -> list[Path]:
        return [torch_hub_checkpoint(WEIGHTS_FILE)]

    def source(self) -> str:
        return "torch-fidelity release"

    def download(self) -> Path:
        """Download torch-fidelity's weights into the torch hub cache; return the file."""
        import torch.hub

        dst = torch_hub_checkpoint(WEIGHTS_FILE)
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with network_timeout():
                torch.hub.download_url_to_file(WEIGHTS_URL, str(dst), progress=False)
        return dst

    def config(self) -> dict[str, Any]:
        return {
            "version": 3,
            "weights_sha256": self.weights_sha256(),
            "resize_mode": self.resize_mode,
            "dtype": "float32",
            "spatial": f"{SPATIAL_LAYER}[:{SPATIAL_CHANNELS}] hwc",
        }

    def network(self):
        """The torch-fidelity module, loaded once (downloads into the torch hub cache if online)."""
        if self._net is None:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            path = self.resolved_path()
            with weights_only_loads(path):  # torch-fidelity calls torch.load(weights_only=False)
                net = FeatureExtractorInceptionV3(
                    "inception-v3-compat",
                    ["2048", "logits_unbiased"],
                    feature_extractor_weights_path=_torch_loadable(path),
                )
            net = net.eval().to(self.device)
            net.get_submodule(SPATIAL_LAYER).register_forward_hook(self._keep_spatial)
            self._net = net
        return self._net

    def _keep_spatial(self, module, inputs, output) -> None:
        self._spatial = output

    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All three outputs of an (N, H, W, 3) uint8 batch of equal-shaped images."""
        import torch

        net = self.network()
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        with torch.no_grad():
            pool3, logits = net(x)
        n = x.shape[0]
        spatial = self._spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(n, -1)
        return {
            "features": pool3.double().cpu().numpy(),
            "logits": logits.double().cpu().numpy(),
            "spatial": spatial.double().cpu().numpy(),
        }

    def encode_many(
        self, images: Sequence[np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Several outputs from one network pass per group of equal-shaped images, in order."""
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown:
            raise ValueError(f"inception has no output {unknown[0]!r}; it has {', '.join(OUTPUTS)}")
        out = {o: np.zeros((len(images), DIMS[o])) for o in outputs}
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(np.shape(im), []).append(i)
        for idx in by_shape.values():
            got = self._forward(np.stack([np.asarray(images[i], dtype=np.uint8) for i in idx]))
            for o in outputs:
                out[o][idx] = got[o]
        return out

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        return self.encode_many(images, [output])[output]
