"""Tests for lightning_uda/data/acdc.py on a tiny tree in ACDC's official layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_uda.data.acdc import ACDC, ACDC_CONDITIONS
from lightning_uda.data.files import DatasetLayoutError
from tests.helpers.trees import acdc_tree, frame, to_train_ids


@pytest.fixture
def data(fixtures_root: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb, ids, _ = frame(fixtures_root)
    return rgb, ids


def test_conditions_are_acdcs_four():
    assert ACDC_CONDITIONS == ("fog", "night", "rain", "snow")  # ACDC's folder names


def test_all_conditions_label_ids_mapped(tmp_path: Path, data):
    rgb, ids = data
    root = acdc_tree(tmp_path / "acdc", rgb, ids, frames=2)
    val = ACDC(root, split="val")
    assert len(val) == 8  # 4 conditions × 2 frames; train_ref/ and other splits not read
    assert [val.condition_of(i) for i in range(len(val))] == [
        c for c in ACDC_CONDITIONS for _ in range(2)
    ]
    image, label = val.samples[3]
    assert image.name == "GOPR0475_frame_000041_rgb_anon.png"
    assert label.name == "GOPR0475_frame_000041_gt_labelIds.png"  # not _labelTrainIds/_Color
    item = val[0]
    assert item["image"].shape == (3, 128, 256)
    assert (item["mask"].numpy() == to_train_ids(ids)).all()


def test_one_condition_and_unlabelled_train(tmp_path: Path, data):
    rgb, ids = data
    root = acdc_tree(tmp_path / "acdc", rgb, ids, conditions=("night",))
    shutil.rmtree(root / "gt")
    train = ACDC(root, split="train", conditions="night", return_mask=False)
    assert len(train) == 1 and set(train[0]) == {"image"}
    test = ACDC(root, split="test", conditions=["night"], return_mask=False)
    assert test.samples[0][0].parts[-4:-2] == ("night", "test")


def test_wrong_condition_names_the_known_ones(tmp_path: Path, data):
    root = acdc_tree(tmp_path / "acdc", *data, conditions=("fog",))
    with pytest.raises(ValueError, match=r"'nigth'.*\['fog', 'night', 'rain', 'snow'\]"):
        ACDC(root, split="val", conditions=["fog", "nigth"])


def test_missing_condition_folder_names_path_and_fix(tmp_path: Path, data):
    root = acdc_tree(tmp_path / "acdc", *data, conditions=("fog",))
    with pytest.raises(DatasetLayoutError, match=r"rgb_anon/night/val does not exist.*conditions"):
        ACDC(root, split="val")  # "all" but only fog was unpacked


def test_test_split_has_no_labels(tmp_path: Path, data):
    root = acdc_tree(tmp_path / "acdc", *data, conditions=("fog",))
    with pytest.raises(ValueError, match="return_mask=False"):
        ACDC(root, split="test", conditions="fog")


def test_image_without_label_is_named(tmp_path: Path, data):
    root = acdc_tree(tmp_path / "acdc", *data, conditions=("snow",))
    (root / "gt/snow/val/GOPR0475/GOPR0475_frame_000040_gt_labelIds.png").unlink()
    with pytest.raises(DatasetLayoutError, match="GOPR0475_frame_000040_rgb_anon.png"):
        ACDC(root, split="val", conditions="snow")
