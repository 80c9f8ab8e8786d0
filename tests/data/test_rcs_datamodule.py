"""Rare-class sampling inside UDADataModule, and the cat_max_ratio crop, against closed forms."""

from __future__ import annotations

import math
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from lightning_uda.data import CatMaxRatioCrop, RareClassSampling, train_transform
from lightning_uda.data.datamodule import UDADataModule
from lightning_uda.data.rcs import class_frequencies, rare_class_probabilities
from tests.helpers.data import Preempt, Recorder, read_log, stream_trainer

CLASSES = ["background", "common", "rare"]


class LabelledScenes(Dataset):
    """``masks[i]`` with a random crop; image channel 0 holds the item index everywhere.

    Like the library's folder datasets it lists ``samples`` (image, label "file") and reads a
    label unaugmented with ``load_mask``, which the class statistics use.
    """

    def __init__(self, masks: list[np.ndarray], crop: int | None = None) -> None:
        self.masks = masks
        self.classes = CLASSES
        steps = [A.RandomCrop(crop, crop)] if crop else []
        self.transform = A.Compose([*steps, ToTensorV2()])
        self.samples = [(f"image{i}", f"label{i}") for i in range(len(masks))]

    def load_mask(self, path) -> np.ndarray:
        return self.masks[int(str(path).removeprefix("label"))]

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        mask = self.masks[i]
        image = np.full((*mask.shape, 3), float(i), dtype=np.float32)
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"].float(), "mask": out["mask"].long()}


def _scenes() -> list[np.ndarray]:
    # 20 images 8×8: class 1 (20 px) in images 0..9, class 2 (12 px) in images 0..2.
    masks = []
    for i in range(20):
        m = np.zeros((8, 8), np.uint8)
        if i < 10:
            m[:4, :5] = 1
        if i < 3:
            m[5:8, 4:8] = 2
        masks.append(m)
    return masks


def _dm(source: Dataset, rcs: RareClassSampling, **kwargs) -> UDADataModule:
    if rcs is not None and not isinstance(rcs, str):
        rcs = RareClassSampling(**{**rcs.__dict__, "stats_file": None})
    return UDADataModule(
        source=source,
        target=LabelledScenes(_scenes()[:4]),
        val=LabelledScenes(_scenes()[:2]),
        num_workers=0,
        rare_class_sampling=rcs,
        **kwargs,
    )


def test_drawn_images_follow_the_class_probabilities():
    masks = _scenes()
    rcs = RareClassSampling(temperature=0.1, min_pixels=10, min_crop_ratio=0.0)
    dm = _dm(LabelledScenes(masks), rcs, batch_size=10, seed=1)
    counts = np.stack([np.bincount(m.ravel(), minlength=3) for m in masks])
    np.testing.assert_array_equal(dm.class_pixel_counts(), counts)
    p_class = rare_class_probabilities(class_frequencies(counts), 0.1)
    # P(image i) = Σ_c P(c) · [i holds > 10 px of c] / #images holding > 10 px of c
    eligible = counts > 10
    p_image = (eligible / eligible.sum(axis=0) * p_class).sum(axis=1)
    assert p_image.sum() == pytest.approx(1.0)
    loader = dm.train_dataloader()
    drawn = []
    while len(drawn) < 3000:
        drawn += [int(i) for batch, _, _ in loader for i in batch["source"]["index"]]
    drawn = np.array(drawn[:3000])
    for group in (range(0, 3), range(3, 10), range(10, 20)):  # rare+common, common, background
        share = np.isin(drawn, list(group)).mean()
        expected = p_image[list(group)].sum()
        sigma = math.sqrt(expected * (1 - expected) / len(drawn))
        assert abs(share - expected) < 4 * sigma, (list(group), share, expected)
    # The images carry what was drawn.
    batch = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(batch["source"]["image"][:, 0, 0, 0].long(), batch["source"]["index"])


def _corner_scenes() -> list[np.ndarray]:
    # 16×16 labels, class 2 only in the 4×4 top-left corner (16 px), class 0 elsewhere.
    m = np.zeros((16, 16), np.uint8)
    m[:4, :4] = 2
    return [m.copy() for _ in range(4)]


def _single_crop_success(min_rare: float) -> float:
    # 8×8 crops of a 16×16 label: 9 × 9 equally likely positions (top, left).
    hits = 0
    for top in range(9):
        for left in range(9):
            rare = max(0, 4 - top) * max(0, 4 - left)
            hits += rare > min_rare
    return hits / 81


@pytest.mark.parametrize("tries", [1, 10])
def test_crop_is_redrawn_until_it_holds_enough_of_the_class(tries: int):
    # T tiny: class 2 (16/256 of the pixels) is always drawn; a crop must hold > 0.5·10 = 5 px.
    rcs = RareClassSampling(
        temperature=0.01, min_pixels=10, min_crop_ratio=0.5, max_crop_tries=tries
    )
    dm = _dm(LabelledScenes(_corner_scenes(), crop=8), rcs, batch_size=8)
    p = _single_crop_success(rcs.min_crop_pixels)
    # (top, left) in {0, 1, 2}² but (2, 2): 16, 12, 12, 9, 8, 8, 6, 6 px
    assert p == pytest.approx(8 / 81)
    expected = 1 - (1 - p) ** tries
    loader = dm.train_dataloader()
    ok = []
    while len(ok) < 1600:
        for batch, _, _ in loader:
            ok += ((batch["source"]["mask"] == 2).flatten(1).sum(1) > 5).tolist()
    share = float(np.mean(ok[:1600]))
    sigma = math.sqrt(expected * (1 - expected) / 1600)
    assert abs(share - expected) < 4 * sigma + 1e-9, (share, expected)


def test_stats_are_cached_once_in_prepare_data(fixtures_root: Path, tmp_path: Path):
    from lightning_uda.data.datasets import Cityscapes

    city = fixtures_root / "cityscapes_mini"
    source = Cityscapes(city, split="val")
    stats = tmp_path / "stats" / "gta.npz"
    dm = UDADataModule(
        source=source,
        target=Cityscapes(city, split="val", return_mask=False),
        val=Cityscapes(city, split="val"),
        num_workers=0,
        rare_class_sampling={"min_pixels": 100, "stats_file": str(stats)},
    )
    dm.prepare_data()
    assert stats.is_file()
    label = source.load_mask(Path(source.samples[0][1]))
    expected = np.bincount(label[label != 255].ravel(), minlength=19)
    np.testing.assert_array_equal(dm.class_pixel_counts()[0], expected)
    with np.load(stats) as cached:
        np.testing.assert_array_equal(cached["counts"][0], expected)
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch["source"]["mask"].shape[0] == 2


def test_bad_option_is_named():
    with pytest.raises(TypeError, match="rare_class_sampling"):
        _dm(LabelledScenes(_scenes()), "yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        RareClassSampling(temperature=0)


def _rcs_resume_dm() -> UDADataModule:
    rcs = RareClassSampling(temperature=0.05, min_pixels=4, min_crop_ratio=0.5)
    masks = [np.pad(m, 2) for m in _scenes()]  # 12×12, cropped to 8×8: re-draws happen
    return _dm(LabelledScenes(masks, crop=8), rcs, batch_size=2)


@pytest.mark.fit
def test_fit_resumed_mid_epoch_with_rcs_sees_the_same_stream(tmp_path: Path):
    straight = tmp_path / "straight.jsonl"
    stream_trainer(tmp_path, [], enable_checkpointing=False).fit(
        Recorder(str(straight)), _rcs_resume_dm()
    )
    interrupted = tmp_path / "interrupted.jsonl"
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    with pytest.raises(RuntimeError, match="pre-empted"):
        stream_trainer(tmp_path, [checkpoint, Preempt(9)]).fit(
            Recorder(str(interrupted)), _rcs_resume_dm()
        )
    resumed = tmp_path / "resumed.jsonl"
    ckpt = next((tmp_path / "ckpt").glob("*step=7.ckpt"))
    stream_trainer(tmp_path, []).fit(Recorder(str(resumed)), _rcs_resume_dm(), ckpt_path=str(ckpt))
    expected = read_log(straight)
    assert len(expected) == 11
    assert read_log(interrupted)[:7] + read_log(resumed) == expected


# ------------------------------------------------------------------------------ cat_max_ratio
def _dominated_mask() -> np.ndarray:
    # 16×16: class 1 fills everything but a 4×4 block of class 0 at the top-left.
    m = np.ones((16, 16), np.uint8)
    m[:4, :4] = 0
    return m


def _acceptable_share(ratio: float) -> float:
    ok = 0
    for top in range(9):
        for left in range(9):
            minority = max(0, 4 - top) * max(0, 4 - left)
            ok += minority > 0 and (64 - minority) / 64 < ratio
    return ok / 81


def test_cat_max_ratio_redraws_dominated_crops():
    ratio = 0.9
    p = _acceptable_share(ratio)  # minority > 6.4 px: 16, 12, 12, 9, 8, 8 px
    assert p == pytest.approx(6 / 81)
    crop = A.Compose([CatMaxRatioCrop(8, 8, cat_max_ratio=ratio)])
    mask = _dominated_mask()
    image = np.zeros((16, 16, 3), np.uint8)
    crop.set_random_seed(0)
    n = 1500
    accepted = 0
    for _ in range(n):
        out = crop(image=image, mask=mask)["mask"]
        values, counts = np.unique(out, return_counts=True)
        accepted += len(values) > 1 and counts.max() / counts.sum() < ratio
    expected = 1 - (1 - p) ** 11  # 10 checked draws, then an 11th kept unchecked
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(accepted / n - expected) < 4 * sigma


def test_cat_max_ratio_one_is_a_plain_random_crop_and_presets_use_it():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = _dominated_mask()
    plain = A.Compose([A.RandomCrop(8, 8)])
    ours = A.Compose([CatMaxRatioCrop(8, 8, cat_max_ratio=1.0)])
    for seed in range(5):
        plain.set_random_seed(seed)
        ours.set_random_seed(seed)
        a, b = plain(image=image, mask=mask), ours(image=image, mask=mask)
        assert np.array_equal(a["image"], b["image"])
    steps = train_transform(crop=(8, 8), cat_max_ratio=0.75).transforms
    assert [t.cat_max_ratio for t in steps if isinstance(t, CatMaxRatioCrop)] == [0.75]
    from lightning_uda.data import preset

    gta = preset("gta5_train_daformer")
    crops = [t for t in gta.transforms if isinstance(t, CatMaxRatioCrop)]
    assert [(c.height, c.width, c.cat_max_ratio) for c in crops] == [(512, 512, 0.75)]
    assert any(isinstance(t, A.HorizontalFlip) for t in gta.transforms)
