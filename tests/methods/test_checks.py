"""Divergence is stopped before it is checkpointed; non-finite models are not scored."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.methods import AdvEntModule, DACSModule, SourceOnlyModule
from lightning_uda.methods.base import first_non_finite

from .helpers import cpu_trainer, tiny_module_kwargs, toy_datamodule
from .test_advent import toy32_datamodule


def _all_finite(path) -> bool:
    state = torch.load(path, weights_only=False)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("module_cls", [DACSModule, AdvEntModule])
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


def test_evaluating_a_non_finite_model_raises(tmp_path):
    module = SourceOnlyModule(**tiny_module_kwargs())
    with torch.no_grad():
        module.model.classifier.weight[0, 0] = float("nan")
    trainer = cpu_trainer(tmp_path, limit_val_batches=1)
    with pytest.raises(FloatingPointError, match="classifier.weight"):
        trainer.validate(module, datamodule=toy_datamodule())
