"""Tests for lightning_uda/data/folder.py (SegmentationFolder) on real-format files built from the
shared fixture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lightning_uda.data.files import DatasetLayoutError, UnknownLabelError
from lightning_uda.data.folder import SegmentationFolder
from lightning_uda.data.transforms import train_transform

FRAME = "frankfurt_000000_000294"


@pytest.fixture
def mini(fixtures_root: Path) -> Path:
    return fixtures_root / "cityscapes_mini"


def _rgb(mini: Path) -> np.ndarray:
    return np.array(Image.open(mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))


def _folder(tmp_path: Path, mini: Path, masks: dict[str, np.ndarray]) -> tuple[Path, Path]:
    images, labels = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    labels.mkdir()
    rgb = _rgb(mini)[:16, :24]
    for stem, mask in masks.items():
        cv2.imwrite(str(images / f"{stem}_rgb.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        Image.fromarray(mask).save(labels / f"{stem}_label.png")
    return images, labels


def test_folder_pairs_by_stem_and_maps(tmp_path: Path, mini: Path):
    mask = np.zeros((16, 24), np.uint8)
    mask[:, 12:] = 2
    mask[0, :] = 9
    images, labels = _folder(tmp_path, mini, {"a": mask, "b": mask})
    Image.fromarray(mask).save(labels / "orphan_label.png")  # a mask without image is ignored
    ds = SegmentationFolder(
        images,
        labels,
        label_map={1: 0, 2: 1, 0: 255, 9: 255},
        classes=["road", "car"],
        image_suffix="_rgb",
        mask_suffix="_label",
        transform=train_transform(crop=None, flip=False),
    )
    assert len(ds) == 2 and ds.palette.shape == (2, 3) and ds.class_subsets == {"mIoU": [0, 1]}
    out = ds[0]["mask"]
    assert (out[1:, 12:] == 1).all() and (out[1:, :12] == 255).all() and (out[0] == 255).all()


def test_folder_unknown_value_and_train_id_default(tmp_path: Path, mini: Path):
    mask = np.zeros((16, 24), np.uint8)
    mask[3, 4] = 7
    images, labels = _folder(tmp_path, mini, {"a": mask})
    ds = SegmentationFolder(images, labels, label_map={0: 0}, classes=["x", "y"],
                            image_suffix="_rgb", mask_suffix="_label")  # fmt: skip
    with pytest.raises(UnknownLabelError, match=r"a_label\.png.*\b7\b"):
        ds[0]
    # No label_map: masks hold train ids; 7 is not < 2.
    ds = SegmentationFolder(images, labels, classes=["x", "y"], image_suffix="_rgb",
                            mask_suffix="_label")  # fmt: skip
    with pytest.raises(UnknownLabelError, match=r"\b7\b"):
        ds[0]
    lut = np.full(256, 255, np.uint8)
    lut[0] = 1
    ds = SegmentationFolder(images, labels, label_map=lut, classes=["x", "y"],
                            image_suffix="_rgb", mask_suffix="_label")  # fmt: skip
    assert (ds[0]["mask"] == 1).sum() == 16 * 24 - 1


def test_folder_errors(tmp_path: Path, mini: Path):
    images, labels = _folder(tmp_path, mini, {"a": np.zeros((16, 24), np.uint8)})
    with pytest.raises(DatasetLayoutError, match=r"img/\*_left\{\.png"):
        SegmentationFolder(images, labels, image_suffix="_left", image_extensions=(".png",))
    with pytest.raises(DatasetLayoutError, match=r"1 of 1 images have no label.*a_rgb\.jpg"):
        SegmentationFolder(images, labels, image_suffix="_rgb", mask_suffix="_gt")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        SegmentationFolder(tmp_path / "none", labels)
    with pytest.raises(ValueError, match="not train ids"):
        SegmentationFolder(images, labels, label_map={0: 5}, classes=["x", "y"])
