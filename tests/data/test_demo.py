from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.data.demo import (
    BACKGROUND_THRESHOLD,
    DIGIT_POOLS,
    INK_LABEL_THRESHOLD,
    DigitScenes,
    _digits,
    demo_datamodule,
)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images * std + mean


def test_same_seed_same_scenes_other_seed_other_scenes():
    a = DigitScenes("target", "train", num_images=8, seed=3)
    b = DigitScenes("target", "train", num_images=8, seed=3)
    c = DigitScenes("target", "train", num_images=8, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_shapes_dtypes_and_label_values():
    ds = DigitScenes("source", "val", num_images=16, seed=0)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.long
    values = set(ds.masks.unique().tolist())
    assert values <= set(range(11)) | {255} and 0 in values and len(values) > 3
    assert len(ds.classes) == 11 and ds.classes[0] == "background"
    assert "mask" not in DigitScenes("target", "train", num_images=2, return_mask=False)[0]


def test_domains_and_splits_use_disjoint_digit_samples():
    drawn = {
        key: set(DigitScenes(*key, num_images=200, seed=0).digit_indices) for key in DIGIT_POOLS
    }
    keys = list(drawn)
    for i, a in enumerate(keys):
        lo, hi = DIGIT_POOLS[a]
        assert all(lo <= k < hi for k in drawn[a])
        for b in keys[i + 1 :]:
            assert not drawn[a] & drawn[b], (a, b)


def test_labelled_pixels_are_inked_in_their_digit_and_ignore_is_the_rim():
    # Independent reconstruction: a source val scene is grey ink on a grey background, so the
    # ink fraction of a pixel is recoverable from its grey value; a pixel labelled digit k must
    # be mostly ink, a background pixel mostly background.
    ds = DigitScenes("source", "val", num_images=32, seed=1)
    rgb = _rgb(ds.images).mean(dim=1)  # grey level (+ small noise)
    for image, mask in zip(rgb, ds.masks, strict=True):
        bg_level = image[mask == 0].median()
        ink = mask.clamp(max=10) > 0
        if ink.any():
            ink_level = image[ink].median()
            assert ink_level > bg_level + 0.2  # labelled pixels are drawn in ink
    # the label thresholds: digit above 0.5, background below 0.2, ignore in between
    assert BACKGROUND_THRESHOLD < INK_LABEL_THRESHOLD
    images, targets = _digits()
    assert images.shape == (1797, 8, 8) and set(np.unique(targets)) == set(range(10))


def test_target_backgrounds_are_photo_texture_not_plain():
    source = DigitScenes("source", "val", num_images=32, seed=0)
    target = DigitScenes("target", "val", num_images=32, seed=0)

    def background_std(ds: DigitScenes) -> float:
        rgb = _rgb(ds.images)
        return float(torch.stack([rgb[i][:, ds.masks[i] == 0].std() for i in range(32)]).mean())

    assert background_std(target) > 3 * background_std(source)


def test_generation_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(DigitScenes("target", "train", num_images=2, seed=9)) == 2


def test_demo_datamodule_holds_back_target_labels_except_for_oracle():
    dm = demo_datamodule(seed=0)
    assert dm.num_classes == 11
    assert dm.source is not dm.target
    oracle = demo_datamodule(seed=0, oracle=True)
    assert oracle.source is oracle.target


def test_invalid_arguments():
    with pytest.raises(ValueError, match="domain"):
        DigitScenes("synthetic", "train")
    with pytest.raises(ValueError, match="size"):
        DigitScenes("source", "train", size=20)
