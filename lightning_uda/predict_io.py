"""Files in and out of ``lightning-uda predict``: finding the inputs, reading any image as RGB,
and writing one image's outputs (train ids, colours, overlay, label ids, confidence).

Inputs are files, folders (their PNG/JPEG files, sub-folders included) or glob patterns. An image
is read with Pillow in whatever mode it is stored: grey-scale (``L``, ``I;16``), palette, RGBA
(alpha dropped: the network never saw transparency), CMYK; EXIF orientation is applied, as photo
viewers do. What cannot be read is reported, not fatal: :func:`read_rgb` raises
:class:`UnreadableImageError` with the reason, and the command skips the file.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lightning_uda.callbacks.prediction_writer import train_ids_to_label_ids
from lightning_uda.data.labels import colorize

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputImage",
    "UnreadableImageError",
    "find_inputs",
    "read_rgb",
    "write_outputs",
]

#: Extensions searched for in input folders (lower-case); files named directly may be any
#: format Pillow reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: Output file suffixes, by kind.
SUFFIXES = {
    "train_ids": "_trainIds.png",
    "color": "_color.png",
    "overlay": "_overlay.png",
    "label_ids": "_labelIds.png",
    "confidence": "_confidence.png",
}


class UnreadableImageError(OSError):
    """An input that is not a readable image (the message names the file and why)."""


@dataclass(frozen=True)
class InputImage:
    """One input file and the stem of its outputs, relative to the output folder."""

    path: Path
    output_stem: Path


def find_inputs(inputs: Sequence[str]) -> tuple[list[InputImage], list[str]]:
    """Expand ``inputs`` (files, folders, glob patterns) into images, in the order given.

    A folder contributes its PNG/JPEG files (recursively; outputs keep the sub-folders); a file
    is taken whatever its extension (reading it tells whether it is an image); a pattern is
    expanded with :func:`glob.glob` (``**`` recursive). A file reached twice is taken once.

    Returns:
        ``(images, problems)``: the images, and one message per input that matched nothing.

    Raises:
        ValueError: two inputs would write the same output names (e.g. ``a/x.png`` and
            ``b/x.jpg`` named directly); the message names both.
    """
    images: list[InputImage] = []
    problems: list[str] = []
    seen: set[Path] = set()
    owners: dict[Path, Path] = {}

    def add(path: Path, stem: Path) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        if stem in owners:
            raise ValueError(
                f"{owners[stem]} and {path} would both be written as {stem}_*.png; predict them "
                "in separate runs (--out) or pass their folder instead"
            )
        owners[stem] = path
        images.append(InputImage(path=path, output_stem=stem))

    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                problems.append(f"{given}: folder holds no {'/'.join(IMAGE_EXTENSIONS)} files")
            for file in found:
                add(file, file.relative_to(path).with_suffix(""))
        elif path.is_file():
            add(path, Path(path.stem))
        elif glob.has_magic(given):
            matches = sorted(Path(p) for p in glob.glob(given, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                problems.append(f"{given}: pattern matched no file")
            for file in files:
                add(file, Path(file.stem))
        else:
            problems.append(f"{given}: no such file or folder")
    return images, problems


def read_rgb(path: Path) -> np.ndarray:
    """``H × W × 3`` uint8 RGB pixels of the image file ``path``, whatever its mode.

    16-bit grey-scale is scaled to 8 bits by its full range (``value / 257``), 32-bit integer
    and float grey by their maximum; alpha is dropped.

    Raises:
        UnreadableImageError: not an image, a truncated or corrupt file, or an empty image.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decodes now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened) or opened
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") else max(values.max(), 1.0)
                grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"{path}: unreadable or truncated image ({error})") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise UnreadableImageError(f"{path}: empty image (shape {rgb.shape})")
    return rgb


def overlay(rgb: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 − alpha) · rgb + alpha · colors``, rounded, ``H × W × 3`` uint8."""
    mixed = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def write_outputs(
    out_dir: Path,
    stem: Path,
    rgb: np.ndarray,
    train_ids: np.ndarray,
    palette: np.ndarray,
    confidence: np.ndarray | None = None,
    label_ids: bool = False,
    alpha: float = 0.5,
) -> list[Path]:
    """Write one image's outputs under ``out_dir`` as ``<stem><suffix>`` (:data:`SUFFIXES`).

    Args:
        out_dir: output folder (sub-folders of ``stem`` are created).
        stem: output stem relative to ``out_dir`` (:attr:`InputImage.output_stem`).
        rgb: ``H × W × 3`` uint8 input pixels (for the overlay).
        train_ids: ``H × W`` predicted train ids ``0..C-1``.
        palette: ``C × 3`` uint8 colours.
        confidence: ``H × W`` float max softmax probability in [0, 1], written as an 8-bit PNG
            (``round(255 · p)``); ``None``: not written.
        label_ids: also write Cityscapes label ids (the classes must be Cityscapes' 19).
        alpha: weight of the class colours in the overlay.

    Returns:
        The files written.
    """
    base = out_dir / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    ids = train_ids.astype(np.uint8)
    colors = colorize(ids, palette)
    images = {
        "train_ids": ids,
        "color": colors,
        "overlay": overlay(rgb, colors, alpha),
    }
    if label_ids:
        images["label_ids"] = train_ids_to_label_ids(ids)
    if confidence is not None:
        images["confidence"] = np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)
    written = []
    for kind, array in images.items():
        path = base.parent / f"{base.name}{SUFFIXES[kind]}"
        Image.fromarray(array).save(path)
        written.append(path)
    return written
