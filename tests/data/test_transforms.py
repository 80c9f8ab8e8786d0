"""Tests for lightning_uda/data/transforms.py."""

from __future__ import annotations

import pickle

import albumentations as A
import numpy as np
import pytest
import torch

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.data.transforms import (
    EVALUATION_PROTOCOLS,
    PRESETS,
    normalize_transform,
    preset,
    train_transform,
    val_transform,
)
from lightning_uda.normalization import CAFFE, IMAGENET

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
# The Caffe DeepLab-v2 mean pixel as the reference code writes it (B, G, R; 0-255).
CAFFE_B, CAFFE_G, CAFFE_R = 104.00698793, 116.66876762, 122.67891434


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
        val_transform((37, 53), protocol="dacs"),
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
    assert PRESETS["cityscapes_val"] == {"resize": (512, 1024), "protocol": "full"}
    assert PRESETS["cityscapes_val_dacs"] == {"resize": (512, 1024), "protocol": "dacs"}
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


# ---------------------------------------------------------------------------------- input spaces
def _rgb_image() -> np.ndarray:
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51  # R, G, B
    image[0, 0] = (10, 200, 130)
    return image


def test_caffe_pipeline_is_bgr_minus_mean_pixel():
    image = _rgb_image()
    out = normalize_transform("caffe")(image=image)["image"]
    assert out.dtype == torch.float32 and out.shape == (3, 4, 6)
    # Channel 0 is blue, 1 green, 2 red; 0-255 scale, mean subtracted, no division.
    expected = torch.tensor([51 - CAFFE_B, 0 - CAFFE_G, 255 - CAFFE_R]).view(3, 1, 1)
    expected = expected.expand(3, 4, 6).clone()
    expected[:, 0, 0] = torch.tensor([130 - CAFFE_B, 200 - CAFFE_G, 10 - CAFFE_R])
    assert torch.allclose(out, expected, atol=1e-4)
    # The library's own numpy path agrees.
    assert np.allclose(out.permute(1, 2, 0).numpy(), CAFFE.normalize_uint8(image), atol=1e-4)


def test_imagenet_pipeline_is_unchanged_and_the_default():
    image = _rgb_image()
    default = normalize_transform()(image=image)["image"]
    assert torch.equal(default, normalize_transform("imagenet")(image=image)["image"])
    assert torch.equal(default, normalize_transform(IMAGENET)(image=image)["image"])
    assert torch.allclose(default[:, 1, 1], ((torch.tensor([1.0, 0.0, 0.2]) - MEAN.view(3))
                                             / STD.view(3)), atol=1e-5)  # fmt: skip


def test_every_builder_takes_the_space_and_records_it():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    reference = torch.from_numpy(CAFFE.normalize_uint8(image)).permute(2, 0, 1)
    pipelines = {
        "train": train_transform(crop=None, flip=False, normalization="caffe"),
        "val": val_transform(resize=None, normalization="caffe"),
        "normalize": normalize_transform("caffe"),
        "preset": preset("normalize", normalization="caffe"),
        "preset_val": preset("cityscapes_val", resize=None, normalization=CAFFE),
    }
    for name, t in pipelines.items():
        assert t.normalization == CAFFE, name
        out = t(image=image, mask=mask)
        assert torch.allclose(out["image"], reference, atol=1e-4), name
    assert preset("gta5_train").normalization == IMAGENET
    with pytest.raises(ValueError, match="unknown input normalisation 'bgr'"):
        train_transform(normalization="bgr")


def test_caffe_padding_is_black_before_normalisation():
    out = train_transform(crop=(8, 8), flip=False, normalization="caffe")(
        image=np.full((4, 4, 3), 255, np.uint8), mask=np.zeros((4, 4), np.uint8)
    )
    padded = out["mask"].numpy() == 255
    black = torch.tensor([-CAFFE_B, -CAFFE_G, -CAFFE_R])
    assert padded.sum() == 64 - 16
    assert torch.allclose(out["image"][:, torch.from_numpy(padded)].T, black, atol=1e-4)


def test_pipelines_pickle_for_dataloader_workers():
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = _striped_mask(40, 60)
    for t in (val_transform((16, 32), normalization="caffe"), preset("cityscapes_val_dacs")):
        clone = pickle.loads(pickle.dumps(t))
        a, b = t(image=image, mask=mask), clone(image=image, mask=mask)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert clone.normalization == t.normalization


# ---------------------------------------------------------------------------------- protocols
def test_evaluation_protocols():
    assert set(EVALUATION_PROTOCOLS) == {"full", "dacs"}
    assert all(isinstance(v, str) and v for v in EVALUATION_PROTOCOLS.values())
    image = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = _striped_mask(90, 120)
    full = val_transform((30, 40))(image=image, mask=mask)  # "full" is the default
    dacs = val_transform((30, 40), protocol="dacs")(image=image, mask=mask)
    assert full["image"].shape == dacs["image"].shape == (3, 30, 40)
    assert torch.equal(full["image"], dacs["image"])  # the network sees the same input
    assert full["mask"].shape == (90, 120) and np.array_equal(full["mask"].numpy(), mask)
    assert dacs["mask"].shape == (30, 40)
    assert set(np.unique(dacs["mask"].numpy())) == {0, 3, 18, 255}  # nearest
    by_preset = {
        name: preset(name, resize=(30, 40))(image=image, mask=mask)["mask"].shape
        for name in ("cityscapes_val", "cityscapes_val_dacs")
    }
    assert by_preset == {"cityscapes_val": (90, 120), "cityscapes_val_dacs": (30, 40)}
    with pytest.raises(ValueError, match=r"'advent'.*'full'.*'dacs'"):
        val_transform(protocol="advent")
