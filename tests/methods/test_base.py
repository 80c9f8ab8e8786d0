from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_uda.methods import SourceOnlyModule, poly_lr_factor
from tests.helpers.methods import OneHotModel, cpu_trainer, tiny_module_kwargs, toy_datamodule


def test_poly_lr_factor_closed_form():
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(50, 100, power=0.9) == pytest.approx(0.5**0.9)
    assert poly_lr_factor(100, 100) == 0.0
    assert poly_lr_factor(150, 100) == 0.0  # never negative
    # linear warm-up first (DAFormer), then poly
    assert poly_lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert poly_lr_factor(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert poly_lr_factor(10, 100, warmup_steps=10) == pytest.approx(0.9**0.9)


def test_mmcv_style_warmup_matches_its_formula():
    # DAFormer's poly10warm: 1,500 warm-up steps from 1e-6, poly power 1 over 40k steps.
    # mmcv: lr = poly_lr(t) · (1 − (1 − t/W)(1 − r)) for t < W, poly_lr(t) after.
    total, warmup, ratio = 40_000, 1_500, 1e-6

    def factor(step):
        return poly_lr_factor(step, total, 1.0, warmup_steps=warmup, warmup_ratio=ratio)

    assert factor(0) == pytest.approx(1e-6)
    assert factor(750) == pytest.approx((1 - 750 / total) * (1 - 0.5 * (1 - ratio)))
    assert factor(1_499) == pytest.approx((1 - 1_499 / total) * (1 - (1 / 1_500) * (1 - ratio)))
    assert factor(1_500) == pytest.approx(1 - 1_500 / total)  # continuous at the end
    assert factor(40_000) == 0.0


@pytest.mark.fit
def test_validation_miou_equals_hand_computed_confusion_matrix():
    # 3 classes; prediction and label over 8 pixels (one ignored):
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 0, 1]])
    label = torch.tensor([[0, 1, 1, 1, 2, 0, 255, 1]])
    # class 0: TP=1 (px0), FP=1 (px1), FN=1 (px5) → 1/3
    # class 1: TP=3 (px2,3,7), FP=0, FN=1 (px1)   → 3/4
    # class 2: TP=1 (px4), FP=1 (px5), FN=0       → 1/2   (px6 is ignored)
    expected = torch.tensor([1 / 3, 3 / 4, 1 / 2]) * 100
    image = pred.float().view(1, 1, 1, 8).expand(1, 3, 1, 8)
    data = [{"image": image[0], "mask": label.view(1, 8)}]
    module = SourceOnlyModule(OneHotModel(3), num_classes=3, class_names=["a", "b", "c"])
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(module, dataloaders=DataLoader(data, batch_size=1))
    assert torch.allclose(module.last_iou["val"], expected)
    assert metrics["val/mIoU"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert metrics["val/IoU/b"] == pytest.approx(75.0)


@pytest.mark.fit
def test_class_absent_everywhere_is_left_out_of_the_mean_and_subsets_are_reported():
    pred = torch.tensor([[0, 0, 1, 1]])
    label = torch.tensor([[0, 0, 1, 0]])  # class 2 never appears: no IoU, not a zero
    image = pred.float().view(1, 1, 1, 4).expand(1, 3, 1, 4)
    data = [{"image": image[0], "mask": label.view(1, 4)}]
    module = SourceOnlyModule(
        OneHotModel(3), num_classes=3, class_subsets={"mIoU3": [0, 1, 2], "mIoU1": [1]}
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(module, dataloaders=DataLoader(data, batch_size=1))
    # class 0: TP 2, FN 1 → 2/3; class 1: TP 1, FP 1 → 1/2
    assert math.isnan(float(module.last_iou["val"][2]))
    assert metrics["val/mIoU3"] == pytest.approx((200 / 3 + 50) / 2, rel=1e-5)
    assert metrics["val/mIoU"] == metrics["val/mIoU3"]  # the first subset is the headline
    assert metrics["val/mIoU1"] == pytest.approx(50.0)


@pytest.mark.fit
def test_source_only_fits_with_finite_loss_and_poly_schedule(tmp_path):
    torch.manual_seed(0)
    module = SourceOnlyModule(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=5, limit_val_batches=1, val_check_interval=5)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 5
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/mIoU" in trainer.callback_metrics
    # after 5 of 5 steps the poly factor is 0: both groups' lr reached 0
    assert [g["lr"] for g in module.optimizers().param_groups] == [0.0, 0.0]


@pytest.mark.fit
def test_trainer_level_accumulation_and_clipping_are_rejected_with_the_fix():
    module = SourceOnlyModule(**tiny_module_kwargs())
    trainer = Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, logger=False)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 to the module instead"):
        trainer.fit(module, datamodule=toy_datamodule())
    trainer = Trainer(accelerator="cpu", max_steps=2, gradient_clip_val=1.0, logger=False)
    with pytest.raises(ValueError, match="gradient_clip_val=1.0 to the module instead"):
        trainer.fit(module, datamodule=toy_datamodule())


@pytest.mark.fit
def test_module_level_accumulation_steps_every_k_batches(tmp_path):
    module = SourceOnlyModule(accumulate_grad_batches=2, **tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 3
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6


def test_predict_returns_label_maps_at_original_size():
    module = SourceOnlyModule(**tiny_module_kwargs())
    batch = {"image": torch.randn(2, 3, 16, 16), "orig_size": torch.tensor([[32, 48], [32, 48]])}
    out = module.predict_step(batch, 0)
    assert [tuple(p.shape) for p in out["pred"]] == [(32, 48), (32, 48)]
    assert out["pred"][0].dtype == torch.long


class _NormNet(torch.nn.Module):
    """A backbone with a LayerNorm named like MiT's (``norm1``) and a conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.ModuleDict(
            {"proj": torch.nn.Linear(3, 3), "norm1": torch.nn.LayerNorm(3)}
        )
        self.classifier = torch.nn.Conv2d(3, 2, 1)
        self.head_norm = torch.nn.BatchNorm2d(2)

    def forward(self, x):
        return self.head_norm(self.classifier(x))


def test_no_decay_keys_split_the_groups_by_name():
    module = SourceOnlyModule(
        model=_NormNet(),
        num_classes=2,
        optimizer="adamw",
        lr=6e-5,
        weight_decay=0.01,
        no_decay_keys=("norm", "pos_block"),
    )
    groups = {g["name"]: g for g in module.segmentor_param_groups()}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    net = module.model
    assert groups["backbone_no_decay"]["params"] == list(net.encoder["norm1"].parameters())
    assert groups["backbone"]["params"] == list(net.encoder["proj"].parameters())
    assert groups["head_no_decay"]["params"] == list(net.head_norm.parameters())
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert "weight_decay" not in groups["head"]  # the optimiser's (0.01)
    optimizer = module.make_optimizer(module.segmentor_param_groups())
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {
        "backbone": 0.01,
        "backbone_no_decay": 0.0,
        "head": 0.01,
        "head_no_decay": 0.0,
    }
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["head_no_decay"] == pytest.approx(6e-4)  # head 10×
