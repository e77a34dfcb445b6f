"""Dataset image decoding with one policy for odd files: convert like the references or reject.

torch-fidelity (``datasets.ImagesPathDataset``) and clean-fid (``utils.ResizeDataset``) both load
an image as ``PIL.Image.open(path).convert("RGB")``: first frame, stored orientation (no EXIF
transpose), alpha dropped, no colour management. ``read_dataset_image`` returns exactly those
pixels for every file it accepts, and raises ``ImageRejected`` naming the file and the fix for
files where that conversion would be wrong or ambiguous (16-bit and float data, several frames,
decompression bombs) or impossible (empty, unreadable, broken or looping links, not a file).
The table is in docs/metrics.md, "Image files: what is converted, what is rejected".
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from varbench.core.files import Blob, ImageSource
from varbench.errors import VarbenchError

# Bump when the policy changes, so cached validation results are recomputed.
IMAGE_POLICY_VERSION = 2
MIN_SIDE = 8
# Modes whose samples are not 0..255: convert("RGB") clips them (16-bit) or truncates them (float).
# Mode -> (what it is, an example scaling for the fix).
_SCALE_16 = "value * 255 / 65535 for full-range 16-bit data"
HIGH_DEPTH_MODES = {
    "I;16": ("16-bit", _SCALE_16),
    "I;16B": ("16-bit", _SCALE_16),
    "I;16L": ("16-bit", _SCALE_16),
    "I;16N": ("16-bit", _SCALE_16),
    "I": ("32-bit integer", _SCALE_16 + " stored as 32-bit"),
    "F": ("32-bit float", "value * 255 for data in 0..1"),
}
# A multi-picture JPEG (MPO: camera previews, depth maps) holds one primary image, frame 0.
PRIMARY_FRAME_FORMATS = {"MPO"}
_REENCODE = "re-save it as an 8-bit PNG or JPEG, or delete it"


class ImageRejected(VarbenchError):
    """A dataset file the image policy rejects; the message names the file and the fix."""


def stat_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file (broken or looping link, not a file, empty), or None."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        return os_problem(path, exc)
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "FIFO, socket or device"
        return (
            f"not a regular file ({kind}) {path}; fix: replace it with an image file or delete it"
        )
    if st.st_size == 0:
        return f"empty file (0 bytes) {path}; fix: copy the image again or delete it"
    return None


def os_problem(path: str | os.PathLike, exc: OSError) -> str:
    """One problem line for an OS error on ``path``, with the fix."""
    path = Path(path)
    if exc.errno == errno.ELOOP:
        return (
            f"symlink loop {path} (too many levels of symbolic links); "
            "fix: point the link at a real image file or delete it"
        )
    if exc.errno == errno.ENOENT and path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (
            f"broken symlink {path} -> {target} (target missing); "
            "fix: restore the target or delete the link"
        )
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied reading {path}; fix: make it readable (chmod a+r) or delete it"
    return f"unreadable file {path}: {exc.strerror or exc}; fix: copy it again or delete it"


def _entry_fix(exc: Exception) -> str:
    """The fix for a container entry that cannot be read, unless the reader's error names one."""
    return "" if "fix:" in str(exc) else "; fix: repair or re-download the archive"


def _open_problem(path: ImageSource, exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return (
            f"image too large {path}: {exc} (limit PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}); fix: downscale it or delete it"
        )
    if isinstance(exc, OSError) and not isinstance(exc, UnidentifiedImageError):
        if isinstance(path, Blob):
            return f"unreadable entry {path}: {exc}{_entry_fix(exc)}"
        return os_problem(path, exc)
    return (
        f"not a decodable image {path}: PIL cannot identify it (wrong extension, a format such as "
        f"HEIC or AVIF without its Pillow plugin, or a corrupt file); fix: {_REENCODE}"
    )


def _header_problem(path: ImageSource, im: Image.Image) -> str | None:
    """Checks on the header only, before any pixel is decoded."""
    width, height = im.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return (
            f"image too large {path}: {width}x{height} = {width * height} pixels exceeds PIL's "
            f"decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS = {limit}; "
            "fix: downscale it or delete it"
        )
    if im.mode in HIGH_DEPTH_MODES:
        depth, scaling = HIGH_DEPTH_MODES[im.mode]
        return (
            f"{depth} image {path} (PIL mode {im.mode}): convert('RGB'), as torch-fidelity and "
            "clean-fid load images, would clip or truncate its values to 0..255 instead of "
            "scaling them; fix: convert it to 8 bits per channel yourself, choosing the scaling "
            f"(e.g. {scaling}), and save it as PNG, or delete it"
        )
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format not in PRIMARY_FRAME_FORMATS:
        return (
            f"multi-frame image {path} ({im.format}, {frames} frames): which frame to score is "
            "ambiguous; fix: save the frame you mean as a single-frame PNG or JPEG, or delete it"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        return (
            f"image too small ({width}x{height}) {path}; fix: images need at least {MIN_SIDE} "
            "px per side, replace or delete it"
        )
    return None


def _entry_bytes(src: Blob) -> bytes:
    """A container entry's bytes, or ``ImageRejected`` naming the entry."""
    try:
        data = src.read()
    except Exception as exc:  # noqa: BLE001 - a container read failure names the entry
        raise ImageRejected(
            f"unreadable entry {src}: {type(exc).__name__}: {exc}{_entry_fix(exc)}"
        ) from exc
    if not data:
        raise ImageRejected(f"empty entry (0 bytes) {src}; fix: repair or re-download the archive")
    return data


def read_dataset_image(path: ImageSource) -> np.ndarray:
    """Decode ``path`` fully as ``Image.open(path).convert("RGB")`` (HxWx3 uint8) or raise ``ImageRejected``.

    ``path`` may be a container entry (``Blob``): its bytes decode exactly as the same file would.
    """
    if isinstance(path, Blob):
        opened: Any = io.BytesIO(_entry_bytes(path))
    else:
        path = opened = Path(path)
        problem = stat_problem(path)
        if problem:
            raise ImageRejected(problem)
    try:
        im = Image.open(opened)
    except Exception as exc:  # noqa: BLE001 - every failure to open is a named dataset problem
        raise ImageRejected(_open_problem(path, exc)) from exc
    with im:
        problem = _header_problem(path, im)
        if problem:
            raise ImageRejected(problem)
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001 - decoder failures are named dataset problems
            raise ImageRejected(
                f"unreadable or truncated image {path}: {type(exc).__name__}: {exc}; "
                "fix: copy or download it again, or delete it"
            ) from exc
        try:
            rgb = im.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - an unsupported mode is a named dataset problem
            raise ImageRejected(
                f"cannot convert {path} (PIL mode {im.mode}) to RGB: {exc}; fix: {_REENCODE}"
            ) from exc
        return np.asarray(rgb, dtype=np.uint8).copy()


def image_problem(path: ImageSource) -> tuple[np.ndarray | None, str | None]:
    """``(pixels, None)`` for an accepted file, ``(None, problem line)`` for a rejected one."""
    try:
        return read_dataset_image(path), None
    except ImageRejected as exc:
        return None, str(exc)


@contextlib.contextmanager
def policy_warnings_silenced() -> Iterator[None]:
    """Silence PIL warnings the policy already answers (bombs are rejected, alpha is dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        yield
