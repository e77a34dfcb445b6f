"""varbench: reproducible few-shot evaluation of image-variation models."""

from __future__ import annotations

__version__ = "0.1.0"
