"""DAFormerModule: DAFormer's recipe as defaults, its schedule against mmcv's formula, a real
DAFormer (MiT) training step, and an exact resume with rare-class sampling on."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.data import RareClassSampling
from lightning_uda.methods import DACSModule, DAFormerModule, MICModule
from tests.helpers.methods import (
    NUM_CLASSES,
    ToyScenes,
    cpu_trainer,
    tiny_module_kwargs,
    toy_datamodule,
)


def test_defaults_are_daformers_recipe():
    module = DAFormerModule(num_classes=NUM_CLASSES, arch="tiny_unet")
    hp = module.hparams
    assert (hp.optimizer, hp.lr) == ("adamw", 6e-5)
    assert (hp.weight_decay, hp.betas, hp.head_lr_mult) == (0.01, (0.9, 0.999), 10.0)
    assert tuple(hp.no_decay_keys) == ("norm", "pos_block")
    assert (hp.poly_power, hp.warmup_steps, hp.warmup_ratio) == (1.0, 1500, 1e-6)
    assert (hp.ema_alpha, tuple(hp.pseudo_label_crop)) == (0.999, (15, 120))
    assert hp.feature_distance_weight == 0.005 and tuple(hp.feature_distance_classes) == (
        6,
        7,
        11,
        12,
        13,
        14,
        15,
        16,
        17,
        18,
    )
    assert (hp.mix_mode, hp.mix_include_ignore) == ("batch_union", True)
    assert (module.augment.brightness, module.augment.jitter_p) == (0.2, 0.8)
    assert module.augment.jitter_semantics == "kornia05" and module.augment.decision == "per_batch"
    assert module.teacher_bn == "train" and module.imnet_encoder is not None
    assert DAFormerModule.__init__.__kwdefaults__["arch"] == "daformer"
    assert DAFormerModule.__init__.__kwdefaults__["lr"] == 6e-5
    assert issubclass(MICModule, DAFormerModule)


def _mmcv_lr(base_lr: float, step: int, total: int = 40_000) -> float:
    """mmcv's PolyLrUpdaterHook (power 1, min_lr 0) with linear warm-up (1500 its, ratio 1e-6)."""
    regular = base_lr * (1 - step / total) ** 1.0
    if step < 1500:
        k = (1 - step / 1500) * (1 - 1e-6)
        return regular * (1 - k)
    return regular


def test_learning_rates_follow_mmcv_warmup_and_poly():
    module = DAFormerModule(num_classes=NUM_CLASSES, arch="tiny_unet", total_steps=40_000)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = {}
    for step in range(40_001):
        if step in (0, 1, 750, 1499, 1500, 20_000, 40_000):
            seen[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
    for step, lrs in seen.items():
        assert lrs["backbone"] == pytest.approx(_mmcv_lr(6e-5, step), rel=1e-9, abs=1e-18)
        assert lrs["head"] == pytest.approx(_mmcv_lr(6e-4, step), rel=1e-9, abs=1e-18)


def test_pseudo_label_crop_rows_and_a_crop_larger_than_the_image():
    module = DAFormerModule(**tiny_module_kwargs(), pseudo_label_crop=(3, 5))
    weights = torch.ones(2, 16, 4)
    cropped = module.crop_pseudo_weights(weights)
    rows = cropped[0, :, 0]
    assert rows.tolist() == [0.0] * 3 + [1.0] * 8 + [0.0] * 5
    with pytest.raises(ValueError, match="pseudo_label_crop"):
        DAFormerModule(**tiny_module_kwargs()).crop_pseudo_weights(torch.ones(1, 16, 16))


@pytest.mark.fit
def test_a_daformer_mit_model_trains_with_feature_distance():
    module = DAFormerModule(
        num_classes=NUM_CLASSES,
        encoder="mit_b0",
        pseudo_label_crop=(2, 4),
        feature_distance_classes=(0,),  # the toy background fills whole 32×32 feature cells
        warmup_steps=2,
    )
    assert type(module.model).__name__ == "DAFormer"
    datamodule = toy_datamodule(batch_size=2)
    for dataset in (datamodule.source, datamodule.target, datamodule.val):
        big = ToyScenes(len(dataset), seed=1, size=64)
        dataset.images, dataset.masks = big.images, big.masks
    before = {k: v.clone() for k, v in module.imnet_encoder.state_dict().items()}
    trainer = cpu_trainer(None, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    for name in ("train/loss_source", "train/loss_mixed", "train/feature_distance"):
        assert torch.isfinite(metrics[name]), name
    assert metrics["train/feature_distance"] > 0
    for k, v in module.imnet_encoder.state_dict().items():  # the ImageNet copy stays frozen
        assert torch.equal(v, before[k]), k


def _states(module):
    return {
        "model": {k: v.clone() for k, v in module.model.state_dict().items()},
        "teacher": {k: v.clone() for k, v in module.teacher.state_dict().items()},
    }


def _rcs_datamodule():
    rcs = RareClassSampling(min_pixels=8, min_crop_ratio=0.0)
    return toy_datamodule(batch_size=4, rare_class_sampling=rcs)


@pytest.mark.fit
def test_resume_with_rare_class_sampling_is_exact(tmp_path):
    kwargs = {**tiny_module_kwargs(), "pseudo_label_crop": (1, 2), "warmup_steps": 2}
    torch.manual_seed(0)
    uninterrupted = DAFormerModule(**kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    cpu_trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        uninterrupted, datamodule=_rcs_datamodule()
    )
    reference = _states(uninterrupted)
    torch.manual_seed(123)
    resumed = DAFormerModule(**kwargs)
    cpu_trainer(tmp_path / "resume", max_steps=6).fit(
        resumed, datamodule=_rcs_datamodule(), ckpt_path=tmp_path / "epoch=0-step=3.ckpt"
    )
    got = _states(resumed)
    for part in ("model", "teacher"):
        for key, value in reference[part].items():
            assert torch.equal(got[part][key], value), f"{part}.{key} differs after resume"
    # and the frozen ImageNet copy comes back from the checkpoint, not from the new init
    for k, v in uninterrupted.imnet_encoder.state_dict().items():
        assert torch.equal(resumed.imnet_encoder.state_dict()[k], v), k


def test_dacs_keeps_its_own_defaults():
    hp = DACSModule(**tiny_module_kwargs()).hparams
    assert hp.feature_distance_weight == 0 and hp.ema_alpha == 0.99 and hp.warmup_steps == 0
