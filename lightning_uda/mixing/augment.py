"""DACS strong augmentation (colour jitter + Gaussian blur), batched on the images' device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AugmentParams", "StrongAugment", "blur_kernel_size"]

# ITU-R 601-2 luma, as PIL / torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# For each HSV sector (0..5): which of (v, q, p, t) gives (r, g, b).
_HSV_SECTOR_TO_RGB = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """Odd Gaussian kernel size of about ``fraction`` of an image side, as in DACS.

    DACS (``utils/transformsgpu.py``): ``k = ceil(fraction·side)``, minus 1 if even, so
    512 → 51, 1024 → 103, 720 → 71. The product is rounded to 6 decimals first so that float
    noise (``0.1 * 70 = 7.000000000000001``) does not bump an exact value up. At least 1.

    Args:
        side: image height or width in pixels.
        fraction: kernel size relative to the side.

    Returns:
        Odd kernel size ``>= 1``.
    """
    size = math.ceil(round(fraction * side, 6))
    if size % 2 == 0:
        size -= 1
    return max(size, 1)


@dataclass
class AugmentParams:
    """Per-image random parameters of one :class:`StrongAugment` call (all ``B`` tensors).

    Attributes:
        jitter_applied: bool, colour jitter on this image.
        brightness: multiplicative brightness factor.
        contrast: contrast blend factor.
        saturation: saturation blend factor.
        hue: hue shift in turns (``[-0.5, 0.5]``).
        blur_applied: bool, Gaussian blur on this image.
        blur_sigma: blur standard deviation in pixels.
    """

    jitter_applied: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    blur_applied: Tensor
    blur_sigma: Tensor


def _expand(values: Tensor) -> Tensor:
    """``B`` → ``B×1×1×1`` for broadcasting over images."""
    return values.view(-1, 1, 1, 1)


def _grayscale(rgb: Tensor) -> Tensor:
    """``B×3×H×W`` → ``B×1×H×W`` luma."""
    red, green, blue = rgb.unbind(1)
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).unsqueeze(1)


def _blend(image: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor·image + (1 − factor)·other`` clamped to [0, 1] (torchvision's ``_blend``)."""
    factor = _expand(factor)
    return (factor * image + (1 - factor) * other).clamp(0, 1)


def _rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``B×3×H×W`` RGB in [0, 1] → hue (turns, [0, 1)), saturation, value, each ``B×H×W``."""
    red, green, blue = rgb.unbind(1)
    value = rgb.amax(1)
    chroma = value - rgb.amin(1)
    is_gray = chroma == 0
    ones = torch.ones_like(value)
    saturation = chroma / torch.where(is_gray, ones, value)  # value == 0 implies chroma == 0
    safe_chroma = torch.where(is_gray, ones, chroma)
    red_c = (value - red) / safe_chroma
    green_c = (value - green) / safe_chroma
    blue_c = (value - blue) / safe_chroma
    hue = torch.where(
        value == red,
        blue_c - green_c,
        torch.where(value == green, 2.0 + red_c - blue_c, 4.0 + green_c - red_c),
    )
    hue = torch.where(is_gray, torch.zeros_like(hue), hue)
    return (hue / 6.0).remainder(1.0), saturation, value


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """Hue (turns), saturation, value (``B×H×W`` each) → ``B×3×H×W`` RGB."""
    hue6 = hue * 6.0
    sector_start = hue6.floor()
    fraction = hue6 - sector_start
    sector = sector_start.long().remainder(6)
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    candidates = torch.stack((value, q, p, t), dim=1)  # B×4×H×W
    table = torch.tensor(_HSV_SECTOR_TO_RGB, device=hue.device)
    index = table[sector].permute(0, 3, 1, 2)  # B×3×H×W, entries in 0..3
    return candidates.gather(1, index)


def _gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: tuple[int, int]) -> Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (as torchvision/kornia).

    Args:
        images: ``B×C×H×W``.
        sigma: ``B`` standard deviations.
        kernel_size: odd ``(k_h, k_w)``.

    Returns:
        ``B×C×H×W``.
    """
    batch, channels, height, width = images.shape

    def kernels(size: int) -> Tensor:  # B·C×size
        offsets = torch.arange(size, dtype=images.dtype, device=images.device) - (size - 1) / 2
        weights = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].to(images.dtype)) ** 2)
        weights = weights / weights.sum(dim=1, keepdim=True)
        return weights.repeat_interleave(channels, dim=0)

    size_h, size_w = kernel_size
    # Channels of all images as groups of one conv: each image gets its own kernel, no loop.
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (size_w // 2, size_w // 2, size_h // 2, size_h // 2), mode="reflect")
    flat = F.conv2d(flat, kernels(size_h).view(-1, 1, size_h, 1), groups=batch * channels)
    flat = F.conv2d(flat, kernels(size_w).view(-1, 1, 1, size_w), groups=batch * channels)
    return flat.view(batch, channels, height, width)


class StrongAugment(nn.Module):
    """DACS strong augmentation for normalised image batches, on their device.

    Per image, independently: with probability ``jitter_p`` a colour jitter (torchvision
    ``ColorJitter`` semantics: brightness, contrast and saturation factors ~ U[max(0, 1−s), 1+s],
    hue shift ~ U[−h, h]; applied in the fixed order brightness → contrast → saturation → hue,
    each clamped to [0, 1], instead of torchvision's random order); then with probability
    ``blur_p`` a Gaussian blur, ``σ ~ U(blur_sigma)``, odd kernel of ~``blur_kernel_fraction`` of
    each side (:func:`blur_kernel_size`). Work is done in RGB [0, 1] (de-normalised with
    ``mean``/``std``), clamped, and re-normalised. Images that draw neither op come back
    bit-identical.

    The ops are written batched here because ``torchvision.transforms.v2.functional`` takes one
    factor / sigma per call, so per-image parameters would need a Python loop over the batch;
    they match torchvision's ``adjust_*`` and ``gaussian_blur`` per image (tested).

    Labels and weights pass through unchanged (no geometric part); they are in the signature so a
    geometric subclass can apply the same transform to them.

    Args:
        jitter: strength ``s`` for all four jitter components, or a 4-sequence
            ``(brightness, contrast, saturation, hue)``; 0 disables a component.
        jitter_p: probability of colour jitter per image (DACS: 0.8).
        blur_p: probability of blur per image (DACS: 0.5).
        blur_sigma: ``(low, high)`` range of the blur sigma in pixels (DACS: 0.15–1.15).
        blur_kernel_fraction: kernel size relative to the image side (DACS: 0.1).
        mean: per-channel normalisation mean (RGB).
        std: per-channel normalisation std (RGB).
    """

    def __init__(
        self,
        jitter: float | Sequence[float] = 0.25,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.15, 1.15),
        blur_kernel_fraction: float = 0.1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        strengths = (float(jitter),) * 4 if isinstance(jitter, (int, float)) else tuple(jitter)
        if len(strengths) != 4 or min(strengths) < 0 or strengths[3] > 0.5:
            raise ValueError(
                "jitter must be a non-negative float or (brightness, contrast, saturation, hue) "
                f"with hue <= 0.5, got {jitter!r}"
            )
        for name, prob in (("jitter_p", jitter_p), ("blur_p", blur_p)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high: {blur_sigma}")
        self.brightness, self.contrast, self.saturation, self.hue = strengths
        self.jitter_p = jitter_p
        self.blur_p = blur_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel_fraction = blur_kernel_fraction
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def sample_parameters(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> AugmentParams:
        """Draw the per-image parameters (one ``torch.rand(B, 7)`` call on the generator's device).

        Args:
            batch_size: ``B``.
            generator: random source (CPU or on any device); the global RNG when None.
            device: where the returned tensors live.

        Returns:
            :class:`AugmentParams` with ``B`` tensors on ``device``.
        """
        rng_device = generator.device if generator is not None else torch.device("cpu")
        uniform = torch.rand(batch_size, 7, generator=generator, device=rng_device).to(device)

        def factor(column: Tensor, strength: float) -> Tensor:
            low = max(0.0, 1.0 - strength)
            return low + (1.0 + strength - low) * column

        sigma_low, sigma_high = self.blur_sigma
        return AugmentParams(
            jitter_applied=uniform[:, 0] < self.jitter_p,
            brightness=factor(uniform[:, 1], self.brightness),
            contrast=factor(uniform[:, 2], self.contrast),
            saturation=factor(uniform[:, 3], self.saturation),
            hue=self.hue * (2.0 * uniform[:, 4] - 1.0),
            blur_applied=uniform[:, 5] < self.blur_p,
            blur_sigma=sigma_low + (sigma_high - sigma_low) * uniform[:, 6],
        )

    def color_jitter(self, rgb: Tensor, params: AugmentParams) -> Tensor:
        """Jitter every image of ``rgb`` (``B×3×H×W`` in [0, 1]) with its own factors.

        Components with strength 0 are skipped. Returns ``B×3×H×W`` in [0, 1].
        """
        if self.brightness > 0:
            rgb = (rgb * _expand(params.brightness)).clamp(0, 1)
        if self.contrast > 0:
            mean_luma = _grayscale(rgb).mean(dim=(1, 2, 3), keepdim=True)
            rgb = _blend(rgb, mean_luma, params.contrast)
        if self.saturation > 0:
            rgb = _blend(rgb, _grayscale(rgb), params.saturation)
        if self.hue > 0:
            hue, saturation, value = _rgb_to_hsv(rgb)
            hue = (hue + params.hue.view(-1, 1, 1)).remainder(1.0)
            rgb = _hsv_to_rgb(hue, saturation, value)
        return rgb

    def gaussian_blur(self, rgb: Tensor, params: AugmentParams) -> Tensor:
        """Blur every image of ``rgb`` (``B×3×H×W``) with its own sigma; returns ``B×3×H×W``."""
        kernel_size = (
            blur_kernel_size(rgb.shape[-2], self.blur_kernel_fraction),
            blur_kernel_size(rgb.shape[-1], self.blur_kernel_fraction),
        )
        return _gaussian_blur(rgb, params.blur_sigma, kernel_size)

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Apply given parameters to normalised ``B×3×H×W`` images; returns the same shape/dtype."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected normalised B×3×H×W images, got {tuple(images.shape)}")
        mean = self.mean.to(images.device)
        std = self.std.to(images.device)
        original = images.float()
        rgb = (original * std + mean).clamp(0, 1)
        if self.jitter_p > 0:
            jitter_mask = _expand(params.jitter_applied)
            rgb = torch.where(jitter_mask, self.color_jitter(rgb, params), rgb)
        if self.blur_p > 0:
            rgb = torch.where(_expand(params.blur_applied), self.gaussian_blur(rgb, params), rgb)
        renormalised = (rgb.clamp(0, 1) - mean) / std
        changed = _expand(params.jitter_applied | params.blur_applied)
        return torch.where(changed, renormalised, original).to(images.dtype)

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Augment a normalised batch.

        Args:
            images: ``B×3×H×W`` normalised with ``mean``/``std``.
            labels: optional ``B×H×W`` long labels (returned unchanged).
            weights: optional ``B×H×W`` pixel weights (returned unchanged).
            generator: random source (CPU or on any device); the global RNG when None.

        Returns:
            ``(images B×3×H×W same dtype, labels, weights)``.
        """
        params = self.sample_parameters(images.shape[0], generator=generator, device=images.device)
        return self.apply(images, params), labels, weights

    def extra_repr(self) -> str:
        return (
            f"jitter=({self.brightness}, {self.contrast}, {self.saturation}, {self.hue}), "
            f"jitter_p={self.jitter_p}, blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, "
            f"blur_kernel_fraction={self.blur_kernel_fraction}"
        )
