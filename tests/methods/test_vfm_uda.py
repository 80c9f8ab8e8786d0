"""VFM-UDA and VFM-UDA++: token-masked consistency, flip-averaged pseudo-labels, layer-wise
rates in the optimiser, feature distillation kept out of optimiser and checkpoints, a fit."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.data import UDADataModule
from lightning_uda.losses.distillation import feature_distillation_loss
from lightning_uda.methods import VFMUDAModule, VFMUDAPlusPlusModule
from tests.helpers.methods import ToyScenes, cpu_trainer


def _datamodule() -> UDADataModule:
    # 28×28: a 2×2 patch grid, the smallest the ViT takes
    return UDADataModule(
        source=ToyScenes(4, seed=1, size=28),
        target=ToyScenes(4, seed=2, shift=0.5, size=28),
        val=ToyScenes(2, seed=3, shift=0.5, size=28),
        batch_size=2,
        val_batch_size=2,
        num_workers=0,
    )


def _module(cls=VFMUDAModule, **kwargs):
    kwargs.setdefault("encoder", "dinov2_vits14")
    if cls is VFMUDAPlusPlusModule:
        kwargs.setdefault("distill_encoder", "dinov2_vits14_reg")
    return cls(num_classes=3, total_steps=10, warmup_steps=2, **kwargs)


def test_feature_distillation_is_one_minus_cosine():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # pixels (1,0), (0,2)
    teacher = torch.tensor([[3.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (3,0), (1,1)
    expected = ((1 - 1.0) + (1 - 2 / (2 * 2**0.5))) / 2  # cos 1 and cos 45°
    assert feature_distillation_loss(student, teacher).item() == pytest.approx(expected)
    # with a smooth-L1 share s: (1 − s)·(1 − cos) + s·smoothL1 (channel mean)
    l1 = ((2.5 + 0) / 2 + (0.5 + 0.5) / 2) / 2  # |Δ| 2, 0 -> 1.5, 0; |Δ| 1, 1 -> 0.5, 0.5
    mixed = feature_distillation_loss(student, teacher, smooth_l1_share=0.1).item()
    assert mixed == pytest.approx(0.9 * expected + 0.1 * (1.5 / 2 + 0.5) / 2)
    assert l1 > 0


def test_masked_consistency_masks_seventy_percent_of_tokens_not_pixels():
    module = _module(strong_augmentation=False)
    seen = []
    module.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((args[0].detach(), kwargs.get("token_mask"))),
        with_kwargs=True,
    )
    images = torch.rand(2, 3, 70, 70) + 1.0  # a 5×5 grid; no pixel is 0
    labels, weights = torch.zeros(2, 70, 70, dtype=torch.long), torch.ones(2, 70, 70)
    module.masked_consistency_loss(images, labels, weights)
    fed, mask = seen[-1]
    assert torch.equal(fed, images)  # no pixel blanked
    assert mask.shape == (2, 5, 5) and mask.flatten(1).sum(1).tolist() == [18, 18]  # round(17.5)


def test_pseudo_labels_average_the_teachers_softmax_over_the_flip():
    module = _module().eval()
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        direct = module.upsample(module.teacher(images), (28, 42)).softmax(1)
        flipped = module.upsample(module.teacher(images.flip(-1)), (28, 42)).flip(-1).softmax(1)
        got = module.teacher_logits(images).softmax(1)
    torch.testing.assert_close(got, (direct + flipped) / 2, rtol=1e-5, atol=1e-6)


def test_optimizer_groups_follow_layer_decay_and_the_frozen_model_is_left_out():
    module = _module(VFMUDAPlusPlusModule, lr=1e-5, encoder_lr_mult=0.1, layer_decay=0.9)
    groups = module.segmentor_param_groups()
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(1e-5)
    assert by_name["encoder.block12"]["lr"] == pytest.approx(1e-6)
    assert by_name["encoder.block1"]["lr"] == pytest.approx(1e-6 * 0.9**11)
    assert by_name["encoder.embed"]["lr"] == pytest.approx(1e-6 * 0.9**12)
    assert by_name["distill_head"]["lr"] == pytest.approx(1e-5)
    optimized = {id(p) for g in groups for p in g["params"]}
    frozen = list(module.distill_encoder.parameters())
    assert frozen and not any(id(p) in optimized for p in frozen)
    assert not any(p.requires_grad for p in frozen)
    # checkpoints leave the frozen model out (the slow real-format run checks a Trainer's
    # last.ckpt too), and load without it
    with torch.no_grad():
        module.model.mask_token.fill_(0.5)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    state = checkpoint["state_dict"]
    assert not any(k.startswith("distill_encoder.") for k in state)
    assert any(k.startswith("distill_projection.") for k in state)
    frozen_before = {k: v.clone() for k, v in module.distill_encoder.state_dict().items()}
    module.load_state_dict(state)  # strict: the frozen model's own weights fill the gap
    torch.testing.assert_close(module.model.mask_token.detach(), torch.full((1, 384), 0.5))
    for key, value in module.distill_encoder.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key


@pytest.mark.fit
def test_vfm_uda_trains_with_every_loss(tmp_path):
    module = _module()
    logged = {}
    trainer = cpu_trainer(tmp_path, max_steps=2, logger=False)
    original = module.log

    def log(name, value, *args, **kwargs):
        logged[name] = float(value)
        return original(name, value, *args, **kwargs)

    module.log = log
    trainer.fit(module, datamodule=_datamodule())
    for name in ("train/loss_source", "train/loss_mixed", "train/loss_masked"):
        assert name in logged and torch.isfinite(torch.tensor(logged[name])), name
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    # after 2 steps of a 2-step warm-up: the linear part, 1 − 2/10 of the rate
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1.414e-4 * 0.8)
    assert scheduler.last_epoch == 2


def test_settings_the_layer_wise_groups_replace_are_refused():
    with pytest.raises(ValueError, match=r"head_lr_mult=10.0 has no effect here"):
        _module(head_lr_mult=10.0)
    with pytest.raises(ValueError, match=r"poly_power=0.9 .*warm-up then linear"):
        _module(poly_power=0.9)


def _fit_and_resume(tmp_path, make) -> tuple:
    """An uninterrupted 4-step run and one resumed from its step-2 checkpoint, the latter built
    with other trainable weights (everything must come from the file)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    uninterrupted = make()
    every_2 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    cpu_trainer(
        tmp_path, max_steps=4, enable_checkpointing=True, callbacks=[every_2], logger=False
    ).fit(uninterrupted, datamodule=_datamodule())
    torch.manual_seed(123)
    resumed = make()
    with torch.no_grad():
        for parameter in resumed.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    cpu_trainer(tmp_path / "resume", max_steps=4, logger=False).fit(
        resumed, datamodule=_datamodule(), ckpt_path=tmp_path / "epoch=0-step=2.ckpt"
    )
    return uninterrupted, resumed


def _assert_same(want: torch.nn.Module, got: torch.nn.Module, part: str) -> None:
    got_state = got.state_dict()
    for key, value in want.state_dict().items():
        assert torch.equal(got_state[key], value), f"{part}.{key} differs after resume"


@pytest.mark.fit
def test_vfm_uda_resumes_exactly(tmp_path):
    uninterrupted, resumed = _fit_and_resume(tmp_path, _module)
    for part in ("model", "teacher"):
        _assert_same(getattr(uninterrupted, part), getattr(resumed, part), part)


@pytest.mark.fit
def test_vfm_uda_pp_resumes_exactly_with_the_frozen_model_rebuilt_from_its_file(tmp_path):
    # the frozen DINOv2 is left out of the checkpoint and comes back from distill_checkpoint
    from lightning_uda.models.vit import create_dinov2

    distill_file = tmp_path / "dinov2_vits14_reg4.pth"
    torch.save(create_dinov2("dinov2_vits14_reg").state_dict(), distill_file)

    def make():
        return _module(VFMUDAPlusPlusModule, distill_checkpoint=str(distill_file))

    uninterrupted, resumed = _fit_and_resume(tmp_path, make)
    checkpoint = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=False)
    assert not any(key.startswith("distill_encoder.") for key in checkpoint["state_dict"])
    for part in ("model", "teacher", "distill_encoder"):
        _assert_same(getattr(uninterrupted, part), getattr(resumed, part), part)
