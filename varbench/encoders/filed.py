"""Base class for encoders whose weights are one file: locate, check, fetch and hash it once."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from varbench.core.hashing import sha256_file
from varbench.encoders.base import Encoder
from varbench.encoders.weights import (
    find_weights,
    missing_weights_error,
    network_reachable,
    offline,
    require_network,
    verify_weights_file,
)


class WeightsFileEncoder(Encoder):
    """--weights NAME=PATH, else $VARBENCH_WEIGHTS_DIR/<weights_file()>, else a library cache."""

    host: ClassVar[str] = "huggingface.co"  # probed (seconds) before any download

    def __init__(self, weights: str | None = None, device: str = "cpu", **options: Any) -> None:
        super().__init__(weights, device, **options)
        self._net = None
        self._path: Path | None = None
        self._searched = False
        self._sha: str | None = None
        self._verified = False

    @classmethod
    @abstractmethod
    def weights_file(cls) -> str:
        """File name looked up in ``$VARBENCH_WEIGHTS_DIR`` (and named in errors)."""

    @abstractmethod
    def cached_candidates(self) -> list[Path]:
        """Where the library's own cache may already hold the file (no network)."""

    @abstractmethod
    def source(self) -> str:
        """Where the default weights come from, for error messages."""

    @abstractmethod
    def download(self) -> Path:
        """Download the default weights into the library's cache; return the file."""

    def weights_path(self) -> Path | None:
        """Local weights file, or None when it would have to be downloaded."""
        if not self._searched:
            self._path = find_weights(
                self.name, self.weights, self.weights_file(), self.cached_candidates()
            )
            self._searched = True
        return self._path

    def check_available(self) -> None:
        """Weights on disk and loadable without pickled code, or downloadable; else fail now."""
        path = self.weights_path()
        if path is None:
            if offline() or not network_reachable(self.host):
                raise missing_weights_error(self.name, self.weights_file(), self.source())
        elif not self._verified:
            verify_weights_file(path)
            self._verified = True

    def fetch(self) -> Path:
        """Download (if needed) and return the weights file."""
        require_network(f"{self.name} weights", self.host)
        return self.download()

    def resolved_path(self) -> Path:
        """The weights file, downloaded first if it is not on this machine (and we are online)."""
        if self.weights_path() is None:
            self.check_available()
            self._path = self.fetch()
        return self._path

    def weights_sha256(self) -> str:
        """sha256 of the weights file actually used (part of the cache key)."""
        if self._sha is None:
            self._sha = sha256_file(str(self.resolved_path()))
        return self._sha
