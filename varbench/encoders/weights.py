"""Locating encoder weight files: --weights NAME=PATH, $VARBENCH_WEIGHTS_DIR, or the usual caches."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from varbench.errors import WeightsUnavailableError

NETWORK_TIMEOUT_S = 10.0  # `varbench fetch` and online loads give up on a silent network


def offline() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE / VARBENCH_OFFLINE)."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "VARBENCH_OFFLINE")
    )


def torch_hub_checkpoint(filename: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps ``filename``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def find_weights(
    encoder: str, explicit: str | None, filename: str, extra: list[Path] = ()
) -> Path | None:
    """First existing file among: explicit path, $VARBENCH_WEIGHTS_DIR/filename, extra candidates."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"--weights {encoder}={explicit}: no such file. Pass the path of {filename}, "
                f"or run `varbench fetch --encoders {encoder}` on a machine with internet."
            )
        return path
    candidates = []
    if os.environ.get("VARBENCH_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["VARBENCH_WEIGHTS_DIR"]).expanduser() / filename)
    candidates += list(extra)
    return next((c for c in candidates if c.is_file()), None)


def missing_weights_error(encoder: str, filename: str, source: str) -> WeightsUnavailableError:
    """The one message users see when an encoder's weights are not on this machine."""
    return WeightsUnavailableError(
        f"encoder {encoder!r} needs weights file {filename} ({source}), which is not on this machine "
        f"and cannot be downloaded (offline). Run `varbench fetch --encoders {encoder}` where there is "
        f"internet, or pass --weights {encoder}=PATH, or put {filename} in $VARBENCH_WEIGHTS_DIR."
    )


class UnsafeWeightsError(WeightsUnavailableError):
    """A weights file that needs pickled code to load, or cannot be read as weights at all."""


SAFETENSORS_HOWTO = (
    "convert it to safetensors: in an environment you trust, load it once with "
    "torch.load(PATH, weights_only=False) and save the state dict with "
    "safetensors.torch.save_file(state_dict, 'NAME.safetensors'), then pass that file"
)

# What torch / safetensors raise on a file that is not a loadable weights file.
_UNREADABLE = (RuntimeError, KeyError, EOFError, ValueError, OSError, pickle.UnpicklingError)


def _unreadable_types() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return _UNREADABLE
    return (*_UNREADABLE, SafetensorError)


def weights_file_error(path: str | Path, exc: BaseException) -> UnsafeWeightsError:
    """The one message for a weights file that cannot be loaded: pickled code or damage."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and code:
        return UnsafeWeightsError(
            f"weights file {path} needs pickled Python code to load (it calls {code.group(1)}); "
            f"varbench never runs code from weights files. To use it, {SAFETENSORS_HOWTO}."
        )
    return UnsafeWeightsError(
        f"weights file {path} cannot be read as weights ({type(exc).__name__}: {first}); "
        "it is damaged or not the expected checkpoint. Re-download it (`varbench fetch`) or "
        f"pass the right file; if it is a trusted checkpoint in another format, {SAFETENSORS_HOWTO}."
    )


@contextlib.contextmanager
def weights_only_loads(path: str | Path | None = None) -> Iterator[None]:
    """Force every ``torch.load`` inside (including libraries' own calls) to refuse pickled code.

    With ``path`` (the weights file being loaded), a refused or unreadable file becomes one
    ``UnsafeWeightsError`` naming it instead of a library traceback.
    """
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    except _unreadable_types() as exc:
        if path is None:
            raise
        raise weights_file_error(path, exc) from exc
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a torch file, never executing pickled code."""
    path = Path(path)
    with weights_only_loads(path):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def verify_weights_file(path: str | Path) -> None:
    """Fail now, before anything is generated, if ``path`` needs pickled code or is unreadable.

    Cheap: a safetensors header, or ``torch.load(weights_only=True, mmap=True)`` (tensors are
    mapped, not read; legacy non-zip files are loaded in full).
    """
    path = Path(path)
    with weights_only_loads(path):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
            return
        import torch

        try:
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            torch.load(str(path), map_location="cpu", weights_only=True)


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """A file of ``repo_id`` already in the Hugging Face cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def network_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_network(what: str, host: str) -> None:
    """Raise a clear error at once instead of hanging when ``host`` cannot be reached."""
    if offline():
        raise WeightsUnavailableError(
            f"cannot fetch {what}: offline mode is set (HF_HUB_OFFLINE / VARBENCH_OFFLINE); "
            "run `varbench fetch` on a machine with internet, then copy the caches."
        )
    if not network_reachable(host):
        raise WeightsUnavailableError(
            f"cannot fetch {what}: {host} is not reachable from this machine. Run `varbench fetch` "
            "where there is internet (the files land in the torch hub / Hugging Face caches), "
            "or pass local files with --weights NAME=PATH."
        )


@contextlib.contextmanager
def network_timeout(seconds: float = NETWORK_TIMEOUT_S) -> Iterator[None]:
    """Make sockets opened inside (urllib downloads) give up after ``seconds`` of silence."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
