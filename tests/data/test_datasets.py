"""Tests for lightning_uda/data/datasets.py on real-format files built from the shared fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.data.datasets import GTA5, SYNTHIA, Cityscapes
from lightning_uda.data.files import DatasetLayoutError, UnknownLabelError
from lightning_uda.data.labels import CITYSCAPES_CLASSES, SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES
from lightning_uda.data.transforms import preset
from lightning_uda.normalization import CAFFE, IMAGENET

FRAME = "frankfurt_000000_000294"
# Independent of labels.py: the valid-id dict of the reference loaders (DACS/AdvEnt).
ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# DAFormer tools/convert_datasets/synthia.py (16 terrain, 18 truck, 20 train never occur).
SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
                    17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}  # fmt: skip
SYNTHIA_OCCURRING_IDS = [i for i in range(23) if i not in (16, 18, 20)]
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
# The Caffe DeepLab-v2 mean pixel as the reference code writes it (B, G, R; 0-255).
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float64)


def _map(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.int64)
    for k, v in table.items():
        out[raw == k] = v
    return out


@pytest.fixture
def mini(fixtures_root: Path) -> Path:
    return fixtures_root / "cityscapes_mini"


@pytest.fixture
def city_root(mini: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    shutil.copytree(mini, root)
    return root


def _rgb(mini: Path) -> np.ndarray:
    return np.array(Image.open(mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))


def _label_ids(mini: Path) -> np.ndarray:
    return np.array(Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"))


def _denormalise(image: torch.Tensor) -> np.ndarray:
    return ((image * STD + MEAN) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)


# ---------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_item_contract_and_mapping(city_root: Path, mini: Path):
    ds = Cityscapes(city_root, split="val")
    assert len(ds) == 1 and ds.classes == CITYSCAPES_CLASSES and ds.ignore_index == 255
    assert ds.class_subsets == {"mIoU": list(range(19))} and ds.palette.shape == (19, 3)
    item = ds[0]
    assert set(item) == {"image", "mask"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 128, 256)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (128, 256)
    assert (item["mask"].numpy() == _map(_label_ids(mini), ID_TO_TRAIN)).all()
    # RGB order (Pillow reads RGB) and ImageNet normalisation.
    assert np.abs(_denormalise(item["image"]).astype(int) - _rgb(mini)).max() <= 1


def test_cityscapes_unlabelled_needs_no_gtfine(city_root: Path):
    shutil.rmtree(city_root / "gtFine")
    ds = Cityscapes(city_root, split="val", return_mask=False)
    assert set(ds[0]) == {"image"}
    with pytest.raises(DatasetLayoutError, match="gtFine"):
        Cityscapes(city_root, split="val")


def test_meta_and_preset_transform(city_root: Path, mini: Path):
    ds = Cityscapes(city_root, split="val", transform="cityscapes_val", return_meta=True)
    item = ds[0]
    # The "full" protocol: the network input is 1024×512, the label keeps its own resolution.
    assert item["image"].shape == (3, 512, 1024) and item["mask"].shape == (128, 256)
    assert (item["mask"].numpy() == _map(_label_ids(mini), ID_TO_TRAIN)).all()
    assert item["path"].endswith(f"{FRAME}_leftImg8bit.png")
    assert item["orig_size"].tolist() == [128, 256]
    assert "path" in Cityscapes(city_root, split="val").with_meta()[0]
    dacs = Cityscapes(city_root, split="val", transform="cityscapes_val_dacs")[0]
    assert dacs["image"].shape == (3, 512, 1024) and dacs["mask"].shape == (512, 1024)
    assert torch.equal(dacs["image"], item["image"])
    # Nearest upscaling by exactly 4: every label pixel becomes a 4×4 block.
    assert torch.equal(dacs["mask"][::4, ::4], item["mask"])


def test_cityscapes_missing_root_shows_tree(tmp_path: Path):
    with pytest.raises(DatasetLayoutError, match=r"does not exist[\s\S]*leftImg8bit/\{split\}"):
        Cityscapes(tmp_path / "nowhere")


def test_cityscapes_unknown_split_lists_splits(city_root: Path):
    with pytest.raises(DatasetLayoutError, match=r"'train' not found.*\['val'\]"):
        Cityscapes(city_root, split="train")


def test_empty_split_shows_glob(city_root: Path):
    (city_root / "leftImg8bit" / "test" / "bonn").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit/test/\*\*/\*_leftImg8bit"):
        Cityscapes(city_root, split="test", return_mask=False)


def test_images_without_labels_are_named(city_root: Path):
    images = city_root / "leftImg8bit/val/frankfurt"
    for i in range(7):
        shutil.copy(images / f"{FRAME}_leftImg8bit.png", images / f"extra_{i}_leftImg8bit.png")
    with pytest.raises(DatasetLayoutError, match=r"7 of 8 images have no label.*extra_0_left"):
        Cityscapes(city_root, split="val")


def test_unknown_label_value_names_file_and_value(city_root: Path):
    path = city_root / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"
    ids = np.array(Image.open(path))
    ids[5, 5] = 40
    Image.fromarray(ids).save(path)
    ds = Cityscapes(city_root, split="val")
    with pytest.raises(UnknownLabelError, match=rf"{FRAME}_gtFine_labelIds.png.*\b40\b"):
        ds[0]
    relaxed = Cityscapes(city_root, split="val", check_labels=False)
    assert relaxed[0]["mask"][5, 5] == 255


# ---------------------------------------------------------------------------------- GTA5
def _gta_tree(root: Path, mini: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    ids = _label_ids(mini)
    for name in names:
        shutil.copy(
            mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png", root / "images" / name
        )
        # GTA5 labels are paletted PNGs: palette index = Cityscapes id (colours must be ignored).
        label = Image.fromarray(ids, mode="P")
        label.putpalette([(i * 37) % 256 for i in range(768)])
        label.save(root / "labels" / name)
    return root


def test_gta5_reads_palette_indices(tmp_path: Path, mini: Path):
    root = _gta_tree(tmp_path / "gta5", mini, ["00001.png", "00002.png"])
    ds = GTA5(root)
    assert len(ds) == 2 and ds.classes == CITYSCAPES_CLASSES
    assert (ds[1]["mask"].numpy() == _map(_label_ids(mini), ID_TO_TRAIN)).all()


def test_gta5_split_file(tmp_path: Path, mini: Path):
    root = _gta_tree(tmp_path / "gta5", mini, ["00001.png", "00002.png", "00003.png"])
    split = tmp_path / "train.txt"
    split.write_text("00003.png\n00001\n")
    ds = GTA5(root, split_file=split)
    assert [image.name for image, _ in ds.samples] == ["00003.png", "00001.png"]
    split.write_text("00001.png\n09999.png\n")
    with pytest.raises(DatasetLayoutError, match="09999"):
        GTA5(root, split_file=split)


def test_gta5_mismatched_label_size(tmp_path: Path, mini: Path):
    root = _gta_tree(tmp_path / "gta5", mini, ["00001.png"])
    Image.fromarray(np.full((64, 128), 26, np.uint8)).save(root / "labels/00001.png")
    item = GTA5(root)[0]
    assert item["mask"].shape == (128, 256) and (item["mask"] == 13).all()  # car
    with pytest.raises(DatasetLayoutError, match=r"128×64.*256×128"):
        GTA5(root, resize_mismatched_masks=False)[0]


def test_gta5_missing_labels_folder(tmp_path: Path, mini: Path):
    root = _gta_tree(tmp_path / "gta5", mini, ["00001.png"])
    shutil.rmtree(root / "labels")
    with pytest.raises(DatasetLayoutError, match=r"labels does not exist[\s\S]*images/\*\.png"):
        GTA5(root)


# ---------------------------------------------------------------------------------- SYNTHIA
def _synthia_tree(root: Path, mini: Path, raw: np.ndarray) -> Path:
    (root / "RGB").mkdir(parents=True)
    (root / "GT/LABELS").mkdir(parents=True)
    shutil.copy(
        mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png", root / "RGB/0000000.png"
    )
    label = np.zeros((*raw.shape, 3), dtype=np.uint16)  # BGR order for OpenCV
    label[..., 2] = raw  # R: class id
    label[..., 1] = 1000 + np.arange(raw.size).reshape(raw.shape) % 5000  # G: instance id > 255
    label[..., 0] = 65535  # B
    assert cv2.imwrite(str(root / "GT/LABELS/0000000.png"), label)
    # DAFormer's converted files lie beside the originals: no image pairs with them.
    Image.fromarray(np.zeros(raw.shape, np.uint8)).save(
        root / "GT/LABELS/0000000_labelTrainIds.png"
    )
    return root


def test_synthia_reads_16_bit_r_channel(tmp_path: Path, mini: Path):
    rng = np.random.default_rng(0)
    raw = rng.choice(SYNTHIA_OCCURRING_IDS, size=(128, 256)).astype(np.uint16)
    root = _synthia_tree(tmp_path / "synthia", mini, raw)
    with Image.open(root / "GT/LABELS/0000000.png") as png:
        assert png.mode == "RGB"  # what Pillow would see: 8 bits, ids lost
    ds = SYNTHIA(root)
    assert len(ds) == 1
    assert ds.class_subsets == {"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES}
    mask = ds[0]["mask"].numpy()
    assert (mask == _map(raw, SYNTHIA_TO_TRAIN)).all()
    assert set(np.unique(mask)) == {*SYNTHIA_16_CLASSES, 255}


def test_synthia_unknown_id(tmp_path: Path, mini: Path):
    raw = np.full((128, 256), 3, dtype=np.uint16)
    raw[0, 0], raw[1, 1] = 23, 300
    root = _synthia_tree(tmp_path / "synthia", mini, raw)
    with pytest.raises(UnknownLabelError, match=r"0000000\.png.*\b300\b"):
        SYNTHIA(root)[0]
    raw[1, 1] = 3
    root = _synthia_tree(tmp_path / "synthia2", mini, raw)
    with pytest.raises(UnknownLabelError, match=r"0000000\.png.*\b23\b"):
        SYNTHIA(root)[0]


# ---------------------------------------------------------------------------------- input spaces
def _caffe_reference(mini: Path) -> np.ndarray:
    """The fixture frame as Caffe DeepLab-v2 inputs: BGR, 0-255, minus the mean pixel (C×H×W)."""
    bgr = _rgb(mini)[..., ::-1].astype(np.float64)
    return (bgr - CAFFE_MEAN_BGR).transpose(2, 0, 1)


def test_caffe_dataset_yields_bgr_mean_subtracted_pixels(city_root: Path, mini: Path):
    ds = Cityscapes(city_root, split="val", normalization="caffe")
    assert ds.normalization == CAFFE
    image = ds[0]["image"]
    assert image.dtype == torch.float32 and image.shape == (3, 128, 256)
    assert np.abs(image.numpy() - _caffe_reference(mini)).max() < 1e-3
    assert image.min() >= -CAFFE_MEAN_BGR.max() - 1e-3 and image.max() <= 255 - CAFFE_MEAN_BGR.min()
    # A preset name is built in the dataset's space; so is the uint8 fallback.
    val = Cityscapes(city_root, split="val", transform="cityscapes_val", normalization="caffe")
    assert val.normalization == CAFFE and val.transform.normalization == CAFFE
    uint8 = Cityscapes(city_root, split="val", transform=_identity, normalization="caffe")
    assert np.abs(uint8[0]["image"].numpy() - _caffe_reference(mini)).max() < 1e-3


def _identity(image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    return {"image": image, "mask": mask}


def test_dataset_space_default_and_from_transform(city_root: Path, mini: Path, tmp_path: Path):
    assert Cityscapes(city_root, split="val").normalization == IMAGENET
    assert Cityscapes(city_root, split="val", transform=_identity).normalization == IMAGENET
    # A.Normalize has a `normalization` attribute of its own ("standard"): not an input space.
    plain = Cityscapes(city_root, split="val", transform=A.Normalize())
    assert plain.normalization == IMAGENET and plain[0]["image"].shape == (3, 128, 256)
    # A pipeline of lightning_uda.data.transforms says which space it normalises into.
    caffe_val = preset("cityscapes_val", normalization="caffe")
    ds = Cityscapes(city_root, split="val", transform=caffe_val)
    assert ds.normalization == CAFFE and ds.with_meta().normalization == CAFFE
    assert "caffe" in repr(ds)
    with pytest.raises(ValueError, match=r"'caffe' input space.*normalization='imagenet'"):
        Cityscapes(city_root, split="val", transform=caffe_val, normalization="imagenet")
    with pytest.raises(ValueError, match="unknown input normalisation"):
        Cityscapes(city_root, split="val", normalization="rgb")
    gta = GTA5(_gta_tree(tmp_path / "gta5", mini, ["00001.png"]), normalization="caffe")
    assert gta.normalization == CAFFE
    assert np.abs(gta[0]["image"].numpy() - _caffe_reference(mini)).max() < 1e-3
    raw = np.full((128, 256), 3, dtype=np.uint16)
    synthia = SYNTHIA(_synthia_tree(tmp_path / "synthia", mini, raw), normalization=CAFFE)
    assert synthia.normalization == CAFFE
