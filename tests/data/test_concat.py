"""ConcatSegmentation: GTA5 + SYNTHIA read as one source, on tiny trees in the official layouts
built from the fixture frame (label spaces checked, items of both, rare-class statistics over the
union, each part's augmentation seeded by the training stream, label check of every part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from lightning_uda.data import (
    CITYSCAPES_CLASSES,
    GTA5,
    SYNTHIA,
    Cityscapes,
    ConcatSegmentation,
    SegmentationFolder,
    UDADataModule,
    train_transform,
)
from lightning_uda.data.concat import item_dataset, label_check_indices
from lightning_uda.data.rcs import RareClassSampler, class_pixel_counts, default_stats_file
from tests.helpers.examples import gta_and_cityscapes
from tests.helpers.trees import frame, synthia_tree, to_train_ids


@pytest.fixture
def trees(tmp_path: Path, fixtures_root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """(root with gta5/, synthia/, cityscapes/; GTA5's expected train ids; SYNTHIA's).

    SYNTHIA's frame has its cars labelled bicycle, so car (13) occurs in GTA5 only and bicycle
    (18) in SYNTHIA only."""
    gta_and_cityscapes(tmp_path, fixtures_root)
    rgb, ids, _ = frame(fixtures_root)
    gta_expected = to_train_ids(ids)
    synthia_expected = np.where(gta_expected == 13, 18, gta_expected)
    synthia_tree(tmp_path / "synthia", rgb, synthia_expected.astype(np.uint8))
    return tmp_path, gta_expected, synthia_expected


def _counts(mask: np.ndarray) -> np.ndarray:
    return np.bincount(mask[mask != 255].ravel(), minlength=19)


def test_items_of_both_parts_in_one_label_space_scored_on_all_classes(trees):
    root, gta_expected, synthia_expected = trees
    synthia = SYNTHIA(root / "synthia")
    concat = ConcatSegmentation([GTA5(root / "gta5"), synthia])
    assert len(concat) == 4
    for index, expected in enumerate([gta_expected] * 2 + [synthia_expected] * 2):
        assert np.array_equal(concat[index]["mask"].numpy(), expected), index
    assert concat.classes == CITYSCAPES_CLASSES and concat.ignore_index == 255
    # SYNTHIA alone is scored on its 16 / 13 classes; with GTA5 (which labels all 19) on all 19
    assert set(synthia.class_subsets) == {"mIoU16", "mIoU13"}
    assert concat.class_subsets == {"mIoU": list(range(19))}
    both = ConcatSegmentation([synthia, SYNTHIA(root / "synthia")])
    assert both.class_subsets == synthia.class_subsets  # parts that agree keep their subsets
    assert "GTA5" in repr(concat) and "SYNTHIA" in repr(concat)


def test_parts_in_other_label_or_input_spaces_are_refused(trees):
    root = trees[0]
    gta = GTA5(root / "gta5")
    other = SegmentationFolder(
        root / "gta5/images", root / "gta5/labels", label_map=np.arange(256) % 2, classes=["a", "b"]
    )
    with pytest.raises(ValueError, match=r"classes differ(.|\n)*SegmentationFolder"):
        ConcatSegmentation([gta, other])
    with pytest.raises(ValueError, match="normalization differ"):
        ConcatSegmentation([gta, SYNTHIA(root / "synthia", normalization="caffe")])
    with pytest.raises(ValueError, match="at least one dataset"):
        ConcatSegmentation([])


def test_rare_class_statistics_and_draws_cover_the_union(trees):
    root, gta_expected, synthia_expected = trees
    gta, synthia = GTA5(root / "gta5"), SYNTHIA(root / "synthia")
    concat = ConcatSegmentation([gta, synthia])
    counts = class_pixel_counts(concat, 19, progress=False)
    expected = np.stack([_counts(gta_expected)] * 2 + [_counts(synthia_expected)] * 2)
    assert np.array_equal(counts, expected)
    # the statistics cache is named after the union's label files, not after one part's
    assert default_stats_file(concat) not in (default_stats_file(gta), default_stats_file(synthia))
    sampler = RareClassSampler(counts, temperature=0.01, min_pixels=1000, seed=0)
    draws = [sampler.draw(k) for k in range(400)]
    assert {i for i, c in draws if c == 13} <= {0, 1}  # car: GTA5's images only
    assert {i for i, c in draws if c == 18} <= {2, 3}  # bicycle: SYNTHIA's only
    assert {13, 18} <= {c for _, c in draws} and {i for i, _ in draws} == {0, 1, 2, 3}


def _datamodule(root: Path, seed: int, source: ConcatSegmentation) -> UDADataModule:
    return UDADataModule(
        source=source,
        target=Cityscapes(root / "cityscapes", "train", return_mask=False),
        val=Cityscapes(root / "cityscapes", "val"),
        batch_size=2,
        num_workers=0,
        seed=seed,
        label_check_items=0,
    )


def _source(root: Path) -> ConcatSegmentation:
    crop = train_transform(crop=(32, 48), flip=True)  # random crops, one pipeline per part
    return ConcatSegmentation(
        [GTA5(root / "gta5", transform=crop), SYNTHIA(root / "synthia", transform=crop)]
    )


def test_stream_reaches_both_parts_and_seeds_each_part_s_augmentation(trees):
    root = trees[0]
    runs = []
    for seed in (0, 0, 1):
        loader = _datamodule(root, seed, _source(root)).train_dataloader()
        runs.append([item[0] for item in loader])  # (batch, batch index, loader index)
    first, again, other = runs
    indices = torch.cat([batch["source"]["index"] for batch in first]).tolist()
    assert set(indices) == {0, 1, 2, 3}  # one cycle of 4 items: both parts
    for a, b in zip(first, again, strict=True):  # the same crops and flips: seeded by the stream
        assert torch.equal(a["source"]["image"], b["source"]["image"])
    pairs = zip(first, other, strict=True)
    assert any(not torch.equal(a["source"]["image"], b["source"]["image"]) for a, b in pairs)
    assert _datamodule(root, 0, _source(root)).class_subsets == {"mIoU": list(range(19))}


def test_label_check_reads_every_part(trees, fixtures_root):
    root = trees[0]
    rgb, _, _ = frame(fixtures_root)
    void = np.full(rgb.shape[:2], 255, np.uint8)  # e.g. 16-bit labels reduced to 8 bits: all void
    synthia_tree(root / "synthia_void", rgb, void)
    source = ConcatSegmentation([GTA5(root / "gta5"), SYNTHIA(root / "synthia_void")])
    assert label_check_indices(source, 2) == [0, 2]
    assert label_check_indices(source, 16) == [0, 2, 1, 3]
    dm = _datamodule(root, 0, source)
    dm.label_check_items = 2
    with pytest.warns(UserWarning, match=r"1 of the first 2 .*synthia_void(.|\n)*SYNTHIA labels"):
        dm.check_source_labels()


def test_item_dataset_looks_through_concat_and_subset():
    a, b = TensorDataset(torch.arange(3)), TensorDataset(torch.arange(5))
    nested = Subset(ConcatDataset([a, Subset(b, [4, 2, 0])]), [5, 0, 3])
    assert item_dataset(nested, 0) == (b, 0)  # 5 → concat item 5 → b's subset item 2 → b[0]
    assert item_dataset(nested, 1) == (a, 0)
    assert item_dataset(nested, 2) == (b, 4)
