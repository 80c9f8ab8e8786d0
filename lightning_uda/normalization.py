"""Input spaces: how RGB pixels become the tensors a segmentor is fed, and back.

A run has exactly one input space, and every component that converts between pixels and tensors
reads it: the dataset transforms and presets (:mod:`lightning_uda.data.transforms`), the strong
augmentation (:class:`~lightning_uda.mixing.StrongAugment` works on un-normalised pixels), the
W&B panels (:mod:`lightning_uda.callbacks.panels`) and the methods (``UDAModule.normalization``).
``UDAModule`` checks at the start of ``fit`` that its space is the datamodule's.

Two spaces ship:

- ``"imagenet"``: RGB, values in [0, 1], minus the ImageNet mean, divided by the ImageNet std —
  torchvision's and segmentation-models-pytorch's ImageNet weights were trained on it.
- ``"caffe"``: **BGR**, values in [0, 255], minus the mean pixel ``(B, G, R) = (104.00698793,
  116.66876762, 122.67891434)``, no division — the space of the Caffe DeepLab-v2 ResNet-101 weights
  that DACS (COCO init) and AdvEnt (ImageNet init) start from. Feeding those weights ImageNet-
  normalised RGB silently costs accuracy, so :class:`~lightning_uda.models.DeepLabV2` built with
  ``style="caffe"`` declares this space and the module picks it up.

Depends on torch and numpy only, so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CAFFE",
    "CAFFE_MEAN_BGR",
    "IMAGENET",
    "INPUT_SPACES",
    "InputNormalization",
    "NormalizationLike",
    "get_normalization",
]

#: Mean pixel of the Caffe DeepLab-v2 weights, in B, G, R order on the 0–255 scale.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


@dataclass(frozen=True)
class InputNormalization:
    """One input space: ``tensor = (pixels[order] · scale − mean) / std`` per channel.

    Attributes:
        name: short name (``"imagenet"``, ``"caffe"``), used in messages and configs.
        mean: per-channel mean, in the tensor's channel order, on the ``max_pixel_value`` scale.
        std: per-channel divisor, same order and scale.
        channel_order: ``"rgb"`` or ``"bgr"``: the order of the tensor's three channels.
        max_pixel_value: 1.0 (pixels in [0, 1]) or 255.0 (pixels in [0, 255]) before the mean is
            subtracted.

    Shape:
        - :meth:`normalize`: ``B×3×H×W`` (or ``3×H×W``) RGB in [0, 1] → the same shape in this
          space. :meth:`denormalize` is its inverse (not clamped).
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["rgb", "bgr"]
    max_pixel_value: float

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 entries, std > 0; got {self.mean}, {self.std}")
        if self.max_pixel_value <= 0:
            raise ValueError(f"max_pixel_value must be > 0, got {self.max_pixel_value}")

    # ------------------------------------------------------------------ channel order
    def _order(self, x: Tensor, dim: int) -> Tensor:
        """Swap the first and third channel for BGR (an involution: RGB ↔ BGR)."""
        return x.flip(dim) if self.channel_order == "bgr" else x

    def _stats(self, like: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        shape = [1] * like.dim()
        shape[dim] = 3
        mean = torch.tensor(self.mean, dtype=torch.float32, device=like.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=like.device).view(shape)
        return mean, std

    # ------------------------------------------------------------------ tensors
    def normalize(self, rgb: Tensor) -> Tensor:
        """RGB in [0, 1] (``B×3×H×W`` or ``3×H×W``, float) → tensors in this space (float32)."""
        dim = rgb.dim() - 3
        mean, std = self._stats(rgb, dim)
        return (self._order(rgb.float(), dim) * self.max_pixel_value - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Tensors in this space → RGB in [0, 1] (float32, not clamped); inverse of normalize."""
        dim = images.dim() - 3
        mean, std = self._stats(images, dim)
        return self._order(images.float() * std + mean, dim) / self.max_pixel_value

    def to_uint8(self, images: Tensor) -> np.ndarray:
        """``B×3×H×W`` tensors in this space → ``B×H×W×3`` uint8 RGB (for display)."""
        rgb = self.denormalize(images.detach()).clamp(0, 1) * 255
        return rgb.permute(0, 2, 3, 1).round().byte().cpu().numpy()

    # ------------------------------------------------------------------ numpy (data loading)
    def normalize_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """``H×W×3`` uint8 RGB → ``H×W×3`` float32 in this space (channel order applied)."""
        pixels = rgb.astype(np.float32) * (self.max_pixel_value / 255.0)
        if self.channel_order == "bgr":
            pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)

    @property
    def rgb_mean_std_01(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` in **RGB** order on the [0, 1] scale (albumentations' ``Normalize``
        convention, applied to RGB uint8 with ``max_pixel_value=255``); the channel swap for BGR
        is a separate step."""
        mean = np.asarray(self.mean, dtype=np.float64) / self.max_pixel_value
        std = np.asarray(self.std, dtype=np.float64) / self.max_pixel_value
        if self.channel_order == "bgr":
            mean, std = mean[::-1], std[::-1]
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __str__(self) -> str:
        mean = tuple(round(m, 4) for m in self.mean)
        std = tuple(round(s, 4) for s in self.std)
        order = self.channel_order.upper()
        return f"{self.name} ({order}, 0–{self.max_pixel_value:g}, mean {mean}, std {std})"


IMAGENET = InputNormalization(
    name="imagenet",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    channel_order="rgb",
    max_pixel_value=1.0,
)
CAFFE = InputNormalization(
    name="caffe",
    mean=CAFFE_MEAN_BGR,
    std=(1.0, 1.0, 1.0),
    channel_order="bgr",
    max_pixel_value=255.0,
)
#: The named input spaces.
INPUT_SPACES: dict[str, InputNormalization] = {"imagenet": IMAGENET, "caffe": CAFFE}

NormalizationLike = str | InputNormalization


def get_normalization(value: NormalizationLike | None) -> InputNormalization:
    """The :class:`InputNormalization` for a name (``"imagenet"``, ``"caffe"``) or an instance.

    ``None`` means ``"imagenet"`` (the default space of the library).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if value is None:
        return IMAGENET
    if isinstance(value, InputNormalization):
        return value
    if isinstance(value, str) and value.lower() in INPUT_SPACES:
        return INPUT_SPACES[value.lower()]
    raise ValueError(
        f"unknown input normalisation {value!r}; use one of {sorted(INPUT_SPACES)} or an "
        "InputNormalization(name, mean, std, channel_order, max_pixel_value)"
    )
