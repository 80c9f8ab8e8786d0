"""Tests for lightning_uda/data/bdd100k.py on tiny trees in BDD100K's two release layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_uda.data.bdd100k import BDD100K
from lightning_uda.data.files import DatasetLayoutError, UnknownLabelError
from tests.helpers.trees import frame, write_jpg, write_png

NAME = "7d2f7975-e0c1c5a7"  # BDD100K frame names are hex ids


def test_current_layout_reads_train_ids_as_they_are(tmp_path: Path, fixtures_root: Path):
    rgb, _, train_ids = frame(fixtures_root)
    root = tmp_path / "bdd100k"
    write_jpg(root / f"images/10k/val/{NAME}.jpg", rgb)
    write_png(root / f"labels/sem_seg/masks/val/{NAME}.png", train_ids)
    write_png(root / f"labels/sem_seg/colormaps/val/{NAME}.png", np.dstack([train_ids] * 3))
    ds = BDD100K(root, split="val")
    assert ds.release == "current" and len(ds) == 1
    # the fixture's labelTrainIds file is Cityscapes' own conversion: 0..18 and 255 unchanged
    assert (ds[0]["mask"].numpy() == train_ids).all()
    assert ds[0]["image"].shape == (3, 128, 256)


def test_2018_layout(tmp_path: Path, fixtures_root: Path):
    rgb, _, train_ids = frame(fixtures_root)
    root = tmp_path / "bdd"
    write_jpg(root / f"seg/images/train/{NAME}.jpg", rgb)
    write_png(root / f"seg/labels/train/{NAME}_train_id.png", train_ids)
    ds = BDD100K(root, split="train")
    assert ds.release == "2018" and (ds[0]["mask"].numpy() == train_ids).all()


def test_label_ids_instead_of_train_ids_are_an_error(tmp_path: Path, fixtures_root: Path):
    rgb, ids, _ = frame(fixtures_root)
    root = tmp_path / "bdd100k"
    write_jpg(root / f"images/10k/val/{NAME}.jpg", rgb)
    write_png(root / f"labels/sem_seg/masks/val/{NAME}.png", ids)  # Cityscapes label ids
    with pytest.raises(UnknownLabelError, match=f"{NAME}.png"):
        BDD100K(root, split="val")[0]


def test_missing_images_and_test_labels(tmp_path: Path):
    root = tmp_path / "bdd100k"
    root.mkdir()
    with pytest.raises(DatasetLayoutError, match=r"images/10k/val.*bdd100k_images_10k.zip"):
        BDD100K(root, split="val")
    with pytest.raises(ValueError, match="return_mask=False"):
        BDD100K(root, split="test")
