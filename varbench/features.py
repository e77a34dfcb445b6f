"""Feature cache keyed by (encoder configuration and image preparation hash, image pixel hash).

Identical images get bit-identical features wherever they appear (a copy of a reference image
reuses the reference's row), and uncached images are encoded in fixed-size chunks of their sorted
hashes, so neither --batch-size nor an interruption changes a single feature. Encoders with
several outputs (Inception: pool3, logits, spatial) fill all their outputs' caches from one
forward pass, so asking for the logits after the pool3 features costs no second pass.
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
from varbench.prepare import ImagePrep
from varbench.progress import progress_bar

log = logging.getLogger(__name__)


class FeatureCache:
    """Chunks of ``(hashes, features)`` under ``<cache>/features/<encoder>-<key>/<output>/``."""

    def __init__(
        self,
        cache_dir: str | Path,
        encoder: Encoder,
        output: str = "features",
        prep: ImagePrep | None = None,
    ):
        self.encoder = encoder
        self.output = output
        self.prep = prep or ImagePrep()
        key = sha256_json({"encoder": encoder.cache_key(), "prepare": self.prep.identity()})
        self.base = Path(cache_dir) / "features" / f"{encoder.name}-{key[:20]}"
        self.root = self.base / output
        self._rows: dict[str, np.ndarray] = {}
        self._read: set[str] = set()
        self._config = {
            "encoder": encoder.name,
            "key": key,
            "prepare": self.prep.identity(),
            **encoder.config(),
        }

    def _load(self) -> dict[str, np.ndarray]:
        """Read chunks not read yet (another cache of the same encoder may have added some)."""
        if self.root.is_dir():
            for chunk in sorted(self.root.glob("*.npz")):
                if chunk.name in self._read:
                    continue
                try:
                    with np.load(chunk, allow_pickle=False) as data:
                        for h, f in zip(data["hashes"], data["features"], strict=True):
                            self._rows[str(h)] = f
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("ignoring unreadable feature chunk %s (%s)", chunk, exc)
                self._read.add(chunk.name)
        return self._rows

    def _write(self, output: str, chunk: list[str], feats: np.ndarray) -> str:
        """Store one chunk of ``output`` atomically; return its file name."""
        folder = self.base / output
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", {**self._config, "output": output})
        buf = io.BytesIO()
        np.savez(buf, hashes=np.array(chunk), features=feats)
        name = f"{sha256_json(chunk)[:24]}.npz"
        atomic_write_bytes(folder / name, buf.getvalue())
        return name

    def features(
        self,
        hashes: Sequence[str],
        load: Callable[[str], np.ndarray],
        description: str = "encoding",
    ) -> np.ndarray:
        """Features for images identified by pixel hash; ``load(hash)`` decodes uncached ones.

        Decoded images pass through the cache's preparation before the encoder sees them.
        """
        rows = self._load()
        missing = sorted(set(hashes) - rows.keys())
        if missing:
            outputs = list(dict.fromkeys([self.output, *self.encoder.outputs]))
            size = self.encoder.batch_size
            with progress_bar(f"{description} ({self.encoder.name})", len(missing)) as advance:
                for start in range(0, len(missing), size):
                    chunk = missing[start : start + size]
                    many = self.encoder.encode_many([self.prep(load(h)) for h in chunk], outputs)
                    for output in outputs:
                        if np.asarray(many[output]).shape[0] != len(chunk):
                            raise RuntimeError(
                                f"encoder {self.encoder.name} returned wrong batch size"
                            )
                    for output in outputs[1:]:
                        self._write(output, chunk, np.asarray(many[output]))
                    feats = np.asarray(many[self.output])
                    self._read.add(self._write(self.output, chunk, feats))
                    for h, f in zip(chunk, feats, strict=True):
                        rows[h] = f
                    advance(len(chunk))
        if not hashes:
            return np.zeros((0, 0))
        return np.stack([rows[h] for h in hashes])
