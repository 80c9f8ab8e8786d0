"""Divergence is stopped before it is checkpointed; non-finite models are not scored."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.methods import AdvEntModule, ClassMixModule, DACSModule, SourceOnlyModule
from lightning_uda.methods.base import first_non_finite
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy32_datamodule, toy_datamodule


def _all_finite(path) -> bool:
    state = torch.load(path, weights_only=False)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("module_cls", [DACSModule, AdvEntModule])
@pytest.mark.fit
def test_divergence_stops_before_a_non_finite_checkpoint(module_cls, tmp_path):
    kwargs = {**tiny_module_kwargs(), "lr": 1e8}  # diverges within a few steps
    if module_cls is AdvEntModule:
        kwargs["discriminator_width"] = 4
    module = module_cls(**kwargs)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = cpu_trainer(
        tmp_path, max_steps=20, enable_checkpointing=True, callbacks=[checkpoints]
    )
    with pytest.raises(FloatingPointError, match=r"holds NaN or inf|loss is") as error:
        trainer.fit(module, datamodule=toy32_datamodule())
    written = sorted(tmp_path.glob("*.ckpt"))
    assert all(_all_finite(p) for p in written), "a non-finite state was checkpointed"
    message = str(error.value)
    if "holds NaN or inf" in message:
        assert ("last good checkpoints" in message) == bool(written)
        for path in written[-1:]:
            assert str(path) in message


def test_first_non_finite_names_the_tensor():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert first_non_finite(model) is None
    model[1].running_var[1] = float("inf")
    assert first_non_finite(model) == "1.running_var"
    model[0].weight.data[0, 0] = float("nan")
    assert first_non_finite(model) == "0.weight"


@pytest.mark.fit
def test_evaluating_a_non_finite_model_raises(tmp_path):
    module = SourceOnlyModule(**tiny_module_kwargs())
    with torch.no_grad():
        module.model.classifier.weight[0, 0] = float("nan")
    trainer = cpu_trainer(tmp_path, limit_val_batches=1)
    with pytest.raises(FloatingPointError, match="classifier.weight"):
        trainer.validate(module, datamodule=toy_datamodule())


# ------------------------------------------------------------------ configuration, early
@pytest.mark.parametrize("num_classes", [2, 25])
@pytest.mark.fit
def test_num_classes_is_checked_against_the_data_at_fit_start(num_classes, tmp_path):
    # 3-class toy data: 2 used to fail deep inside the loss, 25 trained silently
    module = SourceOnlyModule(**{**tiny_module_kwargs(), "num_classes": num_classes})
    with pytest.raises(ValueError, match=rf"num_classes={num_classes}.*3 classes"):
        cpu_trainer(tmp_path, max_steps=1).fit(module, datamodule=toy_datamodule())


@pytest.mark.fit
def test_dacs_batch_shapes_are_checked_on_the_first_batch(tmp_path):
    # different source/target batch sizes used to fail only when the mixed loss started
    module = DACSModule(**tiny_module_kwargs(), mix_warmup_steps=300)
    datamodule = toy_datamodule(batch_size=4, target_batch_size=2)
    with pytest.raises(ValueError, match="same shape") as error:
        cpu_trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)
    assert module.uda_step == 0, error.value


@pytest.mark.fit
def test_classmix_needs_two_target_images_per_device(tmp_path):
    module = ClassMixModule(**tiny_module_kwargs())
    datamodule = toy_datamodule(batch_size=2, target_batch_size=1)
    with pytest.raises(ValueError, match="at least 2 target images"):
        cpu_trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)


@pytest.mark.fit
def test_advent_needs_32_pixel_inputs_on_the_first_batch(tmp_path):
    module = AdvEntModule(**tiny_module_kwargs(), discriminator_width=4)
    with pytest.raises(ValueError, match="32×32"):
        cpu_trainer(tmp_path, max_steps=1).fit(module, datamodule=toy_datamodule())


@pytest.mark.parametrize(
    ("module_cls", "argument", "value"),
    [
        (SourceOnlyModule, "head_lr_mult", -10.0),
        (SourceOnlyModule, "lr", 0.0),
        (SourceOnlyModule, "weight_decay", -1e-4),
        (SourceOnlyModule, "mcc_weight", -1.0),
        (DACSModule, "pseudo_label_threshold", 1.0),
        (DACSModule, "pseudo_label_threshold", 0.0),
        (DACSModule, "ema_alpha", 1.0),
        (DACSModule, "mixed_weight", -1.0),
        (AdvEntModule, "adv_weight", -1e-3),
        (AdvEntModule, "discriminator_lr", 0.0),
    ],
)
def test_argument_ranges_are_checked_at_construction(module_cls, argument, value):
    with pytest.raises(ValueError, match=rf"{argument} must be in"):
        module_cls(**{**tiny_module_kwargs(), argument: value})
