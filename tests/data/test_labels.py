"""Tests for lightning_uda/data/labels.py: tables checked against independent copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_KNOWN_IDS,
    CITYSCAPES_PALETTE,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    SYNTHIA_KNOWN_IDS,
    TRAIN_ID_TO_CITYSCAPES_ID,
    colorize,
)

# The valid-id → train-id dict as written in the DACS/AdvEnt GTA5 loaders (independent of the
# cityscapesScripts-style table in labels.py); every other id is void.
REFERENCE_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

# DAFormer tools/convert_datasets/synthia.py / DACS data/synthia_dataset.py.
REFERENCE_SYNTHIA = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip

CITYSCAPES_MINI_GT = "cityscapes_mini/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_"


def test_cityscapes_classes_in_train_id_order():
    assert CITYSCAPES_CLASSES == [
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
        "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip


def test_id_to_train_id_matches_reference_for_every_value():
    assert CITYSCAPES_ID_TO_TRAIN_ID.shape == (256,)
    assert CITYSCAPES_ID_TO_TRAIN_ID.dtype == np.uint8
    for raw in range(256):
        assert CITYSCAPES_ID_TO_TRAIN_ID[raw] == REFERENCE_ID_TO_TRAIN_ID.get(raw, 255), raw


def test_known_ids_are_0_to_33_and_license_plate():
    assert np.flatnonzero(CITYSCAPES_KNOWN_IDS).tolist() == [*range(34), 255]


def test_inverse_table_round_trips_train_ids():
    train_ids = np.arange(19, dtype=np.uint8)
    label_ids = TRAIN_ID_TO_CITYSCAPES_ID[train_ids]
    assert label_ids.tolist() == sorted(REFERENCE_ID_TO_TRAIN_ID, key=REFERENCE_ID_TO_TRAIN_ID.get)
    assert (CITYSCAPES_ID_TO_TRAIN_ID[label_ids] == train_ids).all()
    assert TRAIN_ID_TO_CITYSCAPES_ID[255] == 0  # ignore is exported as "unlabeled"


def test_palette():
    assert CITYSCAPES_PALETTE.shape == (19, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    assert CITYSCAPES_PALETTE[0].tolist() == [128, 64, 128]  # road
    assert CITYSCAPES_PALETTE[10].tolist() == [70, 130, 180]  # sky
    assert CITYSCAPES_PALETTE[18].tolist() == [119, 11, 32]  # bicycle


def test_mapping_on_every_pixel_of_the_fixture(fixtures_root):
    label_ids = np.array(Image.open(fixtures_root / (CITYSCAPES_MINI_GT + "labelIds.png")))
    shipped = np.array(Image.open(fixtures_root / (CITYSCAPES_MINI_GT + "labelTrainIds.png")))
    mapped = CITYSCAPES_ID_TO_TRAIN_ID[label_ids]
    expected = np.vectorize(lambda v: REFERENCE_ID_TO_TRAIN_ID.get(int(v), 255))(label_ids)
    assert (mapped == expected).all()
    # The two files were downscaled separately: they disagree on 77 boundary pixels (README).
    assert (mapped != shipped).sum() <= 77
    assert set(np.unique(mapped)) <= {*range(19), 255}


def test_synthia_table_matches_reference():
    for raw in range(256):
        assert SYNTHIA_ID_TO_TRAIN_ID[raw] == REFERENCE_SYNTHIA.get(raw, 255), raw
    # void (0), parking-slot (13), road-work (14), lanemarking (22) are known but ignored.
    for void in (0, 13, 14, 22):
        assert SYNTHIA_KNOWN_IDS[void] and SYNTHIA_ID_TO_TRAIN_ID[void] == 255
    assert np.flatnonzero(SYNTHIA_KNOWN_IDS).tolist() == list(range(23))


def test_synthia_class_subsets():
    names16 = [CITYSCAPES_CLASSES[i] for i in SYNTHIA_16_CLASSES]
    assert len(SYNTHIA_16_CLASSES) == 16
    assert set(CITYSCAPES_CLASSES) - set(names16) == {"terrain", "truck", "train"}
    names13 = [CITYSCAPES_CLASSES[i] for i in SYNTHIA_13_CLASSES]
    assert len(SYNTHIA_13_CLASSES) == 13
    assert set(names16) - set(names13) == {"wall", "fence", "pole"}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_colorize(as_tensor):
    mask = np.array([[0, 13], [255, 42]])
    if as_tensor:
        mask = torch.from_numpy(mask)
    image = colorize(mask)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [128, 64, 128]  # road
    assert image[0, 1].tolist() == [0, 0, 142]  # car
    assert image[1, 0].tolist() == [0, 0, 0]  # ignore
    assert image[1, 1].tolist() == [0, 0, 0]  # out of range


def test_colorize_custom_palette_and_bad_shape():
    image = colorize(np.array([[1, 0]]), palette=np.array([[1, 2, 3], [4, 5, 6]]))
    assert image.tolist() == [[[4, 5, 6], [1, 2, 3]]]
    with pytest.raises(ValueError, match="H×W"):
        colorize(np.zeros((1, 2, 2), dtype=np.int64))
