"""Tests for lightning_uda/models/discriminator.py (AdvEnt's fully-convolutional discriminator)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_uda.models import Discriminator

NORM_TYPES = (
    nn.BatchNorm2d,
    nn.InstanceNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.SyncBatchNorm,
)


def test_output_shape_512_is_16x16() -> None:
    # AdvEnt: 5 stride-2 convs, so 512 / 2**5 = 16.
    discriminator = Discriminator(in_channels=19)
    with torch.no_grad():
        out = discriminator(torch.randn(1, 19, 512, 512))
    assert out.shape == (1, 1, 16, 16)


def test_output_shape_floors_odd_sizes() -> None:
    # k4 s2 p1 maps n -> floor(n / 2):
    # 100 -> 50 -> 25 -> 12 -> 6 -> 3 and 70 -> 35 -> 17 -> 8 -> 4 -> 2.
    with torch.no_grad():
        out = Discriminator(in_channels=3, ndf=8)(torch.randn(2, 3, 100, 70))
    assert out.shape == (2, 1, 3, 2)


@pytest.mark.parametrize(
    ("ndf", "expected"), [(64, [7, 64, 128, 256, 512, 1]), (8, [7, 8, 16, 32, 64, 1])]
)
def test_layer_structure(ndf: int, expected: list[int]) -> None:
    discriminator = Discriminator(in_channels=7, ndf=ndf)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    assert [convs[0].in_channels] + [c.out_channels for c in convs] == expected
    for conv in convs:
        assert conv.kernel_size == (4, 4)
        assert conv.stride == (2, 2)
        assert conv.padding == (1, 1)
        assert conv.bias is not None
    activations = [m for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(activations) == 4
    assert all(a.negative_slope == 0.2 for a in activations)
    assert not any(isinstance(m, NORM_TYPES) for m in discriminator.modules())
    # Logits: nothing after the last conv.
    assert isinstance(list(discriminator.modules())[-1], nn.Conv2d)


def test_forward_is_conv_leaky_relu_chain() -> None:
    # The spec written out with functional ops: conv(k4, s2, p1) then LeakyReLU(0.2), four times,
    # then a final conv without activation.
    torch.manual_seed(0)
    discriminator = Discriminator(in_channels=2, ndf=4)
    x = torch.randn(2, 2, 64, 64)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    expected = x
    for index, conv in enumerate(convs):
        expected = F.conv2d(expected, conv.weight, conv.bias, stride=2, padding=1)
        if index < 4:
            expected = torch.where(expected > 0, expected, 0.2 * expected)
    with torch.no_grad():
        torch.testing.assert_close(discriminator(x), expected)


def test_invalid_channels_raise() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        Discriminator(in_channels=0)
