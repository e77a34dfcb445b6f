"""The machine a result was computed on: the cache folder and the provenance every row records."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from varbench import __version__


def default_cache_dir() -> Path:
    """``$VARBENCH_CACHE`` or ``~/.cache/varbench`` (never inside the package)."""
    return Path(os.environ.get("VARBENCH_CACHE", Path.home() / ".cache" / "varbench")).expanduser()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def git_sha() -> str:
    """Commit of the varbench checkout, or '' when installed from a wheel."""
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return ""
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip() if out.returncode == 0 else ""
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty and sha else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict[str, str]:
    """Versions and platform recorded with every row."""
    import numpy

    return {
        "varbench_version": __version__,
        "git_sha": git_sha(),
        "python_version": platform.python_version(),
        "torch_version": _version("torch"),
        "diffusers_version": _version("diffusers"),
        "transformers_version": _version("transformers"),
        "torch_fidelity_version": _version("torch-fidelity"),
        "numpy_version": numpy.__version__,
        "platform": f"{platform.system()}-{platform.machine()}",
    }
