"""Tests for lightning_uda/mixing/fda.py (Fourier Domain Adaptation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_uda.mixing import (
    fda_low_frequency_mask,
    fda_window_size,
    fourier_domain_adaptation,
)


def images(batch: int, height: int, width: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random ``batch×3×H×W`` images in 0–255 with a smooth part (strong low frequencies)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, height, width, generator=gen, dtype=torch.float64)
    ys = torch.linspace(0, 1, height, dtype=torch.float64)[:, None]
    xs = torch.linspace(0, 1, width, dtype=torch.float64)[None, :]
    phase = torch.rand(batch, 3, 1, 1, generator=gen, dtype=torch.float64) * 2 * math.pi
    smooth = torch.sin(2 * math.pi * (ys + 2 * xs) + phase)
    return (255 * (0.5 * noise + 0.25 * smooth + 0.25)).to(dtype)


def expected_window(height: int, width: int, b: int) -> torch.Tensor:
    """The window built independently: centred block ``[c−b, c+b)`` of the fftshift-ed layout."""
    centred = torch.zeros(height, width, dtype=torch.bool)
    ch, cw = height // 2, width // 2
    centred[ch - b : ch + b, cw - b : cw + b] = True
    return torch.fft.ifftshift(centred, dim=(-2, -1))


def mirror(x: torch.Tensor) -> torch.Tensor:
    """``x[..., (−i) mod H, (−j) mod W]``: the value at the opposite frequency."""
    return torch.roll(torch.flip(x, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def numpy_fda(source: np.ndarray, target: np.ndarray, b: int) -> np.ndarray:
    """Independent NumPy version: swap the four ``b×b`` corners of the amplitude, real part."""
    spec_s = np.fft.fft2(source, axes=(-2, -1))
    amp_t = np.abs(np.fft.fft2(target, axes=(-2, -1)))
    amp = np.abs(spec_s)
    height, width = source.shape[-2:]
    for rows in (slice(0, b), slice(height - b, height)):
        for cols in (slice(0, b), slice(width - b, width)):
            amp[..., rows, cols] = np.broadcast_to(amp_t, amp.shape)[..., rows, cols]
    return np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(spec_s)), axes=(-2, -1)))


@pytest.mark.parametrize(
    ("height", "width", "beta", "b"),
    [
        (32, 32, 0.09, 2),  # floor(2.88)
        (512, 1024, 0.01, 5),  # floor(5.12), the shorter side counts
        (1024, 512, 0.01, 5),
        (512, 1024, 0.09, 46),  # floor(46.08)
        (720, 1280, 0.05, 36),
        (33, 100, 0.5, 16),
        (32, 32, 0.01, 0),  # floor(0.32): nothing swapped
        (10, 10, 0.0, 0),
    ],
)
def test_window_size(height: int, width: int, beta: float, b: int) -> None:
    assert fda_window_size(height, width, beta) == b


@pytest.mark.parametrize("beta", [-0.01, 0.51, 1.0, math.nan])
def test_bad_beta(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        fda_window_size(32, 32, beta)
    with pytest.raises(ValueError, match="beta"):
        fourier_domain_adaptation(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), beta)


def test_mask_hand_value() -> None:
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 1, 1],
            [1, 1, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 1, 1],
            [1, 1, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(fda_low_frequency_mask(6, 7, 0.4), expected)  # b = floor(2.4) = 2


@pytest.mark.parametrize(
    ("height", "width", "beta"), [(32, 32, 0.09), (31, 45, 0.1), (16, 24, 0.5), (40, 17, 0.3)]
)
def test_mask_matches_centred_window(height: int, width: int, beta: float) -> None:
    b = fda_window_size(height, width, beta)
    mask = fda_low_frequency_mask(height, width, beta)
    assert torch.equal(mask, expected_window(height, width, b))
    assert int(mask.sum()) == (2 * b) ** 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_zero_is_exact_identity(dtype: torch.dtype) -> None:
    source, target = images(2, 32, 32, 0, dtype), images(2, 32, 32, 1, dtype)
    for beta in (0.0, 0.01):  # b = 0 both times
        out = fourier_domain_adaptation(source, target, beta)
        assert torch.equal(out, source)
        assert out.data_ptr() != source.data_ptr()


@pytest.mark.parametrize(("height", "width", "beta"), [(32, 32, 0.09), (31, 40, 0.1)])
def test_spectrum_of_output(height: int, width: int, beta: float) -> None:
    source, target = images(2, height, width, 2), images(2, height, width, 3)
    out = fourier_domain_adaptation(source, target, beta)
    assert not out.is_complex() and out.dtype == source.dtype

    spec_s, spec_t, spec_o = (torch.fft.fft2(x) for x in (source, target, out))
    amp_s, amp_t, amp_o = spec_s.abs(), spec_t.abs(), spec_o.abs()
    window = expected_window(height, width, fda_window_size(height, width, beta))
    window_mirror = mirror(window)
    both_in, both_out = window & window_mirror, ~window & ~window_mirror
    assert both_in.any() and both_out.any() and (window ^ window_mirror).any()

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(amp_s.max()))

    # Inside the window: the target's amplitude; outside: the source's.
    close(amp_o[..., both_in], amp_t[..., both_in])
    close(amp_o[..., both_out], amp_s[..., both_out])
    # Window edge (−b in, +b out, or the reverse): the real part averages the two amplitudes.
    edge = window ^ window_mirror
    close(amp_o[..., edge], (0.5 * (amp_s + amp_t))[..., edge])
    # Everywhere: the general rule, amplitude = mean of the swapped amplitude at k and −k.
    swapped = torch.where(window, amp_t, amp_s)
    close(amp_o, 0.5 * (swapped + mirror(swapped)))

    # The phase is the source's wherever the amplitude is not negligible (compared modulo 2π).
    significant = (amp_o > 1e-6 * amp_o.max()) & (amp_s > 1e-6 * amp_s.max())
    phase_diff = torch.angle(spec_o * spec_s.conj())[significant]
    assert phase_diff.abs().max() < 1e-6


def test_matches_independent_numpy_version() -> None:
    source, target = images(3, 24, 40, 4), images(3, 24, 40, 5)
    out = fourier_domain_adaptation(source, target, 0.125)  # b = 3
    expected = numpy_fda(source.numpy(), target.numpy(), 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-9)


def test_mean_colour_comes_from_target() -> None:
    """The zero frequency is always swapped: each channel's mean becomes the target's."""
    source, target = images(2, 32, 48, 6), images(2, 32, 48, 7) * 0.5
    out = fourier_domain_adaptation(source, target, 0.05)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), target.mean(dim=(-2, -1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_source_and_target_is_identity(dtype: torch.dtype) -> None:
    source = images(2, 32, 32, 8, dtype)
    out = fourier_domain_adaptation(source, source.clone(), 0.09)
    tolerance = 1e-3 if dtype == torch.float32 else 1e-9  # values up to 255
    torch.testing.assert_close(out, source, rtol=0, atol=tolerance)


def test_target_batch_of_one_broadcasts() -> None:
    source, target = images(3, 32, 32, 9), images(1, 32, 32, 10)
    out = fourier_domain_adaptation(source, target, 0.09)
    assert out.shape == source.shape
    torch.testing.assert_close(
        out, fourier_domain_adaptation(source, target.expand(3, -1, -1, -1), 0.09)
    )
    for i in range(3):
        torch.testing.assert_close(
            out[i : i + 1], fourier_domain_adaptation(source[i : i + 1], target, 0.09)
        )


@pytest.mark.parametrize(
    ("source_shape", "target_shape"),
    [
        ((2, 3, 32, 32), (3, 3, 32, 32)),
        ((2, 3, 32, 32), (2, 3, 32, 16)),
        ((2, 3, 32, 32), (2, 1, 32, 32)),
        ((1, 3, 32, 32), (2, 3, 32, 32)),
    ],
)
def test_shape_mismatch_raises(source_shape: tuple, target_shape: tuple) -> None:
    with pytest.raises(ValueError, match=r"target shape .* does not match source shape") as info:
        fourier_domain_adaptation(torch.rand(source_shape), torch.rand(target_shape), 0.05)
    assert str(tuple(source_shape)) in str(info.value)
    assert str(tuple(target_shape)) in str(info.value)


def test_non_4d_raises() -> None:
    with pytest.raises(ValueError, match="B×C×H×W"):
        fourier_domain_adaptation(torch.rand(3, 32, 32), torch.rand(3, 32, 32), 0.05)
    with pytest.raises(ValueError, match="B×C×H×W"):
        fourier_domain_adaptation(torch.rand(1, 3, 32, 32), torch.rand(3, 32, 32), 0.05)


def test_integer_source_raises() -> None:
    with pytest.raises(TypeError, match="floating point"):
        fourier_domain_adaptation(
            torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8), 0.25
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype(dtype: torch.dtype) -> None:
    source, target = images(2, 32, 32, 11), images(2, 32, 32, 12)
    out = fourier_domain_adaptation(source.to(dtype), target.to(dtype), 0.09)
    assert out.dtype == dtype
    reference = fourier_domain_adaptation(
        source.to(dtype).float(), target.to(dtype).float(), 0.09
    ).to(dtype)
    assert torch.equal(out, reference)
