"""Albumentations pipelines for training and evaluation (the DACS recipe as presets).

Conventions:

- **Sizes are ``(height, width)`` everywhere** (like torch and albumentations). The papers write
  sizes as width × height: "GTA5 resized to 1280×720" is ``resize=(720, 1280)`` here.
- A pipeline is called as ``transform(image=rgb, mask=train_ids)`` with ``rgb``: ``H × W × 3``
  uint8 RGB and ``train_ids``: ``H × W`` uint8 (already mapped to train ids, 255 = ignore); the
  mask may be omitted. It returns ``{"image": float 3 × h × w tensor, ImageNet-normalised,
  "mask": uint8 h × w tensor}``; the datasets turn the mask into ``long``.
- Masks are resized with nearest-neighbour interpolation and padded with 255 (ignore), so train
  ids are never blended and padding never counts as a class. Images are padded with black (0)
  before normalisation.

Presets (:func:`preset`), from DACS (Tranheden et al., WACV 2021, and its code): source and target
images are resized, then a random 512 × 512 crop is taken; no flip (DACS' loaders have it
commented out); evaluation at 512 × 1024 with nearest-resized labels.

=====================  ==============  ============  ======
name                   resize (h, w)   crop (h, w)   flip
=====================  ==============  ============  ======
``gta5_train``         (720, 1280)     (512, 512)    no
``cityscapes_train``   (512, 1024)     (512, 512)    no
``synthia_train``      (760, 1280)     (512, 512)    no
``cityscapes_val``     (512, 1024)     --            no
``normalize``          --              --            no
=====================  ==============  ============  ======

Example:
    >>> import numpy as np
    >>> t = train_transform(resize=(64, 128), crop=(32, 32), flip=True)
    >>> out = t(image=np.zeros((100, 200, 3), np.uint8), mask=np.zeros((100, 200), np.uint8))
    >>> tuple(out["image"].shape), tuple(out["mask"].shape)
    ((3, 32, 32), (32, 32))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from lightning_uda.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["PRESETS", "normalize_transform", "preset", "train_transform", "val_transform"]


def _size(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"{name} must be (height, width) with positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _resize(size: tuple[int, int]) -> A.Resize:
    # INTER_AREA when downscaling approximates the antialiased PIL resize the papers used;
    # masks always nearest (albumentations' default mask_interpolation).
    return A.Resize(
        height=size[0],
        width=size[1],
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )


def _finish() -> list[A.BasicTransform]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0), ToTensorV2()]


def train_transform(
    resize: Sequence[int] | None = None,
    crop: Sequence[int] | None = (512, 512),
    flip: bool = True,
    extra: Sequence[A.BasicTransform] | None = None,
) -> A.Compose:
    """Training pipeline: resize → random crop (padded if needed) → flip → extra → normalise.

    Args:
        resize: ``(height, width)`` to resize every image to first; ``None`` keeps the size.
        crop: ``(height, width)`` of the random crop; ``None`` for no crop. If the (resized) image
            is smaller, it is padded (image with 0, mask with 255) before cropping.
        flip: random horizontal flip with p = 0.5.
        extra: more albumentations transforms, applied after flip and before normalisation
            (on uint8 RGB images).

    Returns:
        An ``A.Compose``; ``out = t(image=H×W×3 uint8, mask=H×W uint8)`` gives
        ``out["image"]``: float ``3 × h × w`` (ImageNet-normalised), ``out["mask"]``: ``h × w``.
    """
    steps: list[A.BasicTransform] = []
    if (size := _size(resize, "resize")) is not None:
        steps.append(_resize(size))
    if (crop_size := _size(crop, "crop")) is not None:
        steps.append(
            A.RandomCrop(
                height=crop_size[0],
                width=crop_size[1],
                pad_if_needed=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.extend(extra or [])
    return A.Compose(steps + _finish())


def val_transform(resize: Sequence[int] | None = (512, 1024)) -> A.Compose:
    """Evaluation pipeline: resize image (bilinear/area) and mask (nearest) → normalise.

    Args:
        resize: ``(height, width)``; DACS evaluates Cityscapes at ``(512, 1024)`` with labels
            resized by nearest neighbour. ``None`` keeps the original size.

    Returns:
        An ``A.Compose``, called like :func:`train_transform`'s.
    """
    steps: list[A.BasicTransform] = []
    if (size := _size(resize, "resize")) is not None:
        steps.append(_resize(size))
    return A.Compose(steps + _finish())


def normalize_transform() -> A.Compose:
    """Only ImageNet normalisation and conversion to tensors (the datasets' default)."""
    return A.Compose(_finish())


#: Keyword arguments of each preset (sizes are ``(height, width)``).
PRESETS: dict[str, dict[str, Any]] = {
    # DACS: GTA5 images (1914×1052) resized to 1280×720, random 512×512 crops.
    "gta5_train": {"resize": (720, 1280), "crop": (512, 512), "flip": False},
    # DACS: Cityscapes target images resized to 1024×512, random 512×512 crops.
    "cityscapes_train": {"resize": (512, 1024), "crop": (512, 512), "flip": False},
    # SYNTHIA-RAND-CITYSCAPES is natively 1280×760; crops as for GTA5.
    "synthia_train": {"resize": (760, 1280), "crop": (512, 512), "flip": False},
    # DACS evaluates on Cityscapes val resized to 1024×512 (labels: nearest).
    "cityscapes_val": {"resize": (512, 1024)},
    "normalize": {},
}


def preset(name: str, **overrides: Any) -> A.Compose:
    """A named pipeline from :data:`PRESETS`, optionally with some arguments overridden.

    Args:
        name: one of ``gta5_train``, ``cityscapes_train``, ``synthia_train`` (built with
            :func:`train_transform`), ``cityscapes_val`` (:func:`val_transform`) or ``normalize``.
        **overrides: arguments for the underlying function, e.g. ``flip=True``.

    Example:
        >>> t = preset("gta5_train", flip=True)
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown transform preset {name!r}; choose one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    if name == "normalize":
        if kwargs:
            raise ValueError(f"preset 'normalize' takes no arguments, got {sorted(kwargs)}")
        return normalize_transform()
    if name.endswith("_val"):
        return val_transform(**kwargs)
    return train_transform(**kwargs)
