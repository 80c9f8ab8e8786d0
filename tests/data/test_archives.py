"""Tests for lightning_uda/data/archives.py (and the datasets reading their official zips), on
archives packed from the real fixture frame with the member names of the official downloads."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_uda.data import archives
from lightning_uda.data.archives import ArchiveError, ZipFolder, split_member_path
from lightning_uda.data.datasets import GTA5, SYNTHIA, Cityscapes
from lightning_uda.data.files import CorruptImageError, DatasetLayoutError, image_size
from lightning_uda.data.rcs import class_pixel_counts
from tests.helpers import archives as build
from tests.helpers.examples import FRAME

# SYNTHIA ids that occur (16 terrain, 18 truck, 20 train never do), as in test_datasets.py.
SYNTHIA_IDS = [i for i in range(23) if i not in (16, 18, 20)]


def _assert_same_items(folder_ds: Dataset, zip_ds: Dataset) -> None:
    assert len(folder_ds) == len(zip_ds) > 0
    for i in range(len(folder_ds)):
        a, b = folder_ds[i], zip_ds[i]
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (i, key)


@pytest.fixture
def city(tmp_path: Path, fixtures_root: Path) -> tuple[Path, Path]:
    return build.cityscapes(tmp_path, fixtures_root)


@pytest.fixture
def gta(tmp_path: Path, fixtures_root: Path) -> tuple[Path, Path]:
    return build.gta5(tmp_path, fixtures_root)


# ------------------------------------------------------------------------- equal items
def test_cityscapes_from_zips_equals_folders(city: tuple[Path, Path]):
    folders, zips = city
    for split in ("train", "val"):
        zipped = Cityscapes(zips, split=split)
        _assert_same_items(Cityscapes(folders, split=split), zipped)
        # Files are named inside their archive (member paths), in the folder dataset's order.
        image, label = zipped.samples[0]
        assert image == zips / f"leftImg8bit_trainvaltest.zip/leftImg8bit/{split}/frankfurt" / (
            "frankfurt_000000_000000_leftImg8bit.png"
        )
        assert split_member_path(label) == (
            zips / "gtFine_trainvaltest.zip",
            f"gtFine/{split}/frankfurt/frankfurt_000000_000000_gtFine_labelIds.png",
        )
    assert image_size(zipped.samples[0][0]) == image_size(Cityscapes(folders, "val").samples[0][0])
    assert image_size(zipped.samples[0][0]) == (256, 128)
    # Unlabelled target images need only the images archive; a preset transform works alike.
    (zips / "gtFine_trainvaltest.zip").unlink()
    _assert_same_items(
        Cityscapes(folders, split="val", return_mask=False, transform="cityscapes_val"),
        Cityscapes(zips, split="val", return_mask=False, transform="cityscapes_val"),
    )


def test_gta5_from_part_zips_equals_folders(gta: tuple[Path, Path], tmp_path: Path):
    folders, zips = gta
    zipped = GTA5(zips)
    _assert_same_items(GTA5(folders), zipped)
    assert [split_member_path(image)[0].name for image, _ in zipped.samples] == [
        "01_images.zip",
        "02_images.zip",
    ]
    split_file = tmp_path / "split.txt"
    split_file.write_text("00001.png\n")
    assert [p.name for p, _ in GTA5(zips, split_file=split_file).samples] == ["00001.png"]


@pytest.mark.parametrize("under", ["RAND_CITYSCAPES/", ""])
def test_synthia_from_zip_equals_folders(tmp_path: Path, fixtures_root: Path, under: str):
    raw = np.random.default_rng(0).choice(SYNTHIA_IDS, size=(128, 256)).astype(np.uint16)
    folders, zips = build.synthia(tmp_path, fixtures_root, raw, under=under)
    zipped = SYNTHIA(zips)
    _assert_same_items(SYNTHIA(folders), zipped)
    # The 16-bit R channel survives the zip: the raw ids come back exactly.
    assert np.array_equal(zipped.read_mask(zipped.samples[0][1]), raw)


def test_windows_separators_in_member_names(tmp_path: Path, fixtures_root: Path):
    raw = np.full((128, 256), 3, dtype=np.uint16)
    folders, zips = build.synthia(tmp_path, fixtures_root, raw)
    archive = zips / "SYNTHIA_RAND_CITYSCAPES.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tmp_path / "win.zip", "w") as out:
        for info in source.infolist():  # what a Windows packer writes: backslashes
            out.writestr(info.filename.replace("/", "\\"), source.read(info))
    archive.unlink()
    shutil.move(tmp_path / "win.zip", archive)
    _assert_same_items(SYNTHIA(folders), SYNTHIA(zips))


def test_rare_class_counts_read_labels_inside_zips(gta: tuple[Path, Path]):
    folders, zips = gta
    counts = class_pixel_counts(GTA5(zips), num_classes=19, progress=False)
    assert counts.sum() > 0
    assert np.array_equal(counts, class_pixel_counts(GTA5(folders), num_classes=19, progress=False))


# ------------------------------------------------------------------------- processes
class _HandleProbe(Dataset):
    """Item i: (the dataset's item, whether this process reads through its own zip handle)."""

    def __init__(self, dataset: Dataset, archive: Path) -> None:
        self.dataset, self.archive = dataset, archive
        self.parents = archives._HANDLES.get(archive)  # the parent's open handle

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[dict, bool]:
        item = self.dataset[index]
        return item, archives._HANDLES.get(self.archive) is not self.parents


def test_dataloader_workers_read_a_zip_with_their_own_handles(gta: tuple[Path, Path]):
    folders, zips = gta
    zipped = GTA5(zips)
    zipped[0]  # the parent has the archives open before the workers fork
    probe = _HandleProbe(zipped, zips / "01_images.zip")
    loader = DataLoader(probe, batch_size=1, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 2 and all(bool(own) for _, own in batches)
    for index, (item, _) in enumerate(batches):
        expected = GTA5(folders)[index]
        assert torch.equal(item["image"][0], expected["image"])
        assert torch.equal(item["mask"][0], expected["mask"])
    # The dataset holds paths, no handle: it pickles (a spawned worker gets it this way).
    clone = pickle.loads(pickle.dumps(zipped))
    assert torch.equal(clone[1]["mask"], zipped[1]["mask"])


def test_folder_named_like_an_archive_is_a_folder(tmp_path: Path):
    folder = tmp_path / "data.zip" / "images"
    folder.mkdir(parents=True)
    assert split_member_path(folder / "x.png") is None
    assert split_member_path(tmp_path / "plain" / "x.png") is None


# ------------------------------------------------------------------------- bad archives
def test_truncated_zip_names_the_file_and_the_fix(city: tuple[Path, Path]):
    _, zips = city
    archive = zips / "gtFine_trainvaltest.zip"
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(
        ArchiveError, match=r"gtFine_trainvaltest\.zip is not a readable zip.*download it again"
    ):
        Cityscapes(zips, split="val")


def test_damaged_member_names_the_member(gta: tuple[Path, Path], tmp_path: Path):
    _, zips = gta
    archive = zips / "01_images.zip"
    folder = tmp_path / "folders" / "gta5"
    build.zip_tree(archive, folder, only="images/00000", compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo("images/00000.png")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(archive.read_bytes())
    data[start + info.file_size // 2] ^= 0xFF  # one flipped byte mid-file: the CRC catches it
    archive.write_bytes(bytes(data))
    archives.close_archives()
    dataset = GTA5(zips)
    with pytest.raises(CorruptImageError, match=r"01_images\.zip/images/00000\.png.*again"):
        dataset[0]
    assert dataset[1]["image"].shape == (3, 128, 256)  # the other part is fine


def test_truncated_png_inside_a_zip(gta: tuple[Path, Path], tmp_path: Path):
    _, zips = gta
    cut = tmp_path / "cut" / "images"
    cut.mkdir(parents=True)
    png = (tmp_path / "folders/gta5/images/00000.png").read_bytes()
    (cut / "00000.png").write_bytes(png[: len(png) - 100])
    build.zip_tree(zips / "01_images.zip", cut.parent)
    archives.close_archives()
    with pytest.raises(CorruptImageError, match=r"01_images\.zip/images/00000\.png is truncated"):
        GTA5(zips)[0]


def test_mislabelled_zip_says_which_it_is(gta: tuple[Path, Path], city: tuple[Path, Path]):
    _, zips = gta
    assert len(GTA5(zips)) == 2  # opens the archives: a file replaced since is opened afresh
    (zips / "02_images.zip").unlink()
    shutil.copy(zips / "02_labels.zip", zips / "02_images.zip")  # labels under the images' name
    with pytest.raises(
        ArchiveError, match=r"02_images\.zip holds labels/, not images/.*Rename it to 02_labels"
    ):
        GTA5(zips)
    _, city_zips = city
    images = city_zips / "leftImg8bit_trainvaltest.zip"
    images.unlink()
    shutil.copy(city_zips / "gtFine_trainvaltest.zip", images)
    with pytest.raises(ArchiveError, match=r"holds gtFine/, not leftImg8bit/.*README"):
        Cityscapes(city_zips, split="val")


def test_zip_missing_labels_names_the_part_to_fetch(gta: tuple[Path, Path], city):
    _, zips = gta
    (zips / "02_labels.zip").unlink()
    with pytest.raises(
        ArchiveError,
        match=r"1 of 2 images have no label[\s\S]*02_images\.zip[\s\S]*02_labels\.zip is missing",
    ):
        GTA5(zips)
    assert len(GTA5(zips, return_mask=False)) == 2  # images alone are fine
    folders, city_zips = city
    build.zip_tree(  # a gtFine archive that lacks one val label
        city_zips / "gtFine_trainvaltest.zip",
        folders,
        only="gtFine/val/frankfurt/frankfurt_000000_000000",
    )
    with pytest.raises(ArchiveError, match=r"1 of the 2 images from leftImg8bit.*incomplete"):
        Cityscapes(city_zips, split="val")


def test_split_and_folder_errors_read_the_archive(city: tuple[Path, Path]):
    _, zips = city
    with pytest.raises(DatasetLayoutError, match=r"'test' not found.*\['train', 'val'\]"):
        Cityscapes(zips, split="test")
    (zips / "gtFine_trainvaltest.zip").unlink()
    with pytest.raises(
        DatasetLayoutError, match=r"gtFine does not exist, and .* holds no gtFine_trainvaltest"
    ):
        Cityscapes(zips, split="val")
    (zips / "leftImg8bit_trainvaltest.zip").unlink()
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit_trainvaltest\.zip"):
        Cityscapes(zips, split="val")


def test_synthia_rar_only_explains_zip(tmp_path: Path):
    root = tmp_path / "synthia"
    root.mkdir()
    (root / "SYNTHIA_RAND_CITYSCAPES.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(ArchiveError, match=r"RAR archive[\s\S]*unrar x[\s\S]*zip -r -0"):
        SYNTHIA(root)


def test_zip_folder_scan_matches_folder_semantics(tmp_path: Path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("d/x_img.png", "d/sub/y_img.PNG", "d/z_other.png", "d/w_img.jpg", "e/v.png"):
            handle.writestr(name, b"")
    folder = ZipFolder((archive,), "d")
    assert set(folder.scan("_img", (".png",), recursive=True)) == {"x", "sub/y"}
    assert set(folder.scan("_img", (".png",), recursive=False)) == {"x"}
    assert folder.subfolders() == ["sub"] and not folder.child("nothing").exists()
    assert FRAME  # the fixture frame the builders use
