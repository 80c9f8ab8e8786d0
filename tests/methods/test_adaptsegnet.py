"""AdaptSegNet: AdvEnt's machinery with the discriminators on softmax maps."""

from __future__ import annotations

import inspect

import pytest
import torch

from lightning_uda.methods import AdaptSegNetModule, AdvEntModule
from tests.helpers.methods import SaveWeights, advent_kwargs, cpu_trainer, toy32_datamodule


def test_only_the_discriminator_input_hook_is_overridden():
    own = {
        name
        for name, value in vars(AdaptSegNetModule).items()
        if inspect.isfunction(value) and not name.startswith("__")
    }
    assert own == {"discriminator_inputs"}
    assert issubclass(AdaptSegNetModule, AdvEntModule)


def test_discriminators_see_the_softmax_of_the_upsampled_logits():
    module = AdaptSegNetModule(**advent_kwargs())
    seen = []
    module.discriminators["main"].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    logits = torch.randn(2, 3, 8, 8)
    maps = module.discriminator_inputs({"main": logits}, (32, 32))
    up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(maps["main"], torch.softmax(up, dim=1))
    torch.testing.assert_close(maps["main"].sum(dim=1), torch.ones(2, 32, 32))
    # and the training losses feed those maps (not AdvEnt's entropy) to D
    images = torch.randn(2, 3, 32, 32)
    batch = {
        "source": {"image": images, "mask": torch.zeros(2, 32, 32, dtype=torch.long)},
        "target": {"image": images + 1},
    }
    with pytest.warns(UserWarning):  # self.log outside a Trainer
        dict(module.training_losses(batch))
    target_logits = module.model(images + 1)
    torch.testing.assert_close(seen[-1], torch.softmax(target_logits, dim=1))  # TinyUNet: full res
    with pytest.raises(ValueError, match="at least 32×32"):
        module.discriminator_inputs({"main": logits}, (16, 16))


@pytest.mark.fit
def test_paper_weights_and_multi_level_training(tmp_path):
    torch.manual_seed(0)
    module = AdaptSegNetModule(
        num_classes=3,
        arch="deeplabv2",
        encoder="resnet18",
        model_kwargs={"multi_level": True},
        discriminator_width=8,
        lr=1e-3,
    )
    assert module.adv_weights == {"main": 0.001, "aux": 0.0002}
    assert module.aux_seg_weight == 0.1
    assert module.hparams.discriminator_lr == 1e-4
    assert tuple(module.hparams.discriminator_betas) == (0.9, 0.99)
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy32_datamodule())
    for key in ("train/adversarial_aux", "train/loss_discriminator_main"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_two_processes_run(tmp_path):
    module = AdaptSegNetModule(**advent_kwargs())
    trainer = cpu_trainer(
        tmp_path,
        max_steps=2,
        devices=2,
        strategy="ddp_fork_find_unused_parameters_true",
        callbacks=[SaveWeights(str(tmp_path))],
    )
    trainer.fit(module, datamodule=toy32_datamodule())
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
