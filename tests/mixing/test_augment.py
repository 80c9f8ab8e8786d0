"""Tests for lightning_uda/mixing/augment.py (DACS strong augmentation)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.mixing import AugmentParams, StrongAugment, blur_kernel_size

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - MEAN) / STD


def denormalise(images: torch.Tensor) -> torch.Tensor:
    return images * STD + MEAN


def random_rgb(batch: int = 3, height: int = 40, width: int = 60, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("side", "expected"),
    # DACS: ceil(0.1·side), minus 1 when even.
    [(512, 51), (1024, 103), (720, 71), (1280, 127), (256, 25), (70, 7), (30, 3), (10, 1), (4, 1)],
)
def test_blur_kernel_size(side: int, expected: int) -> None:
    assert blur_kernel_size(side, 0.1) == expected
    assert expected % 2 == 1


def test_shape_dtype_and_passthrough() -> None:
    images = normalise(random_rgb())
    labels = torch.zeros(3, 40, 60, dtype=torch.long)
    weights = torch.ones(3, 40, 60)
    out, out_labels, out_weights = StrongAugment()(
        images, labels, weights, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out_labels is labels and out_weights is weights
    out64, none_labels, none_weights = StrongAugment()(images.double())
    assert out64.dtype == torch.float64 and none_labels is None and none_weights is None


def test_output_stays_in_normalised_unit_range() -> None:
    # Inputs deliberately outside [0, 1] RGB: every augmented image is clamped.
    images = normalise(1.4 * random_rgb(batch=8) - 0.2)
    augment = StrongAugment(jitter_p=1.0, blur_p=1.0)
    out, _, _ = augment(images, generator=torch.Generator().manual_seed(1))
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


def test_zero_probabilities_are_identity() -> None:
    images = normalise(random_rgb())
    out, _, _ = StrongAugment(jitter_p=0.0, blur_p=0.0)(images)
    assert torch.equal(out, images)


def test_brightness_only_scales_each_image() -> None:
    # RGB in [0.1, 0.7] so that factor ≤ 1.25 never clips: out = b_i · in with b_i ∈ [0.75, 1.25].
    rgb = 0.1 + 0.6 * random_rgb(batch=6)
    augment = StrongAugment(jitter=(0.25, 0.0, 0.0, 0.0), jitter_p=1.0, blur_p=0.0)
    out, _, _ = augment(normalise(rgb), generator=torch.Generator().manual_seed(2))
    ratio = denormalise(out) / rgb
    factors = ratio.mean(dim=(1, 2, 3))
    assert torch.allclose(ratio, factors.view(-1, 1, 1, 1).expand_as(ratio), atol=1e-4)
    assert ((factors >= 0.75 - 1e-5) & (factors <= 1.25 + 1e-5)).all()
    assert factors.unique().numel() == 6  # one factor per image
    # The mean brightness of each image moves by exactly its factor.
    assert torch.allclose(
        denormalise(out).mean(dim=(1, 2, 3)), factors * rgb.mean(dim=(1, 2, 3)), atol=1e-5
    )


def test_hue_shift_of_a_third_turns_red_into_green() -> None:
    rgb = torch.zeros(2, 3, 4, 4)
    rgb[:, 0] = 1.0  # pure red
    augment = StrongAugment(jitter=(0.0, 0.0, 0.0, 0.5), blur_p=0.0)
    ones, zeros = torch.ones(2), torch.zeros(2)
    params = AugmentParams(
        jitter_applied=torch.tensor([True, True]),
        brightness=ones,
        contrast=ones,
        saturation=ones,
        hue=torch.tensor([1 / 3, -1 / 3]),
        blur_applied=torch.tensor([False, False]),
        blur_sigma=zeros + 1,
    )
    out = denormalise(augment.apply(normalise(rgb), params))
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 4, 4)
    blue = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(out[0], green, atol=1e-5)
    assert torch.allclose(out[1], blue, atol=1e-5)


def test_blur_keeps_constant_image() -> None:
    rgb = torch.full((2, 3, 30, 30), 0.4)
    out, _, _ = StrongAugment(jitter_p=0.0, blur_p=1.0)(normalise(rgb))
    assert torch.allclose(denormalise(out), rgb, atol=1e-5)


def test_matches_torchvision_per_image() -> None:
    """Batched ops = torchvision's adjust_* (in our fixed order) and gaussian_blur per image."""
    rgb = random_rgb(batch=4, height=40, width=60, seed=3)
    augment = StrongAugment(jitter=0.25, jitter_p=0.8, blur_p=0.5)
    params = augment.sample_parameters(4, generator=torch.Generator().manual_seed(4))
    params.jitter_applied = torch.tensor([True, True, False, False])
    params.blur_applied = torch.tensor([True, False, True, False])
    params.blur_sigma = torch.tensor([1.1, 0.5, 3.0, 1.0])  # wide sigma so the kernel size matters
    out = denormalise(augment.apply(normalise(rgb), params))
    kernel_size = [blur_kernel_size(60), blur_kernel_size(40)]  # torchvision takes (kx, ky)
    assert kernel_size == [5, 3]
    for i in range(4):
        expected = rgb[i]
        if params.jitter_applied[i]:
            expected = TF.adjust_brightness(expected, params.brightness[i].item())
            expected = TF.adjust_contrast(expected, params.contrast[i].item())
            expected = TF.adjust_saturation(expected, params.saturation[i].item())
            expected = TF.adjust_hue(expected, params.hue[i].item())
        if params.blur_applied[i]:
            sigma = params.blur_sigma[i].item()
            expected = TF.gaussian_blur(expected, kernel_size=kernel_size, sigma=[sigma, sigma])
        assert torch.allclose(out[i], expected, atol=1e-5), f"image {i}"


def test_sampled_parameters_follow_dacs_distributions() -> None:
    params = StrongAugment().sample_parameters(4000, generator=torch.Generator().manual_seed(5))
    assert params.jitter_applied.float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert params.blur_applied.float().mean().item() == pytest.approx(0.5, abs=0.03)
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor.min() >= 0.75 and factor.max() <= 1.25
        assert factor.mean().item() == pytest.approx(1.0, abs=0.01)
    assert params.hue.min() >= -0.25 and params.hue.max() <= 0.25
    assert params.blur_sigma.min() >= 0.15 and params.blur_sigma.max() <= 1.15


def test_generator_reproducibility() -> None:
    images = normalise(random_rgb())
    augment = StrongAugment(jitter_p=1.0, blur_p=1.0)
    first, _, _ = augment(images, generator=torch.Generator().manual_seed(0))
    again, _, _ = augment(images, generator=torch.Generator().manual_seed(0))
    other, _, _ = augment(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_invalid_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="jitter"):
        StrongAugment(jitter=(0.1, 0.2))
    with pytest.raises(ValueError, match="blur_p"):
        StrongAugment(blur_p=1.5)
    with pytest.raises(ValueError, match="B×3×H×W"):
        StrongAugment()(torch.zeros(2, 1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_cpu_generator() -> None:
    images = normalise(random_rgb())
    augment = StrongAugment(jitter_p=1.0, blur_p=1.0)
    cpu, _, _ = augment(images, generator=torch.Generator().manual_seed(0))
    gpu, _, _ = augment.cuda()(images.cuda(), generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
