"""Fourier Domain Adaptation (FDA): swap the low-frequency amplitude spectrum of images.

Yang & Soatto, "FDA: Fourier Domain Adaptation for Semantic Segmentation" (CVPR 2020): a source
image takes on a target image's "style" by replacing the low-frequency part of its Fourier
amplitude with the target's, keeping its own phase (its content). No training is involved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fda_low_frequency_mask", "fda_window_size", "fourier_domain_adaptation"]


def fda_window_size(height: int, width: int, beta: float) -> int:
    """Half-size ``b`` of FDA's low-frequency window: ``floor(beta · min(height, width))``.

    As in the authors' code, ``b`` is the floor of the floating-point product (the paper's
    ``β`` is their ``L``), and both axes use the same ``b`` (from the shorter side).

    Args:
        height: image height ``H`` (> 0).
        width: image width ``W`` (> 0).
        beta: window scale ``β`` in ``[0, 0.5]`` (the paper uses 0.01 to 0.09).

    Returns:
        ``b`` (an ``int``, ``0 <= 2·b <= min(H, W)``); ``b = 0`` means no frequency is swapped.

    Raises:
        ValueError: if ``beta`` is outside ``[0, 0.5]`` (or NaN) or a size is not positive.

    Example:
        >>> fda_window_size(512, 1024, 0.01)
        5
    """
    if not (0.0 <= beta <= 0.5):  # also rejects NaN
        raise ValueError(f"beta must be in [0, 0.5], got {beta}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}×{width}")
    return int(math.floor(min(height, width) * beta))


def fda_low_frequency_mask(
    height: int, width: int, beta: float, device: torch.device | str | None = None
) -> Tensor:
    """FDA's low-frequency window, in the un-shifted layout of :func:`torch.fft.fft2`.

    With ``b = fda_window_size(height, width, beta)``, the window holds the ``(2b)²`` frequencies
    whose row index is in ``0..b−1`` or ``H−b..H−1`` and whose column index is in ``0..b−1`` or
    ``W−b..W−1``: the four ``b×b`` corners, i.e. the signed frequencies ``−b..b−1`` along each
    axis. After :func:`torch.fft.fftshift` it is the centred block of rows ``[H//2 − b,
    H//2 + b)`` and columns ``[W//2 − b, W//2 + b)`` (the zero frequency sits at ``H//2, W//2``).
    This is the window of the authors' PyTorch code (``low_freq_mutate``); their NumPy variant
    uses the inclusive block ``−b..b`` (``2b + 1`` per axis) instead.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        beta: window scale ``β`` in ``[0, 0.5]``.
        device: device of the mask.

    Returns:
        ``H×W`` bool mask, True inside the window (all False when ``b = 0``).

    Example:
        >>> fda_low_frequency_mask(4, 4, 0.25).int()
        tensor([[1, 0, 0, 1],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [1, 0, 0, 1]], dtype=torch.int32)
    """
    b = fda_window_size(height, width, beta)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_in = (rows < b) | (rows >= height - b)
    col_in = (cols < b) | (cols >= width - b)
    return row_in[:, None] & col_in[None, :]


def fourier_domain_adaptation(source: Tensor, target: Tensor, beta: float) -> Tensor:
    """Source images with the target images' low-frequency amplitude (FDA, Yang & Soatto 2020).

    Per image and channel: ``A_s, φ_s`` = amplitude and phase of ``fft2(source)``, ``A_t`` =
    amplitude of ``fft2(target)``; the amplitude becomes ``A_t`` inside the window of
    :func:`fda_low_frequency_mask` and stays ``A_s`` outside; the result is the real part of
    ``ifft2(A · exp(i·φ_s))``.

    The window (signed frequencies ``−b..b−1`` per axis) is not symmetric under ``k → −k``: the
    frequency ``−b`` is in it but ``+b`` is not. Taking the real part symmetrises the spectrum,
    so in the output the frequencies of row or column ``±b`` whose mirror lies on the other side
    of the window edge get the mean of the two amplitudes, ``(A_t + A_s) / 2``; every frequency
    keeps the source phase exactly. Elsewhere the amplitude is ``A_t`` inside and ``A_s`` outside.

    Differences from the authors' code (``FDA_source_to_target``):

    - it uses the removed ``torch.rfft``/``torch.irfft`` API; here :func:`torch.fft.fft2` and
      the real part of :func:`torch.fft.ifft2`. Their ``irfft(onesided=False)`` reads only the
      non-negative half of the last axis and assumes Hermitian symmetry, so on the window's
      edge (frequencies ``±b``) their result depends on which half was read, where ours takes
      the mean; inside the edge and outside the window both agree.
    - ``beta`` is validated, ``b = 0`` returns an exact copy, a target batch of one may serve a
      whole source batch, and the dtype is kept (see below).

    Like the authors' code, nothing is clamped: the output may leave the input's value range a
    little. Images are expected in un-normalised pixel space (e.g. 0–255 or 0–1, before mean/std
    normalisation); a method module applying FDA de-normalises its batches first and normalises
    the result again.

    Args:
        source: ``B×C×H×W`` floating-point source images (usually ``C = 3``).
        target: ``B×C×H×W`` or ``1×C×H×W`` target images (same ``C, H, W``, same device).
        beta: window scale ``β`` in ``[0, 0.5]`` (the paper: 0.01, 0.05, 0.09).

    Returns:
        ``B×C×H×W`` tensor with ``source``'s dtype and device. float64 is computed in float64,
        float32 in float32, float16/bfloat16 in float32 and cast back.

    Raises:
        ValueError: if an input is not 4-D, the shapes do not match, or ``beta`` is outside
            ``[0, 0.5]``.
        TypeError: if ``source`` is not floating point.

    Example:
        >>> source, target = torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64)
        >>> fourier_domain_adaptation(source, target, beta=0.05).shape
        torch.Size([2, 3, 64, 64])
    """
    if source.dim() != 4 or target.dim() != 4:
        raise ValueError(
            f"expected B×C×H×W source and target, got {tuple(source.shape)} and "
            f"{tuple(target.shape)}"
        )
    if source.shape[1:] != target.shape[1:] or target.shape[0] not in (1, source.shape[0]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match source shape "
            f"{tuple(source.shape)} (target batch must be 1 or the source's, C×H×W equal)"
        )
    if not source.is_floating_point():
        raise TypeError(f"source must be floating point, got {source.dtype}")
    height, width = source.shape[-2:]
    if fda_window_size(height, width, beta) == 0:
        return source.clone()

    compute_dtype = torch.float64 if source.dtype == torch.float64 else torch.float32
    spectrum_source = torch.fft.fft2(source.to(compute_dtype))
    spectrum_target = torch.fft.fft2(target.to(compute_dtype))
    window = fda_low_frequency_mask(height, width, beta, device=source.device)
    amplitude = torch.where(window, spectrum_target.abs(), spectrum_source.abs())
    mixed = torch.polar(amplitude, spectrum_source.angle())
    return torch.fft.ifft2(mixed).real.to(source.dtype)
