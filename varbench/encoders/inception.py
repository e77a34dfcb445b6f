"""torch-fidelity's TF-compatible InceptionV3: pool3 (2048-d) features and logits for FID/KID/PR/IS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from varbench.encoders.base import Encoder
from varbench.encoders.weights import (
    find_weights,
    missing_weights_error,
    offline,
    torch_hub_checkpoint,
)
from varbench.hashing import sha256_file

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
OUTPUTS = {"features": "2048", "logits": "logits_unbiased"}


class InceptionEncoder(Encoder):
    """InceptionV3 as torch-fidelity computes it (its own bilinear resize to 299 inside the net)."""

    name = "inception"
    resize_mode = "torch_fidelity_bilinear_299"
    batch_size = 32
    outputs = tuple(OUTPUTS)

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._net = None
        self._path = None

    def weights_path(self):
        """Local weights file, or None when it would have to be downloaded."""
        if self._path is None:
            self._path = find_weights(
                self.name, self.weights, WEIGHTS_FILE, [torch_hub_checkpoint(WEIGHTS_FILE)]
            )
        return self._path

    def check_available(self) -> None:
        if self.weights_path() is None and offline():
            raise missing_weights_error(self.name, WEIGHTS_FILE, "torch-fidelity release")

    def config(self) -> dict[str, Any]:
        path = self.weights_path()
        return {
            "version": 1,
            "weights_sha256": sha256_file(str(path)) if path else WEIGHTS_FILE,
            "resize_mode": self.resize_mode,
            "dtype": "float32",
        }

    def network(self):
        """The torch-fidelity module, loaded once."""
        if self._net is None:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            path = self.weights_path()
            self._net = (
                FeatureExtractorInceptionV3(
                    "inception-v3-compat",
                    list(OUTPUTS.values()),
                    feature_extractor_weights_path=str(path) if path else None,
                )
                .eval()
                .to(self.device)
            )
        return self._net

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        import torch

        net = self.network()
        idx = list(OUTPUTS).index(output)
        outs = []
        with torch.no_grad():
            for (
                im
            ) in images:  # one image at a time: sizes may differ and rows stay batch-independent
                x = (
                    torch.from_numpy(np.ascontiguousarray(im))
                    .permute(2, 0, 1)[None]
                    .to(self.device)
                )
                outs.append(net(x)[idx].double().cpu().numpy()[0])
        return np.stack(outs)
