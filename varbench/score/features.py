"""Feature cache keyed by (encoder configuration and image preparation hash, image pixel hash).

Identical images get bit-identical features wherever they appear (a copy of a reference image
reuses the reference's row), and uncached images are encoded in chunks of their sorted hashes
(``Encoder.chunk_size``: 64 on CPU, 256 on GPU), decoded and prepared by a thread pool one chunk
ahead of the forward pass. Batched kernels are not bit-exact across batch compositions, so a
row can differ in the last float32 bits depending on which images it was encoded with; the
measured size of that is in docs/metrics.md. Encoders with
several outputs (Inception: pool3, logits, spatial) fill all their outputs' caches from one
forward pass, so asking for the logits after the pool3 features costs no second pass.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from varbench.core.files import atomic_write_bytes, atomic_write_json
from varbench.core.hashing import sha256_json
from varbench.core.progress import progress_bar
from varbench.encoders.base import Encoder
from varbench.plan.imageprep import ImagePrep

log = logging.getLogger(__name__)
_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


# What zipfile / numpy raise on damaged bytes (a garbled header can claim any method or size).
_UNREADABLE = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    OverflowError,
    NotImplementedError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
)


class CorruptChunkError(ValueError):
    """A feature cache chunk whose bytes or contents cannot be trusted."""


def read_chunk(path: Path) -> dict[str, np.ndarray]:
    """Rows of one chunk, after checking everything that can go wrong with a file on disk.

    np.savez writes uncompressed zip members with a CRC-32; every member is read in full and
    ``zipfile.testzip`` re-checks the CRCs, so a flipped byte anywhere in the data is caught.
    The file name is the hash of its hash list, which catches a chunk renamed or swapped.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise CorruptChunkError(f"CRC-32 mismatch in member {bad}")
        with np.load(path, allow_pickle=False) as data:
            hashes = data["hashes"]
            feats = data["features"]
    except CorruptChunkError:
        raise
    except _UNREADABLE as exc:
        raise CorruptChunkError(f"{type(exc).__name__}: {exc}") from exc
    if hashes.ndim != 1 or hashes.dtype.kind != "U":
        raise CorruptChunkError(f"hashes have dtype {hashes.dtype} and shape {hashes.shape}")
    if feats.ndim < 2 or feats.shape[0] != hashes.shape[0]:
        raise CorruptChunkError(f"{hashes.shape[0]} hashes but features of shape {feats.shape}")
    if feats.dtype.kind != "f":
        raise CorruptChunkError(f"features have dtype {feats.dtype}, not floating point")
    if not np.isfinite(feats).all():
        raise CorruptChunkError("non-finite feature values")
    if f"{sha256_json([str(h) for h in hashes])[:24]}.npz" != path.name:
        raise CorruptChunkError("file name does not match the hashes it holds")
    return {str(h): f for h, f in zip(hashes, feats, strict=True)}


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
        """Read chunks not read yet (another cache of the same encoder may have added some).

        A chunk that cannot be trusted is logged, deleted and left to be recomputed: its hashes
        are then missing from the rows, so ``features`` encodes them again and rewrites it. So is
        a whole chunk whose row shape disagrees with the majority of rows in its folder.
        """
        if not self.root.is_dir():
            return self._rows
        fresh: dict[Path, dict[str, np.ndarray]] = {}
        for chunk in sorted(self.root.glob("*.npz")):
            if chunk.name in self._read:
                continue
            try:
                fresh[chunk] = read_chunk(chunk)
            except CorruptChunkError as exc:
                self._drop(chunk, str(exc))
        votes: Counter[tuple[int, ...]] = Counter()
        if self._rows:
            votes[next(iter(self._rows.values())).shape] += len(self._rows)
        for rows in fresh.values():
            if rows:
                votes[next(iter(rows.values())).shape] += len(rows)
        shape = votes.most_common(1)[0][0] if votes else None
        for chunk, rows in fresh.items():
            other = next((f.shape for f in rows.values()), shape)
            if other != shape:
                self._drop(chunk, f"rows of shape {other} where the others have {shape}")
                continue
            self._rows.update(rows)
            self._read.add(chunk.name)
        return self._rows

    def _drop(self, chunk: Path, reason: str) -> None:
        """Delete an untrustworthy chunk (its rows are recomputed and the chunk rewritten)."""
        log.warning(
            "feature cache chunk %s is damaged (%s); deleted, its features will be recomputed",
            chunk,
            reason,
        )
        chunk.unlink(missing_ok=True)

    def _write(self, output: str, chunk: list[str], feats: np.ndarray) -> str:
        """Store one chunk of ``output`` atomically; return its file name."""
        folder = self.base / output
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", {**self._config, "output": output})
        if not np.isfinite(feats).all():  # never cached: a cached row is always finite
            log.warning(
                "%s %s: non-finite features for %d image(s); not cached", self.encoder.name,
                output, int((~np.isfinite(feats).all(axis=tuple(range(1, feats.ndim)))).sum()),
            )  # fmt: skip
            return f"{sha256_json(chunk)[:24]}.npz"
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
            size = self.encoder.chunk_size()
            chunks = [missing[s : s + size] for s in range(0, len(missing), size)]

            def decode(chunk: list[str]) -> list[np.ndarray]:
                return list(pool.map(lambda h: self.prep(load(h)), chunk))

            with (
                ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool,
                ThreadPoolExecutor(max_workers=1) as ahead,
                progress_bar(f"{description} ({self.encoder.name})", len(missing)) as advance,
            ):
                # decoding and preparing chunk i + 1 overlaps the forward pass of chunk i
                pending = ahead.submit(decode, chunks[0])
                for i, chunk in enumerate(chunks):
                    images = pending.result()
                    if i + 1 < len(chunks):
                        pending = ahead.submit(decode, chunks[i + 1])
                    many = self.encoder.encode_many(images, outputs)
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
