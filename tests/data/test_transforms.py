"""Tests for lightning_uda/data/transforms.py."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.data.transforms import (
    PRESETS,
    normalize_transform,
    preset,
    train_transform,
    val_transform,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _striped_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[:, : w // 3] = 3
    mask[:, w // 3 : 2 * w // 3] = 255
    mask[: h // 2, 2 * w // 3 :] = 18
    return mask


def test_normalisation_closed_form():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51  # R, G, B
    out = normalize_transform()(image=image)["image"]
    assert out.dtype == torch.float32 and out.shape == (3, 4, 6)
    expected = (torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1) - MEAN) / STD
    assert torch.allclose(out, expected.expand(3, 4, 6), atol=1e-5)


def test_sizes_are_height_width():
    t = train_transform(resize=(30, 60), crop=None, flip=False)
    out = t(image=np.zeros((100, 100, 3), np.uint8), mask=np.zeros((100, 100), np.uint8))
    assert out["image"].shape == (3, 30, 60) and out["mask"].shape == (30, 60)


def test_resize_keeps_mask_values_nearest():
    mask = _striped_mask(90, 120)
    for transform in (
        train_transform(resize=(37, 53), crop=None, flip=False),
        val_transform((37, 53)),
    ):
        out = transform(image=np.zeros((90, 120, 3), np.uint8), mask=mask)
        assert out["mask"].shape == (37, 53)
        assert set(np.unique(out["mask"].numpy())) == {0, 3, 18, 255}


def test_crop_larger_than_image_pads_mask_with_ignore_and_image_with_black():
    image = np.full((10, 20, 3), 255, np.uint8)
    mask = np.full((10, 20), 7, np.uint8)
    out = train_transform(crop=(16, 24), flip=False)(image=image, mask=mask)
    assert out["image"].shape == (3, 16, 24)
    m = out["mask"].numpy()
    assert (m == 7).sum() == 10 * 20 and (m == 255).sum() == 16 * 24 - 10 * 20
    black = (-MEAN / STD).view(3)
    padded = torch.from_numpy(m == 255)
    assert torch.allclose(out["image"][:, padded].T, black.expand(int(padded.sum()), 3), atol=1e-5)


def test_random_crop_stays_aligned_with_mask():
    # Mask = a function of the pixel position, image encodes the same: crops must match.
    h, w = 40, 50
    ys, xs = np.mgrid[0:h, 0:w]
    mask = ((ys * 7 + xs * 3) % 19).astype(np.uint8)
    image = np.repeat(mask[..., None] * 10, 3, axis=2).astype(np.uint8)
    t = train_transform(crop=(16, 16), flip=True)
    for _ in range(5):
        out = t(image=image, mask=mask)
        pixel = out["image"] * STD + MEAN  # back to [0, 1]
        assert torch.allclose(pixel[0] * 255, out["mask"].float() * 10, atol=0.5)


def test_flip_is_optional():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255  # left half white
    flipped = set()
    for flip in (False, True):
        t = train_transform(crop=None, flip=flip)
        t.set_random_seed(0)
        for _ in range(20):
            out = t(image=image)["image"]
            flipped.add((flip, bool(out[0, 0, 0] < 0)))  # left pixel black → flipped
    assert flipped == {(False, False), (True, False), (True, True)}


def test_extra_transforms_run_before_normalisation():
    seen = []

    def spy(image, **_):
        seen.append(image.dtype)
        return image

    t = train_transform(crop=None, flip=False, extra=[A.Lambda(image=spy)])
    t(image=np.zeros((4, 4, 3), np.uint8))
    assert seen == [np.uint8]


def test_presets_follow_dacs():
    assert PRESETS["gta5_train"]["resize"] == (720, 1280)  # 1280×720 (w×h)
    assert PRESETS["cityscapes_train"]["resize"] == (512, 1024)
    assert PRESETS["synthia_train"]["resize"] == (760, 1280)
    assert PRESETS["cityscapes_val"]["resize"] == (512, 1024)
    gta_image = np.zeros((1052, 1914, 3), np.uint8)
    out = preset("gta5_train")(image=gta_image, mask=np.zeros((1052, 1914), np.uint8))
    assert out["image"].shape == (3, 512, 512) and out["mask"].shape == (512, 512)
    out = preset("cityscapes_val")(image=np.zeros((128, 256, 3), np.uint8))
    assert out["image"].shape == (3, 512, 1024)


def test_preset_overrides_and_unknown_name():
    t = preset("cityscapes_train", crop=(8, 8))
    assert t(image=np.zeros((20, 20, 3), np.uint8))["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="gta5_train"):
        preset("gta")


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="height, width"):
        train_transform(resize=(512,))
