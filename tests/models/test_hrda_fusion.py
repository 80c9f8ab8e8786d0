"""HRDA's fusion and detail-box sampler against hand-written cases."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.models import fuse_scales, sample_detail_box

# Bilinear ×2 (align_corners=False) of a length-2 signal, by hand: output i samples the input at
# (i + 0.5) / 2 − 0.5 = −0.25, 0.25, 0.75, 1.25, clamped to the border.
UP2 = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Hand ×2 bilinear of B×C×2×2 maps: U X Uᵀ."""
    return torch.einsum("ia,bcaj,kj->bcik", UP2, x, UP2)


def test_constant_attention_without_box_is_a_convex_blend():
    # a constant in space: up() keeps it, so fused = a·hr + (1 − a)·lr exactly
    lr = torch.full((1, 2, 2, 2), 3.0, dtype=torch.float64)
    hr = torch.arange(32, dtype=torch.float64).view(1, 2, 4, 4)
    attention = torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)
    fused = fuse_scales(lr, hr, attention)
    torch.testing.assert_close(fused, 0.25 * hr + 0.75 * 3.0)


def test_box_fusion_matches_the_hand_formula():
    # context grid 2×2, fused 4×4, detail box = the top-left 2×2 of the fused grid
    g = torch.Generator().manual_seed(0)
    lr = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64)
    attention = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64)
    hr = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    gate = attention * mask
    inserted = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    inserted[..., :2, :2] = hr
    expected = _up(gate) * inserted + _up((1 - gate) * lr)
    torch.testing.assert_close(fuse_scales(lr, hr, attention, box=(0, 2, 0, 2)), expected)
    # outside the box's footprint on the context grid the context logits pass unchanged
    out = fuse_scales(lr, hr, attention, box=(0, 2, 0, 2))
    torch.testing.assert_close(out[..., 3, 3], lr[..., 1, 1])


def test_zero_attention_gives_the_upsampled_context_and_one_gives_the_detail():
    g = torch.Generator().manual_seed(1)
    lr = torch.randn(2, 4, 2, 2, generator=g, dtype=torch.float64)
    hr = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    zeros = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(fuse_scales(lr, hr, zeros), _up(lr))
    torch.testing.assert_close(fuse_scales(lr, hr, torch.ones_like(zeros)), hr)


@pytest.mark.parametrize(
    ("hr_shape", "attention_shape", "box", "match"),
    [
        ((1, 2, 2, 2), (1, 2, 2, 2), (0, 2, 0, 4), "hr_logits must be"),
        ((1, 2, 2, 2), (1, 2, 2, 2), (1, 3, 0, 2), "even coordinates"),
        ((1, 2, 2, 2), (1, 2, 2, 2), (2, 6, 0, 2), "inside the fused output of 4×4"),
        ((1, 2, 4, 4), (1, 3, 2, 2), None, "attention must be"),
    ],
)
def test_bad_fusion_inputs_name_the_sizes(hr_shape, attention_shape, box, match):
    lr = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=match):
        fuse_scales(lr, torch.zeros(hr_shape), torch.zeros(attention_shape), box=box)


def test_detail_boxes_cover_every_aligned_position_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    boxes = {sample_detail_box((32, 48), (16, 16), 8, generator=g) for _ in range(400)}
    expected = {(y, y + 16, x, x + 16) for y in (0, 8, 16) for x in (0, 8, 16, 24, 32)}
    assert boxes == expected
    # HRDA's sizes: 512² of 1024², offsets multiples of 8 up to 512
    y1, y2, x1, x2 = sample_detail_box((1024, 1024), (512, 512), 8, generator=g)
    assert y2 - y1 == x2 - x1 == 512 and y1 % 8 == x1 % 8 == 0 and y2 <= 1024 and x2 <= 1024
    assert sample_detail_box((16, 16), (16, 16), 8) == (0, 16, 0, 16)


def test_bad_detail_sizes_are_refused():
    with pytest.raises(ValueError, match=r"detail crop 64×64 is larger than the training crop"):
        sample_detail_box((32, 32), (64, 64), 8)
    with pytest.raises(ValueError, match="not divisible by 8"):
        sample_detail_box((32, 32), (12, 16), 8)
