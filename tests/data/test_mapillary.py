"""Tests for lightning_uda/data/mapillary.py: the v1.2 table and loading in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_uda.data.files import DatasetLayoutError, UnknownLabelError
from lightning_uda.data.mapillary import (
    MAPILLARY_V12_CLASSES,
    MAPILLARY_V12_TO_CITYSCAPES,
    MapillaryVistas,
)
from tests.helpers.trees import frame, to_train_ids, write_jpg, write_png

NAME = "__CRyFzoDOXn6unQ6a3DnQ"  # Mapillary image keys
# Published facts of config_v1.2.json: 66 labels, some by index.
V12_INDEX = {
    "animal--bird": 0, "construction--flat--road": 13, "construction--flat--sidewalk": 15,
    "human--person": 19, "nature--sky": 27, "object--vehicle--car": 55,
    "object--vehicle--on-rails": 58, "void--ego-vehicle": 64, "void--unlabeled": 65,
}  # fmt: skip
# Cityscapes label id → a Mapillary v1.2 class of the same meaning, by name.
CITYSCAPES_ID_TO_MAPILLARY_NAME = {
    7: "construction--flat--road", 8: "construction--flat--sidewalk",
    11: "construction--structure--building", 12: "construction--barrier--wall",
    13: "construction--barrier--fence", 17: "object--support--pole",
    19: "object--traffic-light", 20: "object--traffic-sign--front", 21: "nature--vegetation",
    22: "nature--terrain", 23: "nature--sky", 24: "human--person", 25: "human--rider--bicyclist",
    26: "object--vehicle--car", 27: "object--vehicle--truck", 28: "object--vehicle--bus",
    31: "object--vehicle--on-rails", 32: "object--vehicle--motorcycle",
    33: "object--vehicle--bicycle",
}  # fmt: skip


def _as_mapillary(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, V12_INDEX["void--unlabeled"], dtype=np.uint8)
    for cityscapes_id, name in CITYSCAPES_ID_TO_MAPILLARY_NAME.items():
        out[ids == cityscapes_id] = MAPILLARY_V12_CLASSES.index(name)
    return out


def test_v12_class_list_and_mapping_facts():
    assert len(MAPILLARY_V12_CLASSES) == 66 and len(set(MAPILLARY_V12_CLASSES)) == 66
    for name, index in V12_INDEX.items():
        assert MAPILLARY_V12_CLASSES[index] == name
    table = MAPILLARY_V12_TO_CITYSCAPES
    assert table[13] == 0 and table[15] == 1 and table[58] == 16 and table[55] == 13
    assert table[65] == 255 and table[0] == 255 and table[64] == 255  # void / not evaluated
    assert table[20] == table[21] == table[22] == 12  # riders
    # every Cityscapes class is reached, and nothing but train ids and void
    assert set(table.values()) == {*range(19), 255}


def _tree(root: Path, rgb: np.ndarray, labels: np.ndarray, labels_dir: str) -> Path:
    write_jpg(root / f"validation/images/{NAME}.jpg", rgb)
    write_png(root / f"validation/{labels_dir}/{NAME}.png", labels)
    return root


@pytest.mark.parametrize("labels_dir", ["labels", "v1.2/labels"])
def test_loads_v12_labels_as_cityscapes_train_ids(tmp_path: Path, fixtures_root: Path, labels_dir):
    rgb, ids, _ = frame(fixtures_root)
    root = _tree(tmp_path / "mapillary", rgb, _as_mapillary(ids), labels_dir)
    if labels_dir == "labels":  # the v1.2 archive's config, checked when present
        labels = [{"name": n} for n in MAPILLARY_V12_CLASSES]
        (root / "config_v1.2.json").write_text(json.dumps({"labels": labels}))
    ds = MapillaryVistas(root, split="val")
    assert (ds[0]["mask"].numpy() == to_train_ids(ids)).all()


def test_v2_labels_are_refused(tmp_path: Path, fixtures_root: Path):
    rgb, ids, _ = frame(fixtures_root)
    root = _tree(tmp_path / "m", rgb, _as_mapillary(ids), "v2.0/labels")
    with pytest.raises(DatasetLayoutError, match=r"only v2.0 labels.*v1.2/labels"):
        MapillaryVistas(root, split="val")
    v2 = _as_mapillary(ids)
    v2[:4] = 123  # v2.0's void--unlabeled index
    root = _tree(tmp_path / "m2", rgb, v2, "labels")
    with pytest.raises(UnknownLabelError, match=rf"{NAME}.png holds values \[123\].*v2.0"):
        MapillaryVistas(root, split="val")[0]


def test_foreign_config_is_refused(tmp_path: Path, fixtures_root: Path):
    rgb, ids, _ = frame(fixtures_root)
    root = _tree(tmp_path / "m", rgb, _as_mapillary(ids), "labels")
    (root / "config_v1.2.json").write_text(json.dumps({"labels": [{"name": "road"}] * 124}))
    with pytest.raises(DatasetLayoutError, match="124 classes that are not the 66"):
        MapillaryVistas(root, split="val")
