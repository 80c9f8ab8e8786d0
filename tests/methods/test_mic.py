"""MIC's masked image consistency loss, against closed forms at the edges of the mask ratio."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.losses import pixel_weighted_cross_entropy
from lightning_uda.methods import DACSModule, MICModule
from lightning_uda.mixing import block_mask
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


# ---------------------------------------------------------------- mask_mode (MIC's names)
def _spy_inputs(module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    return seen


def _source():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    labels[:, 0, :] = 255  # void source pixels count 0 in the masked loss
    return {"image": torch.randn(2, 3, 16, 16, generator=g), "mask": labels}


def _jittering_mic(mask_mode: str, **kwargs) -> MICModule:
    """A MIC whose strong augmentation always changes the images (jitter with p = 1)."""
    kwargs = {"mask_block_size": 4, "jitter_p": 1.0, "jitter_strength": 0.5, **kwargs}
    return MICModule(
        **tiny_module_kwargs(), pseudo_label_crop=(0, 0), mask_mode=mask_mode, **kwargs
    )


def test_default_mask_mode_masks_the_colour_augmented_target():
    module = _jittering_mic("separatetrgaug")
    assert MICModule(**tiny_module_kwargs()).hparams.mask_mode == "separatetrgaug"
    images, labels, weights = _inputs()
    module.eval()
    module.rng.manual_seed(5)
    loss = module.masked_consistency_loss(images, labels, weights)
    # the same steps by hand from the same generator state: augment, then blank the blocks
    g = torch.Generator().manual_seed(5)
    augmented, _, _ = module.augment(images, labels, weights, generator=g)
    keep = block_mask(augmented.shape, block_size=4, ratio=0.7, generator=g)
    assert not torch.allclose(augmented, images)  # the augmentation did something
    expected = pixel_weighted_cross_entropy(module.model(augmented * keep), labels, weights)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_separatetrg_masks_the_target_as_loaded(monkeypatch):
    module = _jittering_mic("separatetrg")
    calls = []
    monkeypatch.setattr(module, "strong_augment", lambda *a: calls.append(a) or a)
    seen = _spy_inputs(module)
    images, labels, weights = _inputs()
    images = images.abs() + 1.0  # no pixel is 0 unless masked
    module.masked_consistency_loss(images, labels, weights)
    assert calls == []
    kept = (seen[-1] != 0).all(dim=1, keepdim=True).expand_as(images)
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(seen[-1][kept], images[kept], rtol=0, atol=0)


def test_separate_masks_one_source_and_one_target_image_unaugmented():
    module = _jittering_mic("separate", mask_ratio=0.0)
    images, labels, weights = _inputs()
    source = _source()
    seen = _spy_inputs(module)
    module.eval()
    loss = module.masked_consistency_loss(images, labels, weights, source=source)
    stacked = torch.stack([source["image"][0], images[0]])
    torch.testing.assert_close(seen[-1], stacked, rtol=0, atol=0)  # no colour augmentation
    # source pixels weigh 1 (void 0), target pixels their pseudo-label weight
    ones = torch.ones(16, 16)
    expected = pixel_weighted_cross_entropy(
        module.model(stacked),
        torch.stack([source["mask"][0], labels[0]]),
        torch.stack([ones, weights[0]]),
    )
    torch.testing.assert_close(loss, expected)


def test_separatesrcaug_masks_the_augmented_source_batch():
    module = _jittering_mic("separatesrcaug", mask_ratio=0.0)
    images, labels, weights = _inputs()
    source = _source()
    seen = _spy_inputs(module)
    module.rng.manual_seed(3)
    module.masked_consistency_loss(images, labels, weights, source=source)
    ones = torch.ones(2, 16, 16)
    g = torch.Generator().manual_seed(3)
    augmented, _, _ = module.augment(source["image"], source["mask"], ones, generator=g)
    torch.testing.assert_close(seen[-1], augmented, rtol=0, atol=0)


def test_mask_mode_errors_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        MICModule(**tiny_module_kwargs(), mask_mode="separatetarget")
    images, labels, weights = _inputs()
    module = _jittering_mic("separate")
    with pytest.raises(ValueError, match=r"masks source images: pass source=batch\['source'\]"):
        module.masked_consistency_loss(images, labels, weights)
    one = {"image": _source()["image"][:1], "mask": _source()["mask"][:1]}
    with pytest.raises(ValueError, match="batch of at least 2"):
        module.masked_consistency_loss(images[:1], labels[:1], weights[:1], source=one)
    small = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"source crops are \(8, 8\)"):
        module.masked_consistency_loss(images, labels, weights, source=small)


@pytest.mark.fit
def test_separate_mode_fits_with_the_source_batch(tmp_path):
    module = MICModule(
        **tiny_module_kwargs(), pseudo_label_crop=(0, 0), mask_block_size=4, mask_mode="separate"
    )
    seen = _spy_inputs(module)
    trainer = cpu_trainer(tmp_path, max_steps=1)
    datamodule = toy_datamodule()
    trainer.fit(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss_masked"])
    # the masked forward (the last of the step) starts with source images: the first two kept
    # pixels of a toy source image are an exact match for some source image of the dataset
    masked = seen[-1]
    assert masked.shape[0] == 4
    sources = datamodule.source.images
    first = masked[0]
    kept = (first != 0).all(dim=0)
    assert any(torch.equal(s[:, kept], first[:, kept]) for s in sources)
