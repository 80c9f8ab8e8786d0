"""Evaluation at a fixed *shorter side*, for targets whose images differ in size and shape.

:func:`~lightning_uda.data.transforms.val_transform` resizes every image to one ``(height,
width)``, right for Cityscapes, ACDC or Dark Zurich (one frame size each) but a distortion for
Mapillary Vistas, whose images come from many cameras (4:3, 16:9, portrait, up to 5,000 px wide).
:func:`short_side_val_transform` scales each image so that its shorter side has a given length,
keeping its aspect ratio, and (``"full"`` protocol) leaves the mask at its original size: the
module upsamples its logits to every mask, as for the other targets.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from lightning_uda.data.transforms import EVALUATION_PROTOCOLS, _compose
from lightning_uda.normalization import NormalizationLike

__all__ = ["short_side_val_transform"]


class _ShortSide(A.DualTransform):
    """Resize so that the shorter side is ``short_side`` (aspect kept); masks per ``masks``."""

    def __init__(self, short_side: int, masks: bool) -> None:
        super().__init__(p=1.0)
        self.short_side = short_side
        self.masks = masks

    def _size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        height, width = shape[:2]
        scale = self.short_side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        height, width = self._size(img.shape)
        # INTER_AREA when shrinking (as val_transform), bilinear when enlarging
        shrink = height < img.shape[0]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(img, (width, height), interpolation=interpolation)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        if not self.masks:
            return mask
        height, width = self._size(mask.shape)
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_side", "masks")


def short_side_val_transform(
    short_side: int = 512,
    protocol: str = "full",
    normalization: NormalizationLike = "imagenet",
) -> A.Compose:
    """Evaluation pipeline: shorter side → ``short_side`` (aspect kept) → normalise.

    Args:
        short_side: length of the image's shorter side fed to the network (Cityscapes at the
            papers' 1024×512 has 512).
        protocol: ``"full"`` keeps the mask at its original size (the logits are upsampled to
            it); ``"dacs"`` resizes it with the image (nearest).
        normalization: the input space of the output images.

    Returns:
        An ``A.Compose`` called as ``pipeline(image=H×W×3 uint8, mask=H×W)``; it records
        ``normalization`` like :func:`~lightning_uda.data.transforms.val_transform`'s. Items of
        different sizes do not stack: evaluate with ``val_batch_size=1``.

    Raises:
        ValueError: a non-positive ``short_side`` or an unknown protocol.

    Example:
        >>> out = short_side_val_transform(64)(image=np.zeros((300, 400, 3), np.uint8))
        >>> tuple(out["image"].shape[:2])
        (64, 85)
    """
    if int(short_side) < 1:
        raise ValueError(f"short_side must be a positive number of pixels, got {short_side!r}")
    if protocol not in EVALUATION_PROTOCOLS:
        raise ValueError(
            f"Unknown evaluation protocol {protocol!r}; choose one of {list(EVALUATION_PROTOCOLS)}"
        )
    return _compose([_ShortSide(int(short_side), masks=protocol == "dacs")], normalization)
