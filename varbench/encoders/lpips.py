"""LPIPS (Zhang et al. 2018) through the lpips package: AlexNet (default) or VGG16 trunk, v0.1.

LPIPS compares image pairs, so this "encoder" has no pooled feature output: it yields each
image's channel-normalised layer stack (``layer_features``) and distances between stacks, the
same operations as ``lpips.LPIPS.forward`` split so that one image's stack serves many pairs.
Preprocessing: bicubic resize of the shortest side to 256, centre crop 256, scale to [-1, 1].

Weights: ``--weights lpips=PATH`` or ``$VARBENCH_WEIGHTS_DIR/lpips-alex-v0.1.pth`` holding the
state dict of the whole ``lpips.LPIPS`` module (trunk and linear layers; loaded with
``weights_only=True`` into a network built with ``pnet_rand=True``, so nothing is downloaded);
otherwise the package's linear layers plus torchvision's trunk checkpoint from the torch hub
cache (``varbench fetch --encoders lpips`` puts it there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from varbench.core.hashing import sha256_file, sha256_json
from varbench.encoders.base import Encoder
from varbench.encoders.transforms import resize_shortest_center_crop
from varbench.encoders.weights import (
    find_weights,
    load_state_dict_file,
    missing_weights_error,
    network_reachable,
    network_timeout,
    offline,
    require_network,
    torch_hub_checkpoint,
    verify_weights_file,
    weights_only_loads,
)

TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
TRUNK_HOST = "download.pytorch.org"


class LpipsEncoder(Encoder):
    """LPIPS v0.1 with the AlexNet trunk."""

    name = "lpips"
    net: ClassVar[str] = "alex"
    image_size: ClassVar[int] = 256
    resize_mode = "pil_bicubic_shortest_256_centercrop"
    batch_size = 16
    outputs = ()  # pairwise distances only; see ``layer_features`` / ``distances``

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._net = None
        self._full: Path | None = None
        self._searched = False
        self._sha: str | None = None
        self._verified: Path | None = None

    @classmethod
    def weights_file(cls) -> str:
        """File name (whole-module state dict) looked up in ``$VARBENCH_WEIGHTS_DIR``."""
        return f"lpips-{cls.net}-v0.1.pth"

    def trunk_path(self) -> Path:
        """Where torchvision keeps the ImageNet trunk checkpoint."""
        return torch_hub_checkpoint(TRUNK_FILES[self.net])

    def linear_path(self) -> Path:
        """The linear-layer weights shipped inside the lpips package."""
        import lpips

        return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{self.net}.pth"

    def full_path(self) -> Path | None:
        """A whole-module state dict given by the user or in $VARBENCH_WEIGHTS_DIR."""
        if not self._searched:
            self._full = find_weights(self.name, self.weights, self.weights_file())
            self._searched = True
        return self._full

    def weights_path(self) -> Path | None:
        """The whole-module file, else the cached trunk checkpoint, else None."""
        full = self.full_path()
        if full is not None:
            return full
        trunk = self.trunk_path()
        return trunk if trunk.is_file() else None

    def check_available(self) -> None:
        local = self.full_path() or (self.trunk_path() if self.trunk_path().is_file() else None)
        if local is not None and local != self._verified:
            verify_weights_file(local)  # pickled code or damage: fail before generation
            self._verified = local
        if self.full_path() is None and not self.trunk_path().is_file():
            if offline() or not network_reachable(TRUNK_HOST):
                raise missing_weights_error(
                    self.name,
                    f"{self.weights_file()} (or torchvision's {TRUNK_FILES[self.net]})",
                    "lpips package + torchvision ImageNet trunk",
                )

    def fetch(self) -> Path:
        """Download torchvision's trunk checkpoint into the torch hub cache; return it."""
        import torch.hub

        dst = self.trunk_path()
        if not dst.is_file():
            require_network(f"{self.name} trunk", TRUNK_HOST)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with network_timeout():
                torch.hub.download_url_to_file(
                    f"https://{TRUNK_HOST}/models/{TRUNK_FILES[self.net]}", str(dst), progress=False
                )
        return dst

    def config(self) -> dict[str, Any]:
        if self._sha is None:
            full = self.full_path()
            if full is not None:
                self._sha = sha256_file(str(full))
            else:
                self.check_available()
                trunk = self.fetch()
                self._sha = sha256_json(
                    [sha256_file(str(trunk)), sha256_file(str(self.linear_path()))]
                )
        return {
            "version": 1,
            "net": self.net,
            "lpips_version": "0.1",
            "weights_sha256": self._sha,
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "dtype": "float32",
        }

    def network(self):
        """The ``lpips.LPIPS`` module, loaded once without touching the network when possible."""
        if self._net is None:
            import lpips

            full = self.full_path()
            if full is None:
                self.check_available()
                self.fetch()
            files = full or f"{self.trunk_path()} or {self.linear_path()}"
            with weights_only_loads(files):
                net = lpips.LPIPS(
                    pretrained=True, net=self.net, pnet_rand=full is not None, verbose=False
                )
            if full is not None:
                net.load_state_dict(load_state_dict_file(full))
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    def prepare(self, images: Sequence[np.ndarray]):
        """(N, 3, S, S) float32 tensor in [-1, 1] after the named resize."""
        import torch

        arr = np.stack([resize_shortest_center_crop(im, self.image_size) for im in images])
        x = torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2)
        return (x / 127.5 - 1.0).contiguous().to(self.device)

    def layer_features(self, image: np.ndarray) -> list:
        """Channel-normalised trunk activations of one image (one tensor per LPIPS layer)."""
        import lpips
        import torch

        net = self.network()
        with torch.no_grad():
            outs = net.net.forward(net.scaling_layer(self.prepare([image])))
            return [lpips.normalize_tensor(o) for o in outs]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """phi (n, D) float32 with LPIPS(x, y) = ||phi(x) - phi(y)||^2 exactly (v0.1 arithmetic).

        LPIPS v0.1 is sum_l mean_hw sum_c w_lc (n_l(x) - n_l(y))_c^2 with channel-normalised
        activations n_l and non-negative 1x1 linear weights w_l (no bias), so
        phi = concat_l sqrt(w_l) * n_l / sqrt(H_l W_l). Images go through the trunk as one batch.
        """
        import lpips
        import torch

        net = self.network()
        if not len(images):
            return np.zeros((0, 0), np.float32)
        with torch.no_grad():
            outs = net.net.forward(net.scaling_layer(self.prepare(images)))
            parts = []
            for k, out in enumerate(outs):
                w = net.lins[k].model[-1].weight.view(1, -1, 1, 1)
                if bool((w < 0).any()):
                    raise ValueError("LPIPS linear weights must be non-negative for the phi form")
                h, wd = out.shape[2:]
                parts.append((lpips.normalize_tensor(out) * w.sqrt() / (h * wd) ** 0.5).flatten(1))
            return torch.cat(parts, dim=1).float().cpu().numpy()

    def distances(self, a: list, b: list) -> np.ndarray:
        """LPIPS between stacks ``a`` (1 or n images) and ``b`` (n images), broadcast: (n,)."""
        import torch

        net = self.network()
        with torch.no_grad():
            total = 0
            for k, (fa, fb) in enumerate(zip(a, b, strict=True)):
                total = total + net.lins[k]((fa - fb) ** 2).mean(dim=(2, 3))
            return total.view(-1).double().cpu().numpy()

    @staticmethod
    def stack(features: Sequence[list]) -> list:
        """Concatenate several images' layer stacks into one batch stack."""
        import torch

        return [torch.cat(layer, dim=0) for layer in zip(*features, strict=True)]

    def pair_distance(self, x: np.ndarray, y: np.ndarray) -> float:
        """LPIPS between two images."""
        return float(self.distances(self.layer_features(x), self.layer_features(y))[0])

    def encode(self, images: Sequence[np.ndarray], output: str = "features") -> np.ndarray:
        raise ValueError(
            "lpips has no per-image feature output (it compares pairs); "
            "use layer_features() and distances()"
        )


class LpipsVggEncoder(LpipsEncoder):
    """LPIPS v0.1 with the VGG16 trunk."""

    name = "lpips_vgg"
    net = "vgg"
