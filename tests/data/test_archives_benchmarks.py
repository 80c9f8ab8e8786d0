"""ACDC, Dark Zurich, BDD100K and Mapillary Vistas read from their official zip archives
(lightning_uda/data/{acdc,dark_zurich,bdd100k,mapillary}.py): the tiny trees of
tests/helpers/trees.py, packed with the member names of the official downloads, give the same
items as the extracted trees, and a damaged or incomplete archive is an error naming it."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lightning_uda.data.acdc import ACDC
from lightning_uda.data.archives import ArchiveError, split_member_path
from lightning_uda.data.bdd100k import BDD100K
from lightning_uda.data.dark_zurich import DarkZurich
from lightning_uda.data.files import DatasetLayoutError
from lightning_uda.data.mapillary import MAPILLARY_V12_CLASSES, MapillaryVistas
from tests.helpers.archives import zip_tree
from tests.helpers.trees import (
    acdc_tree,
    dark_zurich_tree,
    frame,
    to_train_ids,
    write_jpg,
    write_png,
)

PAIRS = (
    "night/GOPR0351/GOPR0351_frame_000150,day/GOPR0350/GOPR0350_frame_000261\n"
    "night/GOPR0351/GOPR0351_frame_000151,day/GOPR0350/GOPR0350_frame_000260\n"
)
BDD_NAMES = ("7d2f7975-e0c1c5a7", "7d4a9094-0455564b")  # BDD100K frame names are hex ids
MAPILLARY_NAMES = ("__CRyFzoDOXn6unQ6a3DnQ", "_1Gn_xkw7sa_i9GU4mkxxQ")  # image keys


@pytest.fixture
def data(fixtures_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return frame(fixtures_root)  # rgb, label ids, train ids of the real Cityscapes frame


def zip_prefixes(archive: Path, folder: Path, prefixes: tuple[str, ...], under: str = "") -> Path:
    """Pack the files of ``folder`` whose relative path starts with one of ``prefixes``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel.startswith(prefixes):
                handle.write(path, under + rel)
    return archive


def assert_same_items(folder_ds: Dataset, zip_ds: Dataset, archives: set[str]) -> None:
    """Same file names in the same order, equal tensors, and every file of
    ``zip_ds`` read from one of ``archives`` (names)."""
    assert len(folder_ds) == len(zip_ds) > 0
    for (image, mask), (zipped_image, zipped_mask) in zip(
        folder_ds.samples, zip_ds.samples, strict=True
    ):
        assert image.name == zipped_image.name
        assert mask is None or mask.name == zipped_mask.name
        for path in (zipped_image, zipped_mask):
            if path is not None:
                member = split_member_path(path)
                assert member is not None and member[0].name in archives, path
    for i in range(len(folder_ds)):
        a, b = folder_ds[i], zip_ds[i]
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (i, key)


# ------------------------------------------------------------------------------ ACDC
def test_acdc_from_official_zips(tmp_path: Path, data):
    rgb, ids, _ = data
    folders = acdc_tree(tmp_path / "folders", rgb, ids)
    zips = tmp_path / "zips"
    zip_tree(zips / "rgb_anon_trainvaltest.zip", folders, only="rgb_anon/")
    zip_tree(zips / "gt_trainval.zip", folders, only="gt/")
    names = {"rgb_anon_trainvaltest.zip", "gt_trainval.zip"}
    zipped = ACDC(zips, split="val")
    assert_same_items(ACDC(folders, split="val"), zipped, names)
    assert [zipped.condition_of(i) for i in range(4)] == ["fog", "night", "rain", "snow"]
    assert (zipped[0]["mask"].numpy() == to_train_ids(ids)).all()
    # a DataLoader worker started with spawn gets a pickled copy: paths only, no open handle
    assert torch.equal(pickle.loads(pickle.dumps(zipped))[2]["mask"], zipped[2]["mask"])
    # test images without labels, one condition; gt_trainval.zip is not needed for them
    (zips / "gt_trainval.zip").unlink()
    test = ACDC(zips, split="test", conditions="rain", return_mask=False)
    assert_same_items(
        ACDC(folders, split="test", conditions="rain", return_mask=False), test, names
    )


def test_acdc_labels_zip_missing_a_label(tmp_path: Path, data):
    rgb, ids, _ = data
    folders = acdc_tree(tmp_path / "folders", rgb, ids, conditions=("snow",), frames=2)
    zips = tmp_path / "zips"
    zip_tree(zips / "rgb_anon_trainvaltest.zip", folders, only="rgb_anon/")
    (folders / "gt/snow/val/GOPR0475/GOPR0475_frame_000041_gt_labelIds.png").unlink()
    zip_tree(zips / "gt_trainval.zip", folders, only="gt/")
    with pytest.raises(
        ArchiveError,
        match=r"GOPR0475_frame_000041_rgb_anon.png.*1 of the 2 images from "
        r"rgb_anon_trainvaltest.zip have no label: gt_trainval.zip is incomplete",
    ):
        ACDC(zips, split="val", conditions="snow")


# ----------------------------------------------------------------------- Dark Zurich
def _dark_zurich_zips(folders: Path, zips: Path, with_labels: bool = True) -> None:
    zip_prefixes(zips / "Dark_Zurich_train_anon.zip", folders, ("rgb_anon/train/",))
    val = ("rgb_anon/val/", "gt/val/") if with_labels else ("rgb_anon/val/",)
    zip_prefixes(zips / "Dark_Zurich_val_anon.zip", folders, val)
    zip_prefixes(zips / "Dark_Zurich_test_anon_withoutGt.zip", folders, ("rgb_anon/test/",))


def test_dark_zurich_from_official_zips(tmp_path: Path, data):
    rgb, ids, _ = data
    folders = dark_zurich_tree(tmp_path / "folders", rgb, ids)
    zips = tmp_path / "zips"
    _dark_zurich_zips(folders, zips)
    names = {"Dark_Zurich_train_anon.zip", "Dark_Zurich_val_anon.zip"}
    assert_same_items(DarkZurich(folders, split="val"), DarkZurich(zips, split="val"), names)
    train = DarkZurich(zips, split="train", times="all")
    assert_same_items(DarkZurich(folders, split="train", times="all"), train, names)
    assert len(train) == 5  # 2 day + 2 night + 1 twilight
    test = DarkZurich(zips, split="test")
    assert split_member_path(test.samples[0][0])[0].name == "Dark_Zurich_test_anon_withoutGt.zip"
    # day references read from the train archive, paired by the list on disk
    (tmp_path / "pairs.csv").write_text(PAIRS)
    by_folder, by_zip = (
        DarkZurich(root, with_reference=True, reference_pairs=tmp_path / "pairs.csv")
        for root in (folders, zips)
    )
    assert [p.name for p in by_zip.references] == [p.name for p in by_folder.references]
    assert torch.equal(by_zip[1]["reference"], by_folder[1]["reference"])
    assert not torch.equal(by_zip[1]["reference"], by_zip[1]["image"])  # the flipped day frame


def test_dark_zurich_val_zip_without_labels(tmp_path: Path, data):
    rgb, ids, _ = data
    folders = dark_zurich_tree(tmp_path / "folders", rgb, ids)
    zips = tmp_path / "zips"
    _dark_zurich_zips(folders, zips, with_labels=False)
    with pytest.raises(ArchiveError, match=r"Dark_Zurich_val_anon.zip holds no gt/val/ folder"):
        DarkZurich(zips, split="val")
    assert len(DarkZurich(zips, split="val", return_mask=False)) == 2  # images alone are fine


# --------------------------------------------------------------------------- BDD100K
def _bdd_tree(root: Path, rgb: np.ndarray, train_ids: np.ndarray) -> Path:
    for i, name in enumerate(BDD_NAMES):
        write_jpg(root / f"images/10k/val/{name}.jpg", rgb[:, ::-1] if i else rgb)
        write_png(root / f"labels/sem_seg/masks/val/{name}.png", train_ids)
        write_png(root / f"labels/sem_seg/colormaps/val/{name}.png", np.dstack([train_ids] * 3))
    return root


def test_bdd100k_from_official_zips(tmp_path: Path, data):
    rgb, _, train_ids = data
    folders = _bdd_tree(tmp_path / "folders", rgb, train_ids)
    zips = tmp_path / "zips"
    # both archives hold a top-level bdd100k/ folder
    zip_tree(zips / "bdd100k_images_10k.zip", folders, under="bdd100k/", only="images/")
    zip_tree(
        zips / "bdd100k_sem_seg_labels_trainval.zip", folders, under="bdd100k/", only="labels/"
    )
    zipped = BDD100K(zips, split="val")
    names = {"bdd100k_images_10k.zip", "bdd100k_sem_seg_labels_trainval.zip"}
    assert_same_items(BDD100K(folders, split="val"), zipped, names)
    assert zipped.release == "current"
    assert split_member_path(zipped.samples[0][1])[1] == (
        f"bdd100k/labels/sem_seg/masks/val/{BDD_NAMES[0]}.png"
    )


def test_bdd100k_labels_zip_missing_a_mask(tmp_path: Path, data):
    rgb, _, train_ids = data
    folders = _bdd_tree(tmp_path / "folders", rgb, train_ids)
    zips = tmp_path / "zips"
    zip_tree(zips / "bdd100k_images_10k.zip", folders, under="bdd100k/", only="images/")
    (folders / f"labels/sem_seg/masks/val/{BDD_NAMES[1]}.png").unlink()
    zip_tree(
        zips / "bdd100k_sem_seg_labels_trainval.zip", folders, under="bdd100k/", only="labels/"
    )
    with pytest.raises(
        ArchiveError,
        match=rf"{BDD_NAMES[1]}.jpg.*1 of the 2 images from bdd100k_images_10k.zip have no "
        "label: bdd100k_sem_seg_labels_trainval.zip is incomplete",
    ):
        BDD100K(zips, split="val")


# -------------------------------------------------------------------------- Mapillary
def _mapillary_tree(root: Path, rgb: np.ndarray, ids: np.ndarray, labels: str) -> Path:
    # Cityscapes label ids 0..33 are valid v1.2 indices (0..65): real label content
    for i, name in enumerate(MAPILLARY_NAMES):
        write_jpg(root / f"validation/images/{name}.jpg", rgb[:, ::-1] if i else rgb)
        write_png(root / f"validation/{labels}/{name}.png", ids)
    config = {"labels": [{"name": name} for name in MAPILLARY_V12_CLASSES]}
    (root / "config_v1.2.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("archive", "labels"),
    [
        ("mapillary-vistas-dataset_public_v1.2.zip", "labels"),
        ("mapillary-vistas-dataset_public_v2.0.zip", "v1.2/labels"),
    ],
)
def test_mapillary_from_official_zip(tmp_path: Path, data, archive: str, labels: str):
    rgb, ids, _ = data
    folders = _mapillary_tree(tmp_path / "folders", rgb, ids, labels)
    zips = tmp_path / "zips"
    zip_tree(zips / archive, folders)  # the tree at the archive's top
    zipped = MapillaryVistas(zips, split="val")
    assert_same_items(MapillaryVistas(folders, split="val"), zipped, {archive})
    assert split_member_path(zipped.samples[0][1])[1] == (
        f"validation/{labels}/{min(MAPILLARY_NAMES)}.png"  # samples are sorted
    )


def test_mapillary_zip_with_another_versions_config(tmp_path: Path, data):
    rgb, ids, _ = data
    folders = _mapillary_tree(tmp_path / "folders", rgb, ids, "labels")
    config = {"labels": [{"name": f"class-{i}"} for i in range(124)]}
    (folders / "config_v1.2.json").write_text(json.dumps(config))
    zips = tmp_path / "zips"
    zip_tree(zips / "mapillary-vistas-dataset_public_v1.2.zip", folders)
    with pytest.raises(
        DatasetLayoutError,
        match=r"mapillary-vistas-dataset_public_v1.2.zip/config_v1.2.json lists 124 classes",
    ):
        MapillaryVistas(zips, split="val")
