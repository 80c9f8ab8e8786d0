from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

from lightning_uda.data import UDADataModule
from lightning_uda.losses import cross_entropy
from lightning_uda.methods.dann import DANNModule, PixelDomainClassifier
from lightning_uda.models import dann_coefficient, forward_with_features
from tests.helpers.methods import ToyScenes, cpu_trainer, tiny_module_kwargs, toy_datamodule

# The loss hooks are called outside a Trainer here, where self.log() only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _module(**kwargs) -> DANNModule:
    torch.manual_seed(0)
    return DANNModule(**{**tiny_module_kwargs(), "total_steps": 100, **kwargs})


def _batch(size: int = 16) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "source": {
            "image": torch.randn(2, 3, size, size, generator=g),
            "mask": torch.randint(0, 3, (2, size, size), generator=g),
        },
        "target": {"image": torch.randn(2, 3, size, size, generator=g) + 0.5},
    }


def test_segmentor_gets_minus_coeff_times_the_plain_gradient_and_d_the_plain_one():
    module = _module(hidden=8)
    batch = _batch()
    _, source = forward_with_features(module.model, batch["source"]["image"])
    _, target = forward_with_features(module.model, batch["target"]["image"])
    f_s, f_t = source[-1], target[-1]
    encoder = [p for p in module.model.encoder.parameters() if p.requires_grad]
    classifier = list(module.domain_classifier.parameters())
    inputs = [f_s, f_t, *encoder, *classifier]

    coeff = 0.3
    reversed_loss, accuracy = module.domain_loss(f_s, f_t, coeff)
    reversed_grads = torch.autograd.grad(reversed_loss, inputs, retain_graph=True)
    # the same loss without gradient reversal
    d_s, d_t = module.domain_classifier(f_s), module.domain_classifier(f_t)
    plain_loss = 0.5 * (
        F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))
        + F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
    )
    plain_grads = torch.autograd.grad(plain_loss, inputs)

    torch.testing.assert_close(reversed_loss, plain_loss)  # the forward is the identity
    n_segmentor = 2 + len(encoder)  # features and encoder parameters: reversed and scaled
    for got, want in zip(reversed_grads[:n_segmentor], plain_grads[:n_segmentor], strict=True):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, -coeff * want)
    for got, want in zip(reversed_grads[n_segmentor:], plain_grads[n_segmentor:], strict=True):
        torch.testing.assert_close(got, want)  # D descends its own loss
    expected_accuracy = 0.5 * ((d_s < 0).float().mean() + (d_t >= 0).float().mean())
    torch.testing.assert_close(accuracy, expected_accuracy)


def test_schedule_is_applied_and_at_step_0_the_features_get_no_adversarial_gradient():
    module = _module()
    assert module.grl_coefficient() == 0.0
    module.uda_step = 50
    assert module.grl_coefficient() == pytest.approx(dann_coefficient(0.5, gamma=10.0))
    assert module.grl_coefficient() == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    module.uda_step = 0
    assert _module(grl_schedule=False).grl_coefficient() == 1.0
    assert _module(grl_gamma=2.0, total_steps=10).hparams.grl_gamma == 2.0

    # step 0: the one yielded loss gives the segmentor the CE's gradient only, D a real one
    batch = _batch()
    (name, loss), *rest = list(module.training_losses(batch))
    assert name == "dann" and rest == []
    loss.backward()
    segmentor = {
        n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None
    }
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.domain_classifier.parameters()
    )
    module.model.zero_grad()
    logits, _ = forward_with_features(module.model, batch["source"]["image"])
    cross_entropy(logits, batch["source"]["mask"]).backward()
    for n, p in module.model.named_parameters():
        torch.testing.assert_close(segmentor[n], p.grad, msg=n)


@pytest.mark.fit
def test_one_optimizer_group_for_d_and_it_is_checkpointed(tmp_path):
    torch.manual_seed(0)
    module = DANNModule(**tiny_module_kwargs(), hidden=16)
    initial = [p.detach().clone() for p in module.domain_classifier.parameters()]
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 3
    metrics = trainer.callback_metrics
    for key in ("train/loss_dann", "train/loss_source", "train/loss_adversarial", "train/loss"):
        assert torch.isfinite(metrics[key]), key
    assert 0.0 <= float(metrics["train/domain_accuracy"]) <= 1.0
    assert float(metrics["train/grl_coeff"]) == pytest.approx(dann_coefficient(2 / 3), rel=1e-6)

    optimizer = trainer.optimizers[0]
    assert len(trainer.optimizers) == 1
    groups = [g for g in optimizer.param_groups if g["name"] == "domain_classifier"]
    assert len(groups) == 1
    d_params = list(module.domain_classifier.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in d_params}
    assert groups[0]["initial_lr"] == pytest.approx(0.05 * 10)
    assert any(not torch.equal(a, b) for a, b in zip(initial, d_params, strict=True))  # trained

    path = tmp_path / "dann.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    for name, value in module.domain_classifier.state_dict().items():
        torch.testing.assert_close(checkpoint["state_dict"][f"domain_classifier.{name}"], value)
    saved_groups = checkpoint["optimizer_states"][0]["param_groups"]
    (saved,) = [g for g in saved_groups if g["name"] == "domain_classifier"]
    assert len(saved["params"]) == len(d_params)
    state = checkpoint["optimizer_states"][0]["state"]
    assert all(i in state for i in saved["params"])  # momentum buffers of D


@pytest.mark.parametrize(
    ("arch", "channels"), [("unet", 512), ("deeplabv2", 512)], ids=["smp_unet", "deeplabv2"]
)
@pytest.mark.fit
def test_other_segmentors_run_a_step(tmp_path, arch, channels):
    torch.manual_seed(0)
    module = DANNModule(
        num_classes=3, arch=arch, encoder="resnet18", encoder_weights=None, lr=0.01, hidden=16
    )
    assert module.domain_classifier[0].in_channels == channels  # probed: the deepest map
    datamodule = UDADataModule(
        source=ToyScenes(4, seed=1, size=32),
        target=ToyScenes(4, seed=2, shift=0.5, size=32),
        val=ToyScenes(2, seed=3, size=32),
        batch_size=2,
        num_workers=0,
    )
    trainer = cpu_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    assert module.uda_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_dann"])


def test_feature_level_and_bad_arguments():
    module = _module(feature_level=0, hidden=4)
    assert module.domain_classifier[0].in_channels == 16  # TinyUNet's first map
    assert isinstance(module.domain_classifier, PixelDomainClassifier)
    assert _module(feature_channels=7).domain_classifier[0].in_channels == 7  # no probe
    for kwargs, match in [
        ({"adv_weight": -1.0}, "adv_weight"),
        ({"grl_gamma": 0.0}, "grl_gamma"),
        ({"domain_lr_mult": 0.0}, "domain_lr_mult"),
        ({"hidden": 0}, "hidden"),
        ({"feature_level": 9}, "feature_level=9 is out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            _module(**kwargs)


class _SaveState(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "uda_step": pl_module.uda_step,
                "domain_classifier": pl_module.domain_classifier.state_dict(),
                "loss": trainer.callback_metrics["train/loss_dann"].detach().clone(),
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.fit
@pytest.mark.ddp
def test_two_process_ddp_runs_and_keeps_d_in_sync(tmp_path):
    torch.manual_seed(0)
    module = DANNModule(**tiny_module_kwargs(), hidden=16)
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = cpu_trainer(
        tmp_path, max_steps=3, devices=2, strategy=strategy, callbacks=[_SaveState(str(tmp_path))]
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [s["uda_step"] for s in ranks] == [3, 3]
    assert all(torch.isfinite(s["loss"]) for s in ranks)
    for key, value in ranks[0]["domain_classifier"].items():
        assert torch.equal(ranks[1]["domain_classifier"][key], value), key  # gradients reduced
