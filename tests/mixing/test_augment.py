"""Tests for lightning_uda/mixing/augment.py (DACS strong augmentation)."""

from __future__ import annotations

import colorsys
import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.mixing import AugmentParams, StrongAugment, blur_kernel_size
from lightning_uda.normalization import CAFFE, IMAGENET, InputNormalization

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - MEAN) / STD


def denormalise(images: torch.Tensor) -> torch.Tensor:
    return images * STD + MEAN


def random_rgb(batch: int = 3, height: int = 40, width: int = 60, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# RGB in [0, 1] as is: the jitter arithmetic is checked without normalisation noise.
IDENTITY = InputNormalization(
    name="identity",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    channel_order="rgb",
    max_pixel_value=1.0,
)


def kornia05(jitter=0.25, **kwargs) -> StrongAugment:
    kwargs = {"blur_p": 0.0, "normalization": IDENTITY, **kwargs}
    return StrongAugment(jitter=jitter, jitter_semantics="kornia05", **kwargs)


def make_params(batch: int, **values) -> AugmentParams:
    """Jitter on, blur off, every factor the identity, unless given."""
    fields = {
        "jitter_applied": torch.ones(batch, dtype=torch.bool),
        "brightness": torch.ones(batch),
        "contrast": torch.ones(batch),
        "saturation": torch.ones(batch),
        "hue": torch.zeros(batch),
        "blur_applied": torch.zeros(batch, dtype=torch.bool),
        "blur_sigma": torch.ones(batch),
        "order": None,
    }
    fields.update({key: torch.as_tensor(value) for key, value in values.items()})
    return AugmentParams(**fields)


def pixel_images(*pixels: tuple[float, float, float]) -> torch.Tensor:
    """One 1×1 RGB image per pixel: ``n×3×1×1``."""
    return torch.tensor(pixels).view(len(pixels), 3, 1, 1)


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
    with pytest.raises(ValueError, match="jitter_semantics"):
        StrongAugment(jitter_semantics="pil")
    with pytest.raises(ValueError, match="decision"):
        StrongAugment(decision="per_pixel")
    with pytest.raises(ValueError, match="normalisation"):
        StrongAugment(normalization="coco")


# ---------------------------------------------------------------- kornia 0.5 semantics (DACS)
def test_kornia05_brightness_is_additive_and_clamped() -> None:
    # Constant images: kornia adds b − 1 (torchvision would multiply: 0.5·1.2 = 0.6).
    images = torch.tensor([0.5, 0.5, 0.9, 0.1]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    params = make_params(4, brightness=[1.2, 0.7, 1.25, 0.75])
    out = kornia05(jitter=(0.25, 0, 0, 0)).apply(images, params)
    expected = torch.tensor([0.7, 0.2, 1.0, 0.0]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    torchvision = StrongAugment(jitter=(0.25, 0, 0, 0), blur_p=0.0, normalization=IDENTITY)
    assert torch.allclose(torchvision.apply(images, params)[0], torch.full((3, 2, 2), 0.6))


def test_kornia05_contrast_multiplies_without_the_mean() -> None:
    images = pixel_images((0.2, 0.4, 0.6), (0.8, 0.5, 0.1), (0.2, 0.4, 0.6))
    params = make_params(3, contrast=[1.5, 1.5, 0.5])
    out = kornia05(jitter=(0, 0.25, 0, 0)).apply(images, params)
    expected = pixel_images((0.3, 0.6, 0.9), (1.0, 0.75, 0.15), (0.1, 0.2, 0.3))
    assert torch.allclose(out, expected, atol=1e-6)


def test_kornia05_saturation_scales_hsv_saturation() -> None:
    grey, orange, pale_red, red = (0.4, 0.4, 0.4), (0.8, 0.4, 0.2), (0.5, 0.25, 0.25), (1, 0, 0)
    augment = kornia05(jitter=(0, 0, 0.25, 0))
    # Saturation 0.8: grey stays grey; S = 0.75 → 0.6, 0.5 → 0.4, 1 → 0.8 with hue and V kept.
    out = augment.apply(pixel_images(grey, orange, pale_red, red), make_params(4, saturation=0.8))
    expected = pixel_images(grey, (0.8, 0.48, 0.32), (0.5, 0.3, 0.3), (1.0, 0.2, 0.2))
    assert torch.allclose(out, expected, atol=1e-6)
    # Saturation 1.5: S = 0.5 → 0.75; S = 0.75 and 1 clamp to 1 (the minimum channel hits 0).
    out = augment.apply(pixel_images(grey, orange, pale_red, red), make_params(4, saturation=1.5))
    expected = pixel_images(grey, (0.8, 0.8 / 3, 0.0), (0.5, 0.125, 0.125), (1.0, 0.0, 0.0))
    assert torch.allclose(out, expected, atol=1e-6)


def test_kornia05_hue_shift_hand_computed() -> None:
    # (0.8, 0.4, 0.2): H = 20°, S = 0.75, V = 0.8. +20° → H = 40°; −40° → H = 340°.
    images = pixel_images((0.8, 0.4, 0.2), (0.8, 0.4, 0.2))
    out = kornia05(jitter=(0, 0, 0, 0.25)).apply(images, make_params(2, hue=[1 / 18, -1 / 9]))
    assert torch.allclose(out, pixel_images((0.8, 0.6, 0.2), (0.8, 0.2, 0.4)), atol=1e-6)


def test_kornia05_hsv_operations_match_colorsys() -> None:
    """Saturation and hue against Python's colorsys, pixel by pixel (factors beyond clamping)."""
    rgb = random_rgb(batch=3, height=4, width=5, seed=7)
    saturation, hue = torch.tensor([0.6, 1.3, 2.5]), torch.tensor([0.2, -0.45, 0.05])
    augment = kornia05(jitter=(0, 0, 0.25, 0.5))
    only_saturation = augment.apply(rgb, make_params(3, saturation=saturation))
    only_hue = augment.apply(rgb, make_params(3, hue=hue))
    for b in range(3):
        for y in range(4):
            for x in range(5):
                h, s, v = colorsys.rgb_to_hsv(*rgb[b, :, y, x].tolist())
                scaled = colorsys.hsv_to_rgb(h, min(1.0, s * saturation[b].item()), v)
                shifted = colorsys.hsv_to_rgb((h + hue[b].item()) % 1.0, s, v)
                assert torch.allclose(only_saturation[b, :, y, x], torch.tensor(scaled), atol=1e-5)
                assert torch.allclose(only_hue[b, :, y, x], torch.tensor(shifted), atol=1e-5)


def test_kornia05_operations_follow_each_images_order() -> None:
    # 0.5, brightness +0.2, contrast ×1.5: B before C → 1.05 → 1 (clamped); C before B → 0.95.
    images = torch.full((4, 3, 2, 2), 0.5)
    orders = [[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]]
    params = make_params(4, brightness=1.2, contrast=1.5, order=orders)
    out = kornia05().apply(images, params)
    expected = torch.tensor([1.0, 0.95, 1.0, 0.95]).view(4, 1, 1, 1).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-6)


def test_kornia05_order_is_random_per_image_and_reproducible() -> None:
    augment = StrongAugment(jitter_semantics="kornia05")
    first = augment.sample_parameters(8, generator=torch.Generator().manual_seed(0))
    again = augment.sample_parameters(8, generator=torch.Generator().manual_seed(0))
    assert first.order.shape == (8, 4) and first.order.dtype == torch.long
    assert torch.equal(first.order, again.order)
    assert (first.order.sort(dim=1).values == torch.arange(4)).all()  # permutations
    assert len({tuple(row) for row in first.order.tolist()}) > 1  # differ within a call
    # Successive calls on one generator: the order of image 0 changes from call to call.
    generator = torch.Generator().manual_seed(1)
    orders = [augment.sample_parameters(1, generator=generator).order[0] for _ in range(30)]
    seen = {tuple(order.tolist()) for order in orders}
    assert len(seen) >= 10  # of the 24 permutations
    # The whole output is reproducible with the same seed and changes with another.
    images = normalise(random_rgb())
    augment = StrongAugment(jitter_p=1.0, jitter_semantics="kornia05")
    out, _, _ = augment(images, generator=torch.Generator().manual_seed(2))
    out_again, _, _ = augment(images, generator=torch.Generator().manual_seed(2))
    other, _, _ = augment(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, out_again) and not torch.equal(out, other)


def test_kornia05_parameter_ranges() -> None:
    params = StrongAugment(jitter_semantics="kornia05").sample_parameters(
        4000, generator=torch.Generator().manual_seed(5)
    )
    assert params.jitter_applied.float().mean().item() == pytest.approx(0.8, abs=0.03)
    for factor in (params.brightness, params.contrast, params.saturation):
        assert factor.min() >= 0.75 and factor.max() <= 1.25
        assert factor.mean().item() == pytest.approx(1.0, abs=0.01)
    assert params.hue.min() >= -0.25 and params.hue.max() <= 0.25
    assert params.hue.mean().item() == pytest.approx(0.0, abs=0.01)
    # kornia bounds the brightness factor to [0, 2], not contrast or saturation.
    strong = StrongAugment(jitter=(1.5, 1.5, 1.5, 0.5), jitter_semantics="kornia05")
    params = strong.sample_parameters(4000, generator=torch.Generator().manual_seed(6))
    assert params.brightness.min() >= 0.0 and params.brightness.max() <= 2.0
    assert params.brightness.max() > 1.95
    assert params.contrast.max() > 2.0 and params.saturation.max() > 2.0
    assert params.hue.min() < -0.45 and params.hue.max() > 0.45


def test_bgr_pixels_give_the_same_distribution() -> None:
    """DACS jittered BGR pixels as if RGB: per draw that is the RGB jitter with the hue negated."""
    rgb = random_rgb(batch=6, height=8, width=8, seed=8)
    augment = kornia05(jitter=0.4)
    params = augment.sample_parameters(6, generator=torch.Generator().manual_seed(9))
    params.jitter_applied = torch.ones(6, dtype=torch.bool)
    as_dacs = augment.apply(rgb.flip(1), params).flip(1)  # BGR in, back to RGB
    negated = augment.apply(rgb, dataclasses.replace(params, hue=-params.hue))
    assert torch.allclose(as_dacs, negated, atol=1e-5)
    assert not torch.allclose(as_dacs, augment.apply(rgb, params), atol=1e-3)  # hue ≠ 0 matters
    # Without hue, the channel order makes no difference at all.
    no_hue = kornia05(jitter=(0.4, 0.4, 0.4, 0.0))
    assert torch.allclose(no_hue.apply(rgb.flip(1), params).flip(1), no_hue.apply(rgb, params))


# ---------------------------------------------------------------- decisions and input spaces
def test_per_batch_decision_is_all_or_none_with_per_image_factors() -> None:
    augment = StrongAugment(jitter_p=0.5, blur_p=0.5, decision="per_batch")
    generator = torch.Generator().manual_seed(10)
    jitter_calls, blur_calls = [], []
    for _ in range(200):
        params = augment.sample_parameters(6, generator=generator)
        assert params.jitter_applied.all() or not params.jitter_applied.any()
        assert params.blur_applied.all() or not params.blur_applied.any()
        assert params.brightness.unique().numel() == 6 and params.blur_sigma.unique().numel() == 6
        jitter_calls.append(bool(params.jitter_applied[0]))
        blur_calls.append(bool(params.blur_applied[0]))
    assert sum(jitter_calls) / 200 == pytest.approx(0.5, abs=0.1)
    assert sum(blur_calls) / 200 == pytest.approx(0.5, abs=0.1)
    assert jitter_calls != blur_calls  # two independent draws
    # On images: each call changes all of them or none; per-image decisions mix within a call.
    images = normalise(random_rgb(batch=4, height=8, width=8))
    per_image = StrongAugment(jitter_p=0.5, blur_p=0.0)
    per_batch = StrongAugment(jitter_p=0.5, blur_p=0.0, decision="per_batch")
    mixed = False
    for seed in range(20):
        out, _, _ = per_batch(images, generator=torch.Generator().manual_seed(seed))
        changed = [not torch.equal(out[i], images[i]) for i in range(4)]
        assert all(changed) or not any(changed)
        out, _, _ = per_image(images, generator=torch.Generator().manual_seed(seed))
        changed = [not torch.equal(out[i], images[i]) for i in range(4)]
        mixed |= any(changed) and not all(changed)
    assert mixed


@pytest.mark.parametrize("semantics", ["torchvision", "kornia05"])
def test_caffe_and_imagenet_spaces_give_the_same_pixels(semantics: str) -> None:
    rgb = random_rgb(batch=4, height=12, width=16, seed=11)
    caffe = StrongAugment(normalization="caffe", jitter_semantics=semantics)
    imagenet = StrongAugment(normalization=IMAGENET, jitter_semantics=semantics)
    params = caffe.sample_parameters(4, generator=torch.Generator().manual_seed(12))
    params.jitter_applied = torch.tensor([True, True, False, False])
    params.blur_applied = torch.tensor([True, False, True, False])
    caffe_in = CAFFE.normalize(rgb)
    caffe_out = caffe.apply(caffe_in, params)
    imagenet_out = imagenet.apply(IMAGENET.normalize(rgb), params)
    assert torch.equal(caffe_out[3], caffe_in[3])  # drew no op: bit-identical
    assert not torch.allclose(caffe_out[0], caffe_in[0], atol=1e-2)
    # The same RGB result, whichever space (and channel order) the images travel in.
    assert torch.allclose(
        CAFFE.denormalize(caffe_out), IMAGENET.denormalize(imagenet_out), atol=1e-5
    )
    assert torch.allclose(CAFFE.denormalize(caffe_out)[3], rgb[3], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("semantics", "decision"), [("torchvision", "per_image"), ("kornia05", "per_batch")]
)
def test_cuda_matches_cpu_with_cpu_generator(semantics: str, decision: str) -> None:
    images = normalise(random_rgb())
    augment = StrongAugment(jitter_p=1.0, blur_p=1.0, jitter_semantics=semantics, decision=decision)
    cpu, _, _ = augment(images, generator=torch.Generator().manual_seed(0))
    gpu, _, _ = augment.cuda()(images.cuda(), generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
