"""Tests for lightning_uda/data/dark_zurich.py on tiny trees in Dark Zurich's official layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_uda.data.dark_zurich import DarkZurich
from lightning_uda.data.files import DatasetLayoutError
from lightning_uda.normalization import IMAGENET
from tests.helpers.trees import dark_zurich_tree, frame, to_train_ids

PAIRS = (
    "night/GOPR0351/GOPR0351_frame_000150,day/GOPR0350/GOPR0350_frame_000261\n"
    "train/night/GOPR0351/GOPR0351_frame_000151_rgb_anon.png,"
    "train/day/GOPR0350/GOPR0350_frame_000260_rgb_anon.png\n"
)


@pytest.fixture
def data(fixtures_root: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb, ids, _ = frame(fixtures_root)
    return rgb, ids


def test_val_is_labelled_night(tmp_path: Path, data):
    rgb, ids = data
    root = dark_zurich_tree(tmp_path / "dz", rgb, ids)
    val = DarkZurich(root, split="val")
    assert len(val) == 2 and val.return_mask
    assert val.samples[0][1].name == "GOPR0356_000000_gt_labelIds.png"
    assert (val[1]["mask"].numpy() == to_train_ids(ids)).all()


def test_train_times(tmp_path: Path, data):
    root = dark_zurich_tree(tmp_path / "dz", *data)
    assert len(DarkZurich(root)) == 2  # night only, unlabelled
    everything = DarkZurich(root, times="all")
    assert len(everything) == 5
    assert {p.parts[-3] for p, _ in everything.samples} == {"day", "night", "twilight"}
    with pytest.raises(ValueError, match=r"'dawn'.*\['day', 'night', 'twilight'\]"):
        DarkZurich(root, times=["night", "dawn"])
    with pytest.raises(ValueError, match="no labels"):
        DarkZurich(root, split="test", return_mask=True)


def test_separate_archive_folders(tmp_path: Path, data):
    merged = dark_zurich_tree(tmp_path / "merged", *data)
    root = tmp_path / "dz"
    (root / "Dark_Zurich_val_anon").mkdir(parents=True)
    for folder in ("rgb_anon", "gt"):
        shutil.copytree(merged / folder, root / "Dark_Zurich_val_anon" / folder)
    assert len(DarkZurich(root, split="val")) == 2


def test_reference_pairs(tmp_path: Path, data):
    rgb, ids = data
    root = dark_zurich_tree(tmp_path / "dz", rgb, ids)
    (root / "zurich_dn_pair_train.csv").write_text(PAIRS)
    ds = DarkZurich(root, with_reference=True, transform=None)
    assert [p.name for p in ds.references] == [
        "GOPR0350_frame_000261_rgb_anon.png",
        "GOPR0350_frame_000260_rgb_anon.png",
    ]
    item = ds[0]
    expected = torch.from_numpy(IMAGENET.normalize_uint8(rgb[::-1].copy()).transpose(2, 0, 1))
    assert torch.allclose(item["reference"], expected.float(), atol=1e-5)


def test_reference_images_missing(tmp_path: Path, data):
    root = dark_zurich_tree(tmp_path / "dz", *data, day=False)
    (root / "zurich_dn_pair_train.csv").write_text(PAIRS)
    missing = r"reference \(day\) images are missing.*train/day"
    with pytest.raises(DatasetLayoutError, match=missing):
        DarkZurich(root, with_reference=True)


def test_reference_list_missing_or_incomplete(tmp_path: Path, data):
    root = dark_zurich_tree(tmp_path / "dz", *data)
    with pytest.raises(DatasetLayoutError, match="zurich_dn_pair_train.csv does not exist"):
        DarkZurich(root, with_reference=True)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(PAIRS.splitlines()[0] + "\n")
    with pytest.raises(DatasetLayoutError, match="1 night frames have no pair.*000151"):
        DarkZurich(root, with_reference=True, reference_pairs=pairs)
