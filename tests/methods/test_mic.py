"""MIC's masked image consistency loss, against closed forms at the edges of the mask ratio."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods import DACSModule, MICModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule


def _inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    weights = torch.full((2, 16, 16), 0.6)
    return images, labels, weights


def test_nothing_masked_and_no_augmentation_is_the_plain_weighted_ce():
    module = MICModule(
        **tiny_module_kwargs(), pseudo_label_crop=(0, 0), mask_ratio=0.0, strong_augmentation=False
    )
    images, labels, weights = _inputs()
    module.eval()
    expected = pixel_weighted_cross_entropy(module.model(images), labels, weights)
    torch.testing.assert_close(module.masked_consistency_loss(images, labels, weights), expected)


def test_everything_masked_feeds_blank_images():
    module = MICModule(
        **tiny_module_kwargs(), pseudo_label_crop=(0, 0), mask_ratio=1.0, strong_augmentation=False
    )
    images, labels, weights = _inputs()
    module.eval()
    blank = torch.zeros_like(images)
    expected = pixel_weighted_cross_entropy(module.model(blank), labels, weights)
    torch.testing.assert_close(module.masked_consistency_loss(images, labels, weights), expected)


def test_masked_pixels_are_zero_in_whole_blocks():
    module = MICModule(
        **tiny_module_kwargs(),
        pseudo_label_crop=(0, 0),
        mask_block_size=4,
        strong_augmentation=False,
    )
    seen = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    images, labels, weights = _inputs()
    images = images.abs() + 1.0  # no pixel is 0 unless masked
    module.masked_consistency_loss(images, labels, weights)
    zero = (seen[-1] == 0).all(dim=1)  # B×H×W
    blocks = zero.view(2, 4, 4, 4, 4)
    assert torch.equal(blocks.all(dim=(2, 4)), blocks.any(dim=(2, 4)))  # blocks all-or-nothing
    assert 0 < zero.float().mean() < 1


def test_mic_defaults_and_training():
    module = MICModule(**tiny_module_kwargs(), pseudo_label_crop=(0, 0))
    hp = module.hparams
    # 32 px: MIC halves its 64-px block on DAFormer's half-resolution crops
    assert (hp.masked_consistency_weight, hp.mask_block_size, hp.mask_ratio) == (1.0, 32, 0.7)
    assert hp.ema_alpha == 0.999 and hp.mix_mode == "batch_union" and hp.mix_include_ignore
    assert DACSModule(**tiny_module_kwargs()).hparams.masked_consistency_weight == 0


@pytest.mark.fit
def test_mic_fits_with_a_finite_masked_loss(tmp_path):
    module = MICModule(**tiny_module_kwargs(), pseudo_label_crop=(0, 0), mask_block_size=4)
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy_datamodule())
    assert torch.isfinite(trainer.callback_metrics["train/loss_masked"])
