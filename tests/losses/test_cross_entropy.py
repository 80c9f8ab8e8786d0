"""Tests for lightning_uda/losses/cross_entropy.py against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_uda.losses import cross_entropy, pixel_weighted_cross_entropy, upsample_logits

LN3 = math.log(3.0)
# One image, K=2, 2×2 pixels. Per-pixel CE of the target class = -log_softmax:
#   (0,0): logits (0, 0),   target 0 -> log-softmax (-ln2, -ln2) -> CE = ln 2   = 0.6931472
#   (0,1): logits (ln3, 0), target 1 -> log-softmax (ln(3/4), ln(1/4)) -> CE = ln 4   = 1.3862944
#   (1,0): logits (0, ln3), target 1 -> log-softmax (ln(1/4), ln(3/4)) -> CE = ln 4/3 = 0.2876821
#   (1,1): logits (2, 0),   target 255 (ignored) -> CE = 0
CE_00, CE_01, CE_10 = 0.6931472, 1.3862944, 0.2876821


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(
        [[[[0.0, LN3], [0.0, 2.0]], [[0.0, 0.0], [LN3, 0.0]]]]
    )  # 1×2×2×2: channel 0 then channel 1
    target = torch.tensor([[[0, 1], [1, 255]]])
    return logits, target


def test_source_cross_entropy_hand_computed() -> None:
    logits, target = hand_case()
    expected = (CE_00 + CE_01 + CE_10) / 3  # mean over the 3 valid pixels = 0.7890412
    assert cross_entropy(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.7890412, abs=1e-6)


def test_pixel_weighted_cross_entropy_hand_computed() -> None:
    logits, target = hand_case()
    weight = torch.tensor([[[1.0, 0.5], [2.0, 3.0]]])
    # DACS: mean over ALL 4 pixels; the ignored one adds 0 (its weight 3 is irrelevant).
    expected = (1.0 * CE_00 + 0.5 * CE_01 + 2.0 * CE_10 + 0.0) / 4  # = 0.4904147
    assert expected == pytest.approx(0.4904147, abs=1e-6)
    loss = pixel_weighted_cross_entropy(logits, target, weight)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ignored_pixels_count_in_denominator_only() -> None:
    logits, target = hand_case()
    all_ignored = torch.full_like(target, 255)
    ones = torch.ones(1, 2, 2)
    # Ignoring one more pixel removes it from the numerator, the denominator stays 4.
    target_more_ignored = target.clone()
    target_more_ignored[0, 0, 1] = 255
    loss = pixel_weighted_cross_entropy(logits, target_more_ignored, ones)
    assert loss.item() == pytest.approx((CE_00 + CE_10) / 4, abs=1e-6)
    assert pixel_weighted_cross_entropy(logits, all_ignored, ones).item() == 0.0


def test_weight_broadcast_scalar_and_per_image() -> None:
    logits, target = hand_case()
    total = CE_00 + CE_01 + CE_10
    assert pixel_weighted_cross_entropy(logits, target, 0.5).item() == pytest.approx(
        0.5 * total / 4, abs=1e-6
    )
    assert pixel_weighted_cross_entropy(logits, target, torch.tensor(0.5)).item() == pytest.approx(
        0.5 * total / 4, abs=1e-6
    )
    # Two images, one weight each: the mean over 8 pixels.
    logits2 = torch.cat([logits, logits])
    target2 = torch.cat([target, target])
    loss = pixel_weighted_cross_entropy(logits2, target2, torch.tensor([1.0, 0.25]))
    assert loss.item() == pytest.approx((1.0 + 0.25) * total / 8, abs=1e-6)
    with pytest.raises(ValueError, match="one entry per image"):
        pixel_weighted_cross_entropy(logits2, target2, torch.tensor([1.0, 0.5, 0.2]))


def test_upsample_logits_bilinear_half_pixel() -> None:
    # 1-D [0, 4] -> 4 samples at source coords -0.25, 0.25, 0.75, 1.25 (align_corners=False),
    # clamped at the border: [0, 0.75·0 + 0.25·4, 0.25·0 + 0.75·4, 4] = [0, 1, 3, 4].
    logits = torch.tensor([[[[0.0, 4.0]]]])
    out = upsample_logits(logits, (1, 4))
    assert torch.allclose(out, torch.tensor([[[[0.0, 1.0, 3.0, 4.0]]]]))
    assert upsample_logits(out, (1, 4)) is out


def test_cross_entropy_upsamples_logits_to_label_size() -> None:
    # A 1×1 logit map upsampled to 3×3 is constant: every pixel has CE ln 4 (logits (ln3, 0),
    # target 1), and weight 1 everywhere.
    logits = torch.tensor([LN3, 0.0]).view(1, 2, 1, 1)
    target = torch.ones(1, 3, 3, dtype=torch.long)
    assert cross_entropy(logits, target).item() == pytest.approx(CE_01, abs=1e-6)
    assert pixel_weighted_cross_entropy(logits, target, torch.ones(1, 3, 3)).item() == (
        pytest.approx(CE_01, abs=1e-6)
    )


def test_cross_entropy_equals_torch_with_ignore() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=generator)
    target = torch.randint(0, 5, (2, 6, 7), generator=generator)
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, target), expected, atol=1e-6)


def test_cross_entropy_without_valid_pixels_is_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = cross_entropy(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
