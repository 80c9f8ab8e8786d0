"""HRDAModule: the multi-resolution loss weights, full-resolution pseudo-labels with the loader's
margins, MIC on HRDA, and a short fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_uda.data import UDADataModule
from lightning_uda.data.transforms import PSEUDO_LABEL_VALID
from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods import HRDAModule, multi_resolution_loss
from lightning_uda.models import HRDAOutput, fuse_scales
from tests.helpers.methods import NUM_CLASSES, ToyScenes, cpu_trainer


def _hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel CE, −log softmax at the label, written out (float64, no void)."""
    exp = logits.exp()
    picked = logits.gather(1, labels[:, None]).squeeze(1)
    return exp.sum(dim=1).log() - picked


def _hand_output(box=(0, 2, 2, 4)) -> tuple[HRDAOutput, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    context = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    detail = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    weights = torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    output = HRDAOutput(fused, context, detail, context, box, [])
    return output, labels, weights


def _weighted(logits, labels, weights):
    return pixel_weighted_cross_entropy(logits, labels, 1.0 if weights is None else weights)


def test_loss_is_0_9_fused_plus_0_1_detail_on_the_cropped_labels_and_weights():
    output, labels, weights = _hand_output()
    fused = (weights * _hand_ce(output.fused, labels)).mean()
    detail = (weights[:, 0:2, 2:4] * _hand_ce(output.detail, labels[:, 0:2, 2:4])).mean()
    got = multi_resolution_loss(output, labels, _weighted, weights=weights)
    torch.testing.assert_close(got, 0.9 * fused + 0.1 * detail)


def test_context_weight_adds_its_term_and_lowers_the_fused_weight():
    output, labels, weights = _hand_output()
    terms = {
        "fused": (weights * _hand_ce(output.fused, labels)).mean(),
        "detail": (weights[:, 0:2, 2:4] * _hand_ce(output.detail, labels[:, 0:2, 2:4])).mean(),
        "context": (weights * _hand_ce(output.context, labels)).mean(),
    }
    got = multi_resolution_loss(
        output, labels, _weighted, weights=weights, hr_loss_weight=0.2, lr_loss_weight=0.3
    )
    expected = 0.5 * terms["fused"] + 0.2 * terms["detail"] + 0.3 * terms["context"]
    torch.testing.assert_close(got, expected)
    only_fused = multi_resolution_loss(output, labels, _weighted, weights, 0.0, 0.0)
    torch.testing.assert_close(only_fused, terms["fused"])
    with pytest.raises(ValueError, match="sum to at most 1"):
        multi_resolution_loss(output, labels, _weighted, weights, 0.6, 0.5)


def _module(**kwargs) -> HRDAModule:
    torch.manual_seed(0)
    defaults = dict(
        num_classes=NUM_CLASSES,
        encoder="mit_b0",
        model_kwargs={"detail_size": (32, 32)},
        feature_distance_weight=0.0,
        warmup_steps=0,
        slide_window=(64, 64),
        slide_stride=(32, 32),
    )
    return HRDAModule(**{**defaults, **kwargs})


def test_defaults_are_hrdas_recipe():
    module = _module()
    hp = module.hparams
    assert (hp.hr_loss_weight, hp.lr_loss_weight) == (0.1, 0.0)
    assert tuple(hp.pseudo_label_crop) == (0, 0)  # margins come from the loader (v2)
    assert hp.mask_block_size == 64 and hp.masked_consistency_weight == 0
    assert module.inference == "slide"
    full = HRDAModule(num_classes=19, encoder="mit_b0")
    assert full.slide_window == (1024, 1024) and full.slide_stride == (512, 512)
    assert full.model.detail_size == (512, 512) and full.model.crop_coord_divisible == 8
    with pytest.raises(TypeError, match="arch='hrda'"):
        HRDAModule(num_classes=3, arch="daformer", encoder="mit_b0")


def test_source_loss_uses_the_detail_box_of_the_modules_generator():
    module = _module().eval()
    g = torch.Generator().manual_seed(1)
    source = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "mask": torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g),
    }
    module.rng.manual_seed(5)
    box = module.detail_box(source["image"])
    module.rng.manual_seed(5)
    loss = module.source_loss(source)
    out = module.model.forward_train(source["image"], box=box)
    y1, y2, x1, x2 = box
    expected = 0.9 * pixel_weighted_cross_entropy(out.fused, source["mask"], 1.0)
    expected += 0.1 * pixel_weighted_cross_entropy(
        out.detail, source["mask"][:, y1:y2, x1:x2], 1.0
    )  # source_ce_mean_over="all" (DAFormer's), so the mean over all pixels
    torch.testing.assert_close(loss, expected)
    assert module.last_scales["box"] == box
    assert module.last_scales["attention"].shape == (2, 1, 16, 16)


def test_pseudo_labels_are_fused_at_full_resolution_with_the_loaders_margins():
    module = _module(pseudo_label_threshold=0.5, teacher_bn="eval")
    model = module.teacher
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    # the hand computation: 32×32 detail windows every 16 px averaged on the 16×24 grid, fused
    # with the context of the whole image, upsampled to the image
    total, count = torch.zeros(1, 3, 16, 24), torch.zeros(1, 1, 16, 24)
    with torch.no_grad():
        for top in (0, 16, 32):
            for left in (0, 16, 32, 48, 64):
                crop = images[..., top : top + 32, left : left + 32]
                total[..., top // 4 : top // 4 + 8, left // 4 : left // 4 + 8] += model.decode(
                    model.extract_features(crop)
                )
                count[..., top // 4 : top // 4 + 8, left // 4 : left // 4 + 8] += 1
        small = F.interpolate(images, scale_factor=0.5, mode="bilinear")
        features = model.extract_features(small)
        fused = fuse_scales(model.decode(features), total / count, model.attend(features))
    full = F.interpolate(fused, size=(64, 96), mode="bilinear")
    torch.testing.assert_close(module.teacher_logits(images), full)
    probs = full.softmax(dim=1)
    confidence, expected_labels = probs.max(dim=1)
    q = float((confidence >= 0.5).float().mean())
    valid = torch.ones(1, 64, 96, dtype=torch.long)
    valid[:, :3] = 0  # the top margin of the full frame fell into this crop
    valid[:, :, -5:] = 255  # padding
    module._pseudo_valid = valid
    labels, weights = module.pseudo_label(images)
    assert torch.equal(labels, expected_labels)
    assert math.isclose(float(weights[0, 10, 10]), q, rel_tol=1e-6)
    assert float(weights[:, :3].abs().max()) == 0 and float(weights[..., -5:].abs().max()) == 0
    assert int((weights > 0).sum()) == (61 * 91 if q > 0 else 0)


def test_mic_on_hrda_uses_the_multi_resolution_loss_on_the_masked_image():
    module = _module(
        masked_consistency_weight=1.0, mask_ratio=0.0, strong_augmentation=False
    ).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 64, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g)
    weights = torch.full((2, 64, 64), 0.7)
    module.rng.manual_seed(9)
    masked = module.masked_consistency_loss(images, labels, weights)
    box = module.last_scales["box"]
    out = module.model.forward_train(images, box=box)  # nothing masked: the images themselves
    y1, y2, x1, x2 = box
    expected = 0.9 * pixel_weighted_cross_entropy(out.fused, labels, weights)
    expected += 0.1 * pixel_weighted_cross_entropy(
        out.detail, labels[:, y1:y2, x1:x2], weights[:, y1:y2, x1:x2]
    )
    torch.testing.assert_close(masked, expected)


def test_mic_separate_mode_on_hrda_stacks_a_source_and_a_target_image():
    # MIC's Cityscapes → ACDC / Dark Zurich mode: one labelled source image (weight 1) and one
    # target image with its pseudo-label, not colour-augmented, through the same loss
    module = _module(masked_consistency_weight=1.0, mask_ratio=0.0, mask_mode="separate").eval()
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 64, 64, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g)
    weights = torch.full((2, 64, 64), 0.7)
    source = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "mask": torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g),
    }
    module.rng.manual_seed(9)
    masked = module.masked_consistency_loss(images, labels, weights, source=source)
    box = module.last_scales["box"]
    stacked = torch.stack([source["image"][0], images[0]])
    out = module.model.forward_train(stacked, box=box)
    y = torch.stack([source["mask"][0], labels[0]])
    w = torch.stack([torch.ones(64, 64), weights[0]])
    y1, y2, x1, x2 = box
    expected = 0.9 * pixel_weighted_cross_entropy(out.fused, y, w)
    expected += 0.1 * pixel_weighted_cross_entropy(
        out.detail, y[:, y1:y2, x1:x2], w[:, y1:y2, x1:x2]
    )
    torch.testing.assert_close(masked, expected)


class _WithMargins(ToyScenes):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        valid = torch.ones(item["image"].shape[-2:], dtype=torch.long)
        valid[:4] = 0
        return {**item, PSEUDO_LABEL_VALID: valid}


@pytest.mark.fit
def test_hrda_with_mic_trains_a_few_steps(tmp_path):
    module = _module(masked_consistency_weight=1.0, mask_block_size=16, lr=1e-3)
    data = UDADataModule(
        source=ToyScenes(4, seed=1, size=64),
        target=_WithMargins(4, seed=2, shift=0.5, size=64),
        val=ToyScenes(2, seed=3, shift=0.5, size=64),
        batch_size=2,
        num_workers=0,
    )
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=data)
    assert module.uda_step == 2
    metrics = trainer.callback_metrics
    for name in ("source", "mixed", "masked"):
        assert math.isfinite(float(metrics[f"train/loss_{name}"]))
    images = torch.randn(1, 3, 128, 128)
    assert module.eval().segment(images).shape == (1, NUM_CLASSES, 128, 128)  # slid 64² windows


def test_a_crop_hrda_cannot_take_fails_at_the_first_batch():
    module = _module()
    batch = {
        "source": {"image": torch.zeros(2, 3, 60, 64), "mask": torch.zeros(2, 60, 64).long()},
        "target": {"image": torch.zeros(2, 3, 60, 64)},
    }
    with pytest.raises(ValueError, match="divisible by 8"):
        module.check_batch(batch)


def test_the_loader_masks_margins_of_the_full_frame_before_the_crop(tmp_path, fixtures_root):
    import random

    import numpy as np

    from lightning_uda.data import Cityscapes
    from lightning_uda.data.transforms import train_transform
    from tests.helpers.examples import gta_and_cityscapes

    gta_and_cityscapes(tmp_path, fixtures_root)
    # the 128×256 frame ×2 → 256×512; margins (top 6, bottom 40, left 5, right 7); 64×64 crops
    transform = train_transform(
        resize=(128, 256), resize_scale=2.0, crop=(64, 64), pseudo_label_margins=(6, 40, 5, 7)
    )
    rows = np.ones(256, dtype=np.int64)
    rows[:6] = rows[-40:] = 0
    cols = np.ones(512, dtype=np.int64)
    cols[:5] = cols[-7:] = 0
    dataset = Cityscapes(tmp_path / "cityscapes", "train", transform=transform, return_mask=False)
    border = []
    for seed in range(30):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        item = dataset[0]
        valid = item[PSEUDO_LABEL_VALID].numpy()
        assert item["image"].shape == (3, 64, 64) and valid.shape == (64, 64)
        # the frame's mask is rows ⊗ cols, so a crop's mask is a window of each (flips mirror
        # the columns)
        crop_rows, crop_cols = valid.max(axis=1), valid.max(axis=0)
        assert np.array_equal(valid, np.outer(crop_rows, crop_cols))
        assert any(np.array_equal(rows[t : t + 64], crop_rows) for t in range(256 - 63))
        assert any(
            np.array_equal(cols[x : x + 64], c)
            for x in range(512 - 63)
            for c in (crop_cols, crop_cols[::-1])
        )
        border.append(bool((valid == 0).any()))
    assert any(border) and not all(border)  # border crops lose pixels, interior crops none


def test_attention_panel_by_hand():
    from lightning_uda.callbacks.panels import attention_panel

    picture = attention_panel(torch.full((2, 2), 0.5), box=(1, 4, 0, 3), size=(4, 4))
    red = [255, 0, 0]
    expected = [[[128] * 3] * 4 for _ in range(4)]
    for y, x in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 2), (3, 0), (3, 1), (3, 2)]:
        expected[y][x] = red  # the box's one-pixel border; (2, 1) is inside
    assert picture.shape == (4, 4, 3) and str(picture.dtype) == "uint8"
    assert picture.tolist() == expected


@pytest.mark.fit
def test_the_attention_and_detail_box_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from lightning_uda.callbacks import SegmentationPanels
    from tests.helpers.wandb_offline import OfflineRun

    monkeypatch.setenv("WANDB_MODE", "offline")
    if wandb.run is not None:
        wandb.finish()
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, mode="offline")
    data = UDADataModule(
        source=ToyScenes(4, seed=1, size=64),
        target=ToyScenes(4, seed=2, shift=0.5, size=64),
        val=ToyScenes(2, seed=3, shift=0.5, size=64),
        batch_size=2,
        num_workers=0,
    )
    trainer = cpu_trainer(
        tmp_path, max_steps=1, logger=logger, callbacks=[SegmentationPanels(every_n_steps=1)]
    )
    try:
        trainer.fit(_module(), datamodule=data)
    finally:
        wandb.finish()
    import time

    for _ in range(120):  # the offline log is written by W&B's own process
        rows = OfflineRun.load(tmp_path).rows_with("train/scale_attention")
        if rows:
            break
        time.sleep(0.25)
    assert len(rows) == 1 and rows[0]["train/scale_attention"]["count"] == 2


def _hrda_data() -> UDADataModule:
    return UDADataModule(
        source=ToyScenes(4, seed=1, size=64),
        target=_WithMargins(4, seed=2, shift=0.5, size=64),
        val=ToyScenes(2, seed=3, shift=0.5, size=64),
        batch_size=2,
        num_workers=0,
    )


@pytest.mark.fit
def test_resume_from_a_mid_run_checkpoint_is_exact(tmp_path):
    # the detail boxes, the MIC masks and the frozen ImageNet encoder must all come back from the
    # checkpoint: a resumed run ends bit-identical to the uninterrupted one
    from lightning.pytorch.callbacks import ModelCheckpoint

    kwargs = dict(
        masked_consistency_weight=1.0, mask_block_size=16, lr=1e-3, feature_distance_weight=0.005
    )
    uninterrupted = _module(**kwargs)
    every_2 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer = cpu_trainer(tmp_path, max_steps=4, enable_checkpointing=True, callbacks=[every_2])
    trainer.fit(uninterrupted, datamodule=_hrda_data())
    resumed = _module(**kwargs)
    with torch.no_grad():  # another initialisation: everything must come from the file
        for parameter in resumed.parameters():
            parameter.add_(0.5)
    cpu_trainer(tmp_path / "resume", max_steps=4).fit(
        resumed, datamodule=_hrda_data(), ckpt_path=tmp_path / "epoch=0-step=2.ckpt"
    )
    for part in ("model", "teacher", "imnet_encoder"):
        want = getattr(uninterrupted, part).state_dict()
        got = getattr(resumed, part).state_dict()
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{part}.{key} differs after resume"
