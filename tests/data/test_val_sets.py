"""Tests for lightning_uda/data/val_sets.py and UDADataModule's several validation sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Subset

from lightning_uda.data import UDADataModule
from lightning_uda.data.acdc import ACDC
from lightning_uda.data.val_sets import default_val_name
from tests.helpers.methods import ToyScenes
from tests.helpers.trees import acdc_tree, frame


def _dm(val, **kwargs) -> UDADataModule:
    return UDADataModule(
        source=ToyScenes(4, seed=1), target=ToyScenes(4, seed=2), val=val, num_workers=0, **kwargs
    )


def test_one_dataset_stays_one_unnamed_loader():
    dm = _dm(ToyScenes(3, seed=3))
    assert dm.val_names is None and isinstance(dm.val_dataloader(), DataLoader)
    assert dm.val_primary == "val"


def test_mapping_gives_named_loaders_in_order():
    a, b = ToyScenes(3, seed=3), ToyScenes(5, seed=4)
    dm = _dm({"night": a, "fog": b})
    assert dm.val_names == ["night", "fog"] and dm.val_primary == "night" and dm.val is a
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [3, 5]
    dm = _dm({"night": a, "fog": b}, val_primary="fog")
    assert dm.val is b and dm.val_names == ["night", "fog"]


def test_list_with_names_and_default_names(tmp_path: Path, fixtures_root: Path):
    dm = _dm([ToyScenes(3, seed=3), ToyScenes(2, seed=4)], val_names=["x", "y"])
    assert dm.val_names == ["x", "y"]
    rgb, ids, _ = frame(fixtures_root)
    root = acdc_tree(tmp_path / "acdc", rgb, ids)
    assert default_val_name(ACDC(root, "val")) == "acdc"
    assert default_val_name(Subset(ACDC(root, "val", conditions="night"), [0])) == "acdc_night"


def test_two_sets_of_one_name_are_an_error(tmp_path: Path, fixtures_root: Path):
    rgb, ids, _ = frame(fixtures_root)
    root = acdc_tree(tmp_path / "acdc", rgb, ids)
    val, train = ACDC(root, "val"), ACDC(root, "train")  # e.g. a copy-paste slip
    named_twice = rf"two validation sets are named 'acdc'.*{root}.*val_names"
    with pytest.raises(ValueError, match=named_twice):
        UDADataModule(source=val, target=val, val=[val, train], num_workers=0)
    with pytest.raises(ValueError, match="named 'a'"):
        _dm([ToyScenes(2, seed=3), ToyScenes(2, seed=4)], val_names=["a", "a"])


def test_bad_names_and_primary():
    with pytest.raises(ValueError, match=r"val_primary 'c' is not.*\['a', 'b'\]"):
        _dm({"a": ToyScenes(2, seed=3), "b": ToyScenes(2, seed=4)}, val_primary="c")
    with pytest.raises(ValueError, match="without '/'"):
        _dm({"a/b": ToyScenes(2, seed=3)})
    with pytest.raises(ValueError, match="one name per set"):
        _dm([ToyScenes(2, seed=3)], val_names=["a", "b"])
    with pytest.raises(ValueError, match="val_names must be None"):
        _dm({"a": ToyScenes(2, seed=3)}, val_names=["a"])
