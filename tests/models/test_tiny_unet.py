"""Tests for lightning_uda/models/tiny_unet.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_uda.models import TinyUNet, build_segmentor


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (37, 50)])
def test_tiny_unet_full_resolution_logits(size: tuple[int, int]) -> None:
    model = build_segmentor("tiny_unet", num_classes=11)
    assert isinstance(model, TinyUNet)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 11, *size)


def test_tiny_unet_is_small_with_bn_relu() -> None:
    model = TinyUNet(num_classes=11)
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000  # tens of thousands
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.encoder.modules())
    assert model.multi_level is False
    # depth 2 -> two max-pools in the encoder
    shallow = TinyUNet(in_channels=1, num_classes=2, width=8, depth=2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in shallow.encoder.modules()) == 2
    assert shallow(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_tiny_unet_fits_a_batch() -> None:
    # Two fixed 32×32 images with a square of class 1 and one of class 2: a few Adam steps must
    # cut the cross-entropy well below its initial value (ln 3 ≈ 1.1 for uniform logits).
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32) * 0.1
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, 4:14, 4:14] = 1
    labels[1, 16:28, 10:22] = 2
    images[0, :, 4:14, 4:14] += 1.0
    images[1, :, 16:28, 10:22] -= 1.0
    model = TinyUNet(num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
