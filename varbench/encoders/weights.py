"""Locating encoder weight files: --weights NAME=PATH, $VARBENCH_WEIGHTS_DIR, or the usual caches."""

from __future__ import annotations

import os
from pathlib import Path

from varbench.errors import WeightsUnavailableError


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
