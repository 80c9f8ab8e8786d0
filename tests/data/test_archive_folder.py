"""Tests for lightning_uda/data/archive_folder.py: a dataset of one's own, built as the
ArchiveAwareFolder docstring shows, reads its zips as it reads its folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_uda.data.archive_folder import ArchiveAwareFolder, locate
from lightning_uda.data.archives import ArchiveError
from lightning_uda.data.files import DatasetLayoutError
from tests.helpers.archives import zip_tree
from tests.helpers.examples import FRAME


class MyData(ArchiveAwareFolder):
    LAYOUT = "root/\n├── img/*.jpg\n└── ann/*.png"
    ZIP_LAYOUT = "root/\n├── img.zip   (img/*.jpg)\n└── ann.zip   (ann/*.png)"

    def __init__(self, root: Path, **kwargs) -> None:
        root, layouts = Path(root), (self.LAYOUT, self.ZIP_LAYOUT)
        images = locate(
            root,
            "img",
            pattern="img.zip",
            layouts=layouts,
            misnamed=lambda a: {"ann": "ann.zip"},
            required_by="MyData",
        )
        masks = locate(
            root,
            "ann",
            pattern="ann.zip",
            layouts=layouts,
            misnamed=lambda a: {"img": "img.zip"},
            required_by="MyData",
        )
        self._check_archive_labels(
            images,
            masks,
            suffixes=("", ""),
            recursive=False,
            labels_archive=lambda a: "ann.zip",
            image_extensions=(".jpg",),
        )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
            image_extensions=(".jpg",),
            **kwargs,
        )


@pytest.fixture
def trees(tmp_path: Path, fixtures_root: Path) -> tuple[Path, Path]:
    """(folders, zips) of two JPEG frames with train-id labels, made of the fixture frame."""
    mini = fixtures_root / "cityscapes_mini"
    rgb = cv2.imread(str(mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))
    train_ids = np.array(
        Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png")
    )
    folders = tmp_path / "folders"
    (folders / "img").mkdir(parents=True)
    (folders / "ann").mkdir()
    for i in range(2):
        assert cv2.imwrite(str(folders / f"img/{i}.jpg"), rgb)
        Image.fromarray(train_ids).save(folders / f"ann/{i}.png")
    zips = tmp_path / "zips"
    for kind in ("img", "ann"):
        zip_tree(zips / f"{kind}.zip", folders, only=f"{kind}/")
    return folders, zips


def test_own_dataset_reads_zips_like_folders(trees: tuple[Path, Path]):
    folders, zips = trees
    from_folders, from_zips = MyData(folders), MyData(zips)
    assert len(from_folders) == len(from_zips) == 2
    for i in range(2):
        a, b = from_folders[i], from_zips[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert set(np.unique(from_zips[0]["mask"].numpy())) <= {*range(19), 255}


def test_own_dataset_errors(trees: tuple[Path, Path], tmp_path: Path):
    folders, zips = trees
    shutil.copy(zips / "ann.zip", zips / "img.zip")  # the labels under the images' name
    with pytest.raises(ArchiveError, match=r"img\.zip holds ann/, not img/.*Rename it to ann\.zip"):
        MyData(zips)
    with pytest.raises(DatasetLayoutError, match=r"img does not exist, and .* holds no img\.zip"):
        MyData(tmp_path / "folders" / "ann")
