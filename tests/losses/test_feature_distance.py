"""ImageNet feature distance: the downscaled thing mask and the distance, by hand."""

from __future__ import annotations

import torch

from lightning_uda.losses.feature_distance import downscale_labels, feature_distance


def _labels() -> torch.Tensor:
    # 4×4 labels, 2×2 cells: cell (0,0) all class 11 (thing), cell (0,1) 3 of 4 class 13 (75%),
    # cell (1,0) half 11 / half 0 (no majority ≥ 0.75), cell (1,1) void
    labels = torch.full((1, 4, 4), 255)
    labels[0, :2, :2] = 11
    labels[0, :2, 2:] = 13
    labels[0, 0, 3] = 0
    labels[0, 2:, :2] = torch.tensor([[11, 11], [0, 0]])
    return labels


def test_downscaled_labels_by_hand():
    cells = downscale_labels(_labels(), (2, 2), num_classes=19, min_ratio=0.75)
    assert cells.tolist() == [[[11, 13], [255, 255]]]


def test_distance_over_thing_cells_by_hand():
    features = torch.zeros(1, 2, 2, 2)
    reference = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at the class-11 cell
    features[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # distance 1 at the class-13 cell
    features[0, :, 1, 0] = torch.tensor([100.0, 0.0])  # not counted (no majority)
    loss = feature_distance(features, reference, _labels(), classes=(11, 13))
    assert loss.item() == 3.0  # mean of 5 and 1
    only_persons = feature_distance(features, reference, _labels(), classes=(11,))
    assert only_persons.item() == 5.0
    features.requires_grad_(True)
    none = feature_distance(features, reference, _labels(), classes=(17,))
    assert none.item() == 0.0 and none.requires_grad  # skipped, not NaN
    assert feature_distance(features, reference).item() == (5 + 1 + 100 + 0) / 4
