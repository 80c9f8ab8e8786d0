"""LSD-seg's loss terms: ``pixel_reduction="sum"`` is the reference's pixel sums."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_uda.methods.lsd_seg import LSDSegModule
from lightning_uda.methods.lsd_seg_losses import (
    SOURCE_REAL,
    TARGET_FAKE,
    TARGET_REAL,
    domain_cross_entropy,
    patch_cross_entropy,
    reconstruction_l1,
    segmentation_cross_entropy,
)
from lightning_uda.models.lsd_seg import PatchOutputs
from tests.helpers.methods import NUM_CLASSES, tiny_module_kwargs


def test_uniform_domain_map_gives_ln4_per_patch_summed_or_averaged():
    # zero logits: softmax 1/4 everywhere, so every patch's CE is ln 4 whatever the label
    logits = torch.zeros(2, 4, 3, 5)
    mean = domain_cross_entropy(logits, TARGET_FAKE, reduction="mean")
    summed = domain_cross_entropy(logits, TARGET_FAKE, reduction="sum")
    assert float(mean) == pytest.approx(math.log(4))
    # the reference: summed over the 2 × 15 patches, divided by the batch size 2
    assert float(summed) == pytest.approx(3 * 5 * math.log(4))


def test_sum_is_the_pixel_sum_per_image_and_mean_times_valid_pixels():
    g = torch.Generator().manual_seed(0)
    b, k = 2, NUM_CLASSES
    logits = torch.randn(b, k, 4, 4, generator=g)
    labels = torch.randint(0, k, (b, 4, 4), generator=g)
    labels[0, :2] = 255  # 8 void patches
    valid = int((labels != 255).sum())
    assert valid == 24

    summed = patch_cross_entropy(logits, labels, reduction="sum")
    mean = patch_cross_entropy(logits, labels, reduction="mean")
    expected = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum") / b
    torch.testing.assert_close(summed, expected)
    torch.testing.assert_close(summed, mean * valid / b)
    torch.testing.assert_close(mean, F.cross_entropy(logits, labels, ignore_index=255))

    # the segmentor's CE: upsampled to the labels first, then summed over the valid pixels
    seg_logits = torch.randn(b, k, 4, 4, generator=g)
    mask = torch.randint(0, k, (b, 8, 8), generator=g)
    mask[1, :, :3] = 255
    up = F.interpolate(seg_logits, size=(8, 8), mode="bilinear", align_corners=False)
    summed = segmentation_cross_entropy(seg_logits, mask, reduction="sum")
    expected = F.cross_entropy(up, mask, ignore_index=255, reduction="sum") / b
    torch.testing.assert_close(summed, expected)
    mean = segmentation_cross_entropy(seg_logits, mask, reduction="mean")
    torch.testing.assert_close(summed, mean * int((mask != 255).sum()) / b)

    # L1 stays a mean over pixels; "sum" divides it by the batch size (the reference's / B)
    fake, real = torch.rand(b, 3, 8, 8, generator=g), torch.rand(b, 3, 8, 8, generator=g)
    l1 = (fake - real).abs().mean()
    torch.testing.assert_close(reconstruction_l1(fake, real, reduction="mean"), l1)
    torch.testing.assert_close(reconstruction_l1(fake, real, reduction="sum"), l1 / b)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_module_sum_losses_are_the_mean_losses_rescaled_term_by_term():
    # Each term of the three objectives with pixel_reduction="sum" is its "mean" value × the
    # number of valid pixels (patches) / B; L1 is divided by B. Checked on the weighted totals.
    g = torch.Generator().manual_seed(1)
    b, h, w = 2, 4, 4
    weights = dict(
        adv_weight=0.3,
        class_weight=0.2,
        l1_weight=2.0,
        generator_adv_weight=0.4,
        generator_class_weight=0.7,
    )
    kwargs = dict(tiny_module_kwargs(), generator_width=4, discriminator_width=8, **weights)
    mean_module = LSDSegModule(**kwargs)
    sum_module = LSDSegModule(**kwargs, pixel_reduction="sum")
    assert sum_module.pixel_reduction == "sum"

    def outputs() -> PatchOutputs:
        return PatchOutputs(
            torch.randn(b, 4, h, w, generator=g), torch.randn(b, NUM_CLASSES, h, w, generator=g)
        )

    fake_s, fake_t = outputs(), outputs()
    labels = torch.randint(0, NUM_CLASSES, (b, h, w), generator=g)
    labels[:, 0] = 255
    mask = torch.randint(0, NUM_CLASSES, (b, 16, 16), generator=g)
    mask[0, 3:7] = 255
    logits = torch.randn(b, NUM_CLASSES, 8, 8, generator=g)
    images = {d: torch.rand(b, 3, 16, 16, generator=g) for d in ("source", "target")}
    real = {d: torch.rand(b, 3, 16, 16, generator=g) for d in ("source", "target")}

    patches = h * w  # per image: the domain maps have no void
    valid_patches = int((labels != 255).sum()) / b
    valid_pixels = int((mask != 255).sum()) / b

    mean = mean_module.segmentor_losses(logits, mask, fake_s, fake_t, labels)
    got = sum_module.segmentor_losses(logits, mask, fake_s, fake_t, labels)
    source = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    source_sum = F.cross_entropy(source, mask, ignore_index=255, reduction="sum") / b
    torch.testing.assert_close(got["source"], source_sum)
    torch.testing.assert_close(got["source"], mean["source"] * valid_pixels)
    torch.testing.assert_close(got["confusion"], mean["confusion"] * patches)
    torch.testing.assert_close(got["fake_class"], mean["fake_class"] * valid_patches)
    confusion = (
        F.cross_entropy(fake_s.domain, torch.full_like(labels, TARGET_REAL), reduction="sum")
        + F.cross_entropy(fake_t.domain, torch.full_like(labels, SOURCE_REAL), reduction="sum")
    ) / b
    fake_class = F.cross_entropy(fake_s.classes, labels, ignore_index=255, reduction="sum") / b
    torch.testing.assert_close(got["segmentor"], source_sum + 0.3 * confusion + 0.2 * fake_class)

    mean = mean_module.generator_losses(fake_s, fake_t, labels, images, real)
    got = sum_module.generator_losses(fake_s, fake_t, labels, images, real)
    torch.testing.assert_close(got["generator_class"], mean["generator_class"] * valid_patches)
    torch.testing.assert_close(
        got["generator_adversarial"], mean["generator_adversarial"] * patches
    )
    torch.testing.assert_close(got["reconstruction"], mean["reconstruction"] / b)

    real_s, real_t = outputs(), outputs()
    mean = mean_module.discriminator_losses(real_s, fake_s, real_t, fake_t, labels)
    got = sum_module.discriminator_losses(real_s, fake_s, real_t, fake_t, labels)
    torch.testing.assert_close(got["discriminator_domain"], mean["discriminator_domain"] * patches)
    torch.testing.assert_close(
        got["discriminator_class"], mean["discriminator_class"] * valid_patches
    )


def test_unknown_pixel_reduction_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"pixel_reduction must be one of \('mean', 'sum'\)"):
        LSDSegModule(**tiny_module_kwargs(), pixel_reduction="none")
