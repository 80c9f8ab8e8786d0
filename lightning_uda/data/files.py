"""Reading image and label files, from disk or from inside zip archives, and the errors.

Images are read as RGB with OpenCV after a cheap completeness check (:func:`check_complete`);
index masks (Cityscapes, GTA5 and folder labels) with Pillow, which keeps palette indices;
16-bit colour labels (SYNTHIA) with OpenCV, unchanged. A path with a ``.zip`` component that is
a file names a member of that archive (see :mod:`lightning_uda.data.archives`): its bytes are
read through the process's handle and decoded by the same OpenCV/Pillow calls
(``cv2.imdecode`` is ``cv2.imread``'s decoder), after the same completeness check.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lightning_uda.data.archives import read_member, split_member_path
from lightning_uda.data.errors import (
    AllIgnoreLabelError,
    CorruptImageError,
    DatasetLayoutError,
    UnknownLabelError,
    _show,  # noqa: F401 (re-exported: datasets.py and folder.py import it from here)
)

__all__ = [
    "AllIgnoreLabelError",
    "CorruptImageError",
    "DatasetLayoutError",
    "UnknownLabelError",
    "check_complete",
    "image_size",
    "read_image",
    "read_unchanged",
]

PathLike = str | os.PathLike

#: PNG files end with this IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TAIL = 64  # bytes of a file's end the completeness check looks at


def check_complete(path: PathLike) -> None:
    """Raise :class:`CorruptImageError` if a PNG or JPEG file ``path`` is cut short.

    OpenCV and libjpeg decode a truncated JPEG into a partly grey image with only a message on
    stderr, and a PNG cut in its last chunk can load too; a damaged training image then trains
    silently. A complete PNG ends with its ``IEND`` chunk and a complete JPEG with the ``FF D9``
    end-of-image marker (trailing zero padding allowed), so reading the file's last bytes is
    enough: the check costs one small read per image (a few µs), not a second decode. Other
    formats pass unchecked. (Archive members are checked on their bytes by the readers below.)
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        return
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL))
            tail = handle.read()
    except OSError as error:
        raise CorruptImageError(f"Cannot read {path}: {error}") from error
    _check_tail(path, tail, size)


def _check_tail(path: Path, tail: bytes, size: int) -> None:
    suffix = path.suffix.lower()
    if suffix == ".png":
        complete = tail.endswith(_PNG_END)
        what = "its IEND chunk"
    elif suffix in (".jpg", ".jpeg"):
        complete = b"\xff\xd9" in tail  # FF D9 only occurs as the marker (FF is stuffed)
        what = "the JPEG end-of-image marker (FF D9)"
    else:
        return
    if not complete:
        raise CorruptImageError(
            f"{path} is truncated or damaged: it does not end with {what} ({size} bytes). It "
            "would decode partly (grey or garbage pixels); copy or extract the file again."
        )


def _member_bytes(path: Path) -> bytes | None:
    """The checked bytes of ``path`` if it names an archive member, else ``None``."""
    member = split_member_path(path)
    if member is None:
        return None
    data = read_member(*member)
    _check_tail(path, data[-_TAIL:], len(data))
    return data


def _decode(path: Path, flags: int) -> np.ndarray | None:
    data = _member_bytes(path)
    if data is None:
        check_complete(path)
        return cv2.imread(str(path), flags)
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``H × W × 3`` uint8 **RGB** (OpenCV reads BGR; converted here)."""
    image = _decode(Path(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f"Cannot read image {path} (missing, empty or not an image).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_unchanged(path: PathLike) -> np.ndarray:
    """Read a file's values unchanged (16-bit stays 16-bit; colour channels in **BGR** order)."""
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetLayoutError(f"Cannot read label image {path}.")
    return image


def image_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file or archive member, from its header (no decode)."""
    path = Path(path)
    member = split_member_path(path)
    source = path if member is None else io.BytesIO(read_member(*member))
    try:
        with Image.open(source) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"Cannot read image {path}: {error}") from error


def _read_index_mask(path: PathLike) -> np.ndarray:
    # Pillow, not OpenCV: OpenCV expands paletted PNGs (GTA5's labels) to colours, Pillow keeps
    # the palette indices, which are the ids.
    path = Path(path)
    data = _member_bytes(path)
    if data is None:
        check_complete(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            mask = np.array(image)
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"Cannot read label image {path}: {error}") from error
    if mask.ndim != 2:
        raise DatasetLayoutError(
            f"Label image {path} has shape {mask.shape}: expected a single-channel (or "
            "paletted) PNG of class ids, not colours."
        )
    return mask
