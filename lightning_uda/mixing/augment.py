"""DACS strong augmentation (colour jitter + Gaussian blur), batched on the images' device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.normalization import NormalizationLike, get_normalization

__all__ = [
    "AUGMENT_DECISIONS",
    "JITTER_SEMANTICS",
    "AugmentParams",
    "StrongAugment",
    "blur_kernel_size",
]

#: Colour jitter semantics of :class:`StrongAugment`.
JITTER_SEMANTICS = ("torchvision", "kornia05")
#: How :class:`StrongAugment` decides whether to jitter / blur: per image or once per call.
AUGMENT_DECISIONS = ("per_image", "per_batch")

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
        brightness: brightness factor: multiplies the pixels (``"torchvision"``) or adds
            ``brightness − 1`` to them (``"kornia05"``).
        contrast: contrast factor: blend with the mean grey (``"torchvision"``) or plain
            multiplication (``"kornia05"``).
        saturation: saturation factor: blend with the grey image (``"torchvision"``) or HSV
            saturation scaling (``"kornia05"``).
        hue: hue shift in turns (``[-0.5, 0.5]``), in HSV (both semantics).
        blur_applied: bool, Gaussian blur on this image.
        blur_sigma: blur standard deviation in pixels.
        order: ``B×4`` long, the jitter operations of each image in the order they are applied
            (0 brightness, 1 contrast, 2 saturation, 3 hue); ``None`` (the ``"torchvision"``
            semantics) is the fixed order 0, 1, 2, 3.
    """

    jitter_applied: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    blur_applied: Tensor
    blur_sigma: Tensor
    order: Tensor | None = None


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


def _shift_hue(rgb: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of each image by its ``shift`` (``B``, in turns), modulo one turn."""
    hue, saturation, value = _rgb_to_hsv(rgb)
    return _hsv_to_rgb((hue + shift.view(-1, 1, 1)).remainder(1.0), saturation, value)


def _scale_hsv_saturation(rgb: Tensor, factor: Tensor) -> Tensor:
    """Multiply the HSV saturation of each image by its ``factor`` (``B``), clamped to [0, 1].

    Closed form of ``rgb → hsv → (h, clamp(factor·s, 0, 1), v) → rgb``: hue and value
    ``v = max(r, g, b)`` are kept, so every channel ``c`` keeps its relative place between ``v``
    and the minimum, ``c' = v − (v − c)·s'/s`` with ``s = (v − min)/v`` and
    ``s'/s = min(factor, 1/s)``. Grey pixels (``s = 0``) are unchanged. The formula treats the
    three channels alike, so it commutes with any channel permutation (RGB ↔ BGR).
    """
    value = rgb.amax(1, keepdim=True)
    chroma = value - rgb.amin(1, keepdim=True)
    is_gray = chroma == 0
    ones = torch.ones_like(chroma)
    new_chroma = torch.minimum(_expand(factor).to(rgb.dtype) * chroma, value)
    ratio = torch.where(is_gray, ones, new_chroma / torch.where(is_gray, ones, chroma))
    return value - (value - rgb) * ratio


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

    Each image gets, with probability ``jitter_p``, a colour jitter, then, with probability
    ``blur_p``, a Gaussian blur with ``σ ~ U(blur_sigma)`` and an odd kernel of about
    ``blur_kernel_fraction`` of each side (:func:`blur_kernel_size`). The apply/skip draws are
    per image (``decision="per_image"``) or one jitter draw and one blur draw per call, shared by
    the whole batch (``decision="per_batch"``: DACS' code draws ``random.uniform(0, 1)`` once per
    iteration for each); jitter factors, jitter order and blur sigma are per image either way.
    The work is done in RGB [0, 1]: images are de-normalised with ``normalization``, clamped,
    augmented and re-normalised. Images that draw neither op come back bit-identical.

    Jitter semantics (strength ``s`` of a component, ``h`` for the hue; a factor drawn per image;
    every operation clamps to [0, 1]):

    - ``"torchvision"`` (default), torchvision's ``ColorJitter``: brightness multiplies by
      ``b ~ U[max(0, 1−s), 1+s]``, contrast blends with the image's mean grey and saturation with
      its grey image (factors from the same range), hue rotates the HSV hue by ``U[−h, h]`` turns;
      in the fixed order brightness → contrast → saturation → hue (torchvision's is random).
    - ``"kornia05"``, the ``kornia.augmentation.ColorJitter`` of kornia 0.4–0.5 that DACS ran:
      brightness adds ``b − 1`` with ``b ~ U[max(0, 1−s), min(2, 1+s)]``; contrast multiplies by
      ``c ~ U[max(0, 1−s), 1+s]`` (no mean); saturation multiplies the HSV saturation by a factor
      from the same range; hue rotates the HSV hue by ``U[−h, h]`` turns (kornia: radians, ×2π);
      the four in a random order. kornia draws one order per call, shared by its batch, but DACS
      (and DAFormer) call it once per mixed image, so the order is drawn per image here
      (:attr:`AugmentParams.order`).

    Channel order: DACS fed kornia (which assumes RGB) Caffe BGR pixels. That changes nothing in
    distribution, so this module always jitters RGB: brightness, contrast and the blur treat the
    three channels alike, HSV saturation scaling commutes with any channel permutation (it moves
    every channel towards or away from ``V = max`` by one ratio), and swapping R and B mirrors
    the hue circle (``h ↦ 2/3 − h``), so a hue shift ``θ`` of BGR pixels is the shift
    ``−θ`` of the RGB image, and ``θ ~ U[−h, h]`` is symmetric (tested).

    The ops are written batched here because ``torchvision.transforms.v2.functional`` takes one
    factor / sigma per call, so per-image parameters would need a Python loop over the batch;
    they match torchvision's ``adjust_*`` and ``gaussian_blur`` per image (tested). A per-image
    order is batched too: each step computes every operation on the whole batch and keeps, per
    image, the one at that step of its order (four times the jitter arithmetic, no host sync).

    Labels and weights pass through unchanged (no geometric part); they are in the signature so a
    geometric subclass can apply the same transform to them.

    Args:
        jitter: strength ``s`` for all four jitter components, or a 4-sequence
            ``(brightness, contrast, saturation, hue)``; 0 disables a component.
        jitter_p: probability of colour jitter (DACS: 0.8).
        blur_p: probability of blur (DACS: 0.5).
        blur_sigma: ``(low, high)`` range of the blur sigma in pixels (DACS: 0.15–1.15).
        blur_kernel_fraction: kernel size relative to the image side (DACS: 0.1).
        normalization: the images' input space: ``"imagenet"``, ``"caffe"`` or an
            :class:`~lightning_uda.normalization.InputNormalization`.
        jitter_semantics: ``"torchvision"`` or ``"kornia05"`` (see above).
        decision: ``"per_image"`` or ``"per_batch"`` apply/skip draws (see above).
    """

    def __init__(
        self,
        jitter: float | Sequence[float] = 0.25,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.15, 1.15),
        blur_kernel_fraction: float = 0.1,
        normalization: NormalizationLike = "imagenet",
        jitter_semantics: Literal["torchvision", "kornia05"] = "torchvision",
        decision: Literal["per_image", "per_batch"] = "per_image",
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
        if jitter_semantics not in JITTER_SEMANTICS:
            raise ValueError(
                f"jitter_semantics must be one of {JITTER_SEMANTICS}, got {jitter_semantics!r}"
            )
        if decision not in AUGMENT_DECISIONS:
            raise ValueError(f"decision must be one of {AUGMENT_DECISIONS}, got {decision!r}")
        self.brightness, self.contrast, self.saturation, self.hue = strengths
        self.jitter_p = jitter_p
        self.blur_p = blur_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel_fraction = blur_kernel_fraction
        self.normalization = get_normalization(normalization)
        self.jitter_semantics = jitter_semantics
        self.decision = decision

    def sample_parameters(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> AugmentParams:
        """Draw the per-image parameters with one ``torch.rand`` call on the generator's device.

        ``B×7`` uniforms; ``B×11`` for ``"kornia05"``, the four more argsorted into each image's
        order. With ``decision="per_batch"`` the apply/skip draws of image 0 serve the whole batch.

        Args:
            batch_size: ``B``.
            generator: random source (CPU or on any device); the global RNG when None.
            device: where the returned tensors live.

        Returns:
            :class:`AugmentParams` with ``B`` tensors on ``device``.
        """
        kornia = self.jitter_semantics == "kornia05"
        rng_device = generator.device if generator is not None else torch.device("cpu")
        columns = 11 if kornia else 7
        uniform = torch.rand(batch_size, columns, generator=generator, device=rng_device)
        uniform = uniform.to(device)

        def factor(column: Tensor, strength: float, cap: float = math.inf) -> Tensor:
            low = max(0.0, 1.0 - strength)
            high = min(cap, 1.0 + strength)
            return low + (high - low) * column

        jitter_draw, blur_draw = uniform[:, 0], uniform[:, 5]
        if self.decision == "per_batch":
            jitter_draw, blur_draw = (
                jitter_draw[:1].repeat(batch_size),
                blur_draw[:1].repeat(batch_size),
            )
        sigma_low, sigma_high = self.blur_sigma
        return AugmentParams(
            jitter_applied=jitter_draw < self.jitter_p,
            # kornia bounds the brightness factor to [0, 2] (a shift of at most ±1).
            brightness=factor(uniform[:, 1], self.brightness, cap=2.0 if kornia else math.inf),
            contrast=factor(uniform[:, 2], self.contrast),
            saturation=factor(uniform[:, 3], self.saturation),
            hue=self.hue * (2.0 * uniform[:, 4] - 1.0),
            blur_applied=blur_draw < self.blur_p,
            blur_sigma=sigma_low + (sigma_high - sigma_low) * uniform[:, 6],
            # argsort of i.i.d. uniforms: a uniformly random permutation per image.
            order=uniform[:, 7:].argsort(dim=1, stable=True) if kornia else None,
        )

    def jitter_operation(self, index: int, rgb: Tensor, params: AugmentParams) -> Tensor:
        """One jitter operation on the whole batch, each image with its own factor.

        Args:
            index: 0 brightness, 1 contrast, 2 saturation, 3 hue.
            rgb: ``B×3×H×W`` in [0, 1].
            params: the factors.

        Returns:
            ``B×3×H×W`` in [0, 1], with this module's ``jitter_semantics``.
        """
        kornia = self.jitter_semantics == "kornia05"
        if index == 0:
            if kornia:
                return (rgb + _expand(params.brightness - 1.0)).clamp(0, 1)
            return (rgb * _expand(params.brightness)).clamp(0, 1)
        if index == 1:
            if kornia:
                return (rgb * _expand(params.contrast)).clamp(0, 1)
            mean_luma = _grayscale(rgb).mean(dim=(1, 2, 3), keepdim=True)
            return _blend(rgb, mean_luma, params.contrast)
        if index == 2:
            if kornia:
                return _scale_hsv_saturation(rgb, params.saturation)
            return _blend(rgb, _grayscale(rgb), params.saturation)
        if index == 3:
            return _shift_hue(rgb, params.hue)
        raise ValueError(f"jitter operation index must be 0..3, got {index}")

    def color_jitter(self, rgb: Tensor, params: AugmentParams) -> Tensor:
        """Jitter every image of ``rgb`` (``B×3×H×W`` in [0, 1]) with its own factors and order.

        Components with strength 0 are skipped. Without ``params.order`` the order is brightness,
        contrast, saturation, hue. Returns ``B×3×H×W`` in [0, 1].
        """
        strengths = (self.brightness, self.contrast, self.saturation, self.hue)
        active = [index for index, strength in enumerate(strengths) if strength > 0]
        if params.order is None:
            for index in active:
                rgb = self.jitter_operation(index, rgb, params)
            return rgb
        order = params.order.to(rgb.device)
        for step in range(order.shape[1]):
            current = rgb
            for index in active:
                here = _expand(order[:, step] == index)
                rgb = torch.where(here, self.jitter_operation(index, current, params), rgb)
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
        rgb = self.normalization.denormalize(images).clamp(0, 1)
        if self.jitter_p > 0:
            jitter_mask = _expand(params.jitter_applied)
            rgb = torch.where(jitter_mask, self.color_jitter(rgb, params), rgb)
        if self.blur_p > 0:
            rgb = torch.where(_expand(params.blur_applied), self.gaussian_blur(rgb, params), rgb)
        renormalised = self.normalization.normalize(rgb.clamp(0, 1)).to(images.dtype)
        changed = _expand(params.jitter_applied | params.blur_applied)
        return torch.where(changed, renormalised, images)

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        weights: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Augment a normalised batch.

        Args:
            images: ``B×3×H×W`` in the ``normalization`` input space.
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
            f"blur_kernel_fraction={self.blur_kernel_fraction}, "
            f"normalization={self.normalization.name!r}, "
            f"jitter_semantics={self.jitter_semantics!r}, decision={self.decision!r}"
        )
