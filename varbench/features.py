"""Feature cache keyed by (encoder configuration hash, image pixel hash).

Identical images get bit-identical features wherever they appear (a copy of a reference image
reuses the reference's row), and uncached images are encoded in fixed-size chunks of their sorted
hashes, so neither --batch-size nor an interruption changes a single feature.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from varbench.encoders.base import Encoder
from varbench.hashing import sha256_json
from varbench.io import atomic_write_bytes, atomic_write_json
from varbench.progress import progress_bar

log = logging.getLogger(__name__)


class FeatureCache:
    """Chunks of ``(hashes, features)`` under ``<cache>/features/<encoder>-<key>/<output>/``."""

    def __init__(self, cache_dir: str | Path, encoder: Encoder, output: str = "features"):
        self.encoder = encoder
        self.output = output
        key = encoder.cache_key()
        self.root = Path(cache_dir) / "features" / f"{encoder.name}-{key[:20]}" / output
        self._rows: dict[str, np.ndarray] | None = None
        self._config = {"encoder": encoder.name, "key": key, **encoder.config()}

    def _load(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            rows: dict[str, np.ndarray] = {}
            if self.root.is_dir():
                for chunk in sorted(self.root.glob("*.npz")):
                    try:
                        with np.load(chunk, allow_pickle=False) as data:
                            for h, f in zip(data["hashes"], data["features"], strict=True):
                                rows[str(h)] = f
                    except (OSError, ValueError, KeyError) as exc:
                        log.warning("ignoring unreadable feature chunk %s (%s)", chunk, exc)
            self._rows = rows
        return self._rows

    def features(
        self,
        hashes: Sequence[str],
        load: Callable[[str], np.ndarray],
        description: str = "encoding",
    ) -> np.ndarray:
        """Features for images identified by pixel hash; ``load(hash)`` decodes uncached ones."""
        rows = self._load()
        missing = sorted(set(hashes) - rows.keys())
        if missing:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.root / "config.json", self._config)
            size = self.encoder.batch_size
            with progress_bar(f"{description} ({self.encoder.name})", len(missing)) as advance:
                for start in range(0, len(missing), size):
                    chunk = missing[start : start + size]
                    feats = np.asarray(self.encoder.encode([load(h) for h in chunk], self.output))
                    if feats.shape[0] != len(chunk):
                        raise RuntimeError(f"encoder {self.encoder.name} returned wrong batch size")
                    buf = io.BytesIO()
                    np.savez(buf, hashes=np.array(chunk), features=feats)
                    atomic_write_bytes(self.root / f"{sha256_json(chunk)[:24]}.npz", buf.getvalue())
                    for h, f in zip(chunk, feats, strict=True):
                        rows[h] = f
                    advance(len(chunk))
        if not hashes:
            return np.zeros((0, 0))
        return np.stack([rows[h] for h in hashes])
