"""Damaged files and wrongly converted labels fail loudly, on real-format files from the fixture."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lightning_uda.data import (
    SYNTHIA,
    AllIgnoreLabelError,
    Cityscapes,
    CorruptImageError,
    SegmentationFolder,
    UDADataModule,
)

FRAME = "frankfurt_000000_000294"


@pytest.fixture
def mini(fixtures_root: Path) -> Path:
    return fixtures_root / "cityscapes_mini"


def _rgb(mini: Path) -> np.ndarray:
    return cv2.imread(str(mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))


def _folder(tmp_path: Path, mini: Path, image_ext: str = ".jpg") -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    assert cv2.imwrite(str(images / f"a{image_ext}"), _rgb(mini))
    ids = np.array(Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png"))
    Image.fromarray(ids).save(masks / "a.png")
    return images, masks


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, mini):
    images, masks = _folder(tmp_path, mini)
    _truncate(images / "a.jpg")
    # what happened before: OpenCV decodes half an image (libjpeg only prints a warning)
    assert cv2.imread(str(images / "a.jpg")) is not None
    dataset = SegmentationFolder(images, masks)
    with pytest.raises(CorruptImageError, match=r"a\.jpg is truncated"):
        dataset[0]


def test_truncated_png_image_and_label_are_errors(tmp_path, mini):
    images, masks = _folder(tmp_path, mini, image_ext=".png")
    dataset = SegmentationFolder(images, masks)
    dataset[0]  # intact files load
    _truncate(masks / "a.png")
    with pytest.raises(CorruptImageError, match=r"masks/a\.png is truncated"):
        dataset[0]
    _truncate(images / "a.png")
    with pytest.raises(CorruptImageError, match=r"images/a\.png is truncated"):
        dataset[0]


def _synthia(root: Path, mini: Path, label: np.ndarray) -> Path:
    (root / "RGB").mkdir(parents=True)
    (root / "GT/LABELS").mkdir(parents=True)
    for name in ("0000000.png", "0000001.png"):
        shutil.copy(
            mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png", root / "RGB" / name
        )
        assert cv2.imwrite(str(root / "GT/LABELS" / name), label)
    return root


def _datamodule(source, val) -> UDADataModule:
    return UDADataModule(source=source, target=source, val=val, batch_size=1, num_workers=0)


def _ids(mini: Path) -> np.ndarray:
    return np.array(Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"))


@pytest.mark.parametrize("damage", ["pillow_8_bit", "id_in_blue_channel"])
def test_synthia_labels_read_as_void_everywhere_are_refused(tmp_path, mini, damage):
    raw = np.where(_ids(mini) > 0, 3, 0).astype(np.uint16)  # SYNTHIA id 3 (road/car/...)
    label = np.zeros((*raw.shape, 3), dtype=np.uint16)  # BGR for OpenCV
    if damage == "pillow_8_bit":
        # Pillow reduces a 16-bit PNG to its high bytes: the small ids become 0 (void)
        label = (label >> 8).astype(np.uint8)
    else:
        label[..., 0] = raw  # B channel instead of R
    root = _synthia(tmp_path / "synthia", mini, label)
    source = SYNTHIA(root)
    assert (source[0]["mask"] == 255).all()  # loads silently as all void
    city = tmp_path / "cityscapes"
    shutil.copytree(mini, city)
    dm = _datamodule(source, Cityscapes(city, split="val"))
    with pytest.raises(AllIgnoreLabelError, match=r"16-bit SYNTHIA labels read as 8-bit") as error:
        dm.train_dataloader()
    assert "0000000.png" in str(error.value)


def test_a_fraction_of_void_labels_warns_and_good_labels_pass(tmp_path, mini):
    city = tmp_path / "cityscapes"
    shutil.copytree(mini, city)
    extra = city / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png"
    Image.fromarray(np.zeros_like(_ids(mini))).save(extra)  # id 0: unlabelled → void
    shutil.copy(
        city / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png",
        city / "leftImg8bit/val/frankfurt/frankfurt_000000_000001_leftImg8bit.png",
    )
    source = Cityscapes(city, split="val")
    dm = _datamodule(source, source)
    with pytest.warns(UserWarning, match=r"1 of the first 2 source labels are void"):
        dm.train_dataloader()
    quiet = UDADataModule(
        source=source,
        target=source,
        val=source,
        batch_size=1,
        num_workers=0,
        all_ignore_warn_fraction=0.75,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        quiet.check_source_labels()
