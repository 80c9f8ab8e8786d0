"""Reading image and label files, and the errors the datasets raise.

Images are read as RGB with OpenCV after a cheap completeness check (:func:`check_complete`);
index masks (Cityscapes, GTA5 and folder labels) with Pillow, which keeps palette indices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "AllIgnoreLabelError",
    "CorruptImageError",
    "DatasetLayoutError",
    "UnknownLabelError",
    "check_complete",
    "read_image",
]

PathLike = str | os.PathLike

_SHOW_MAX = 5  # how many offending files an error message names


class DatasetLayoutError(ValueError):
    """The files on disk do not have the layout a dataset expects (the message shows it)."""


class CorruptImageError(DatasetLayoutError):
    """An image or label file is truncated or damaged (it would decode partly, with a warning)."""


class AllIgnoreLabelError(ValueError):
    """Source labels that load with every pixel void: almost always a conversion problem."""


#: PNG files end with this IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_complete(path: PathLike) -> None:
    """Raise :class:`CorruptImageError` if a PNG or JPEG file ``path`` is cut short.

    OpenCV and libjpeg decode a truncated JPEG into a partly grey image with only a message on
    stderr, and a PNG cut in its last chunk can load too; a damaged training image then trains
    silently. A complete PNG ends with its ``IEND`` chunk and a complete JPEG with the ``FF D9``
    end-of-image marker (trailing zero padding allowed), so reading the file's last bytes is
    enough: the check costs one small read per image (a few µs), not a second decode. Other
    formats pass unchecked.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        return
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError as error:
        raise CorruptImageError(f"Cannot read {path}: {error}") from error
    if suffix == ".png":
        complete = tail.endswith(_PNG_END)
        what = "its IEND chunk"
    else:
        complete = b"\xff\xd9" in tail  # FF D9 only occurs as the marker (FF is stuffed)
        what = "the JPEG end-of-image marker (FF D9)"
    if not complete:
        raise CorruptImageError(
            f"{path} is truncated or damaged: it does not end with {what} ({size} bytes). It "
            "would decode partly (grey or garbage pixels); copy or extract the file again."
        )


class UnknownLabelError(ValueError):
    """A label image holds a value outside the dataset's id table (corrupt or foreign file)."""


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``H × W × 3`` uint8 **RGB** (OpenCV reads BGR; converted here)."""
    check_complete(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f"Cannot read image {path} (missing, empty or not an image).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_index_mask(path: Path) -> np.ndarray:
    # Pillow, not OpenCV: OpenCV expands paletted PNGs (GTA5's labels) to colours, Pillow keeps
    # the palette indices, which are the ids.
    check_complete(path)
    try:
        with Image.open(path) as image:
            mask = np.array(image)
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"Cannot read label image {path}: {error}") from error
    if mask.ndim != 2:
        raise DatasetLayoutError(
            f"Label image {path} has shape {mask.shape}: expected a single-channel (or "
            "paletted) PNG of class ids, not colours."
        )
    return mask


def _show(items: Sequence[object]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW_MAX])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW_MAX else "")
