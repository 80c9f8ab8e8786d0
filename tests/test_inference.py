"""Sliding-window inference against hand-computed windows and averages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_uda.inference import sliding_window_logits, window_starts


def test_window_grid_by_hand():
    assert window_starts(1024, 512, 341) == [0, 341, 512]  # 2048×1024 Cityscapes rows
    assert window_starts(2048, 512, 341) == [0, 341, 682, 1023, 1364, 1536]
    assert window_starts(6, 4, 2) == [0, 2]
    assert window_starts(7, 4, 2) == [0, 2, 3]  # the last window ends at the border
    assert window_starts(3, 4, 2) == [0]  # image smaller than the window
    with pytest.raises(ValueError, match="stride"):
        window_starts(6, 4, 0)


class ColumnInWindow(nn.Module):
    """One channel: the column index of each pixel inside the window it sees (0, 1, ...)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
        return cols + 0 * x[:, :1]


def test_overlaps_are_averaged():
    # width 6, windows of 4 every 2 → windows [0, 4) and [2, 6): columns 2, 3 are seen twice,
    # once as window columns (2, 3), once as (0, 1) → averages 1 and 2.
    images = torch.zeros(2, 3, 4, 6)
    out = sliding_window_logits(ColumnInWindow(), images, window=(4, 4), stride=(2, 2))
    expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    assert out.shape == (2, 1, 4, 6)
    assert torch.equal(out[0, 0, 0], expected) and torch.equal(out[1, 0, 3], expected)


def test_pointwise_model_gives_the_whole_image_result():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    images = torch.randn(2, 3, 20, 33)
    whole = model(images)
    for window_batch_size in (1, 4):
        slide = sliding_window_logits(
            model, images, (8, 12), (5, 7), window_batch_size=window_batch_size
        )
        torch.testing.assert_close(slide, whole)


def test_strided_model_is_upsampled_per_window():
    # A model at output stride 2 (average pooling): each window's logits are upsampled to it.
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AvgPool2d(2))
    images = torch.randn(1, 3, 8, 8)
    one = sliding_window_logits(model, images, (8, 8), (8, 8))
    expected = nn.functional.interpolate(model(images), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(one, expected)


def test_module_slide_inference_is_used_for_evaluation():
    from lightning_uda.methods import SourceOnlyModule

    module = SourceOnlyModule(
        arch="tiny_unet", num_classes=3, inference="slide", slide_window=(8, 8), slide_stride=(4, 4)
    )
    module.eval()
    images = torch.randn(1, 3, 16, 24)
    calls = []
    module.model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    with torch.no_grad():
        logits = module.segment(images)
    assert logits.shape == (1, 3, 16, 24)
    assert calls == [(4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8), (3, 3, 8, 8)]  # 3 × 5 windows
    with pytest.raises(ValueError, match="inference"):
        SourceOnlyModule(arch="tiny_unet", num_classes=3, inference="tiles")
