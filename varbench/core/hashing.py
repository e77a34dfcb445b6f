"""Stable hashes for cache keys, seeds and manifests (sha256 of canonical JSON)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def sha256_json(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_text(text: str) -> str:
    """sha256 hex digest of a UTF-8 string."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pixel_sha256(image: np.ndarray) -> str:
    """Content hash of a decoded image: shape, dtype and pixel bytes (not the file encoding)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, independent of numpy/torch RNG versions."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def sample_seed(protocol_seed: int, cond_id: str, sample_index: int) -> int:
    """Seed of one sample: depends only on (protocol seed, conditioning image id, sample index)."""
    return derive_seed("sample", protocol_seed, cond_id, sample_index)
