from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_uda.methods import AdvEntModule
from tests.helpers.methods import (
    SaveWeights,
    advent_kwargs,
    cpu_trainer,
    toy32_datamodule,
)
from tests.helpers.numerics import assert_equal_up_to_reassociation


def _all_lrs(module: AdvEntModule) -> list[float]:
    return [g["lr"] for opt in module.optimizers() for g in opt.param_groups]


class CountingAdvEnt(AdvEntModule):
    """Counts iterations (training_step calls) and discriminator optimiser steps."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.iterations = 0
        self.discriminator_steps = 0

    def training_step(self, batch, batch_idx):
        self.iterations += 1
        return super().training_step(batch, batch_idx)

    def discriminator_optimizer_step(self) -> None:
        self.discriminator_steps += 1
        super().discriminator_optimizer_step()


@pytest.mark.fit
def test_max_steps_means_iterations_and_both_poly_schedules_end_at_zero(tmp_path):
    torch.manual_seed(0)
    module = CountingAdvEnt(**advent_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=5)
    trainer.fit(module, datamodule=toy32_datamodule())
    assert module.iterations == 5
    assert module.discriminator_steps == 5
    assert trainer.global_step == module.uda_step == 5
    # the poly factor after 5 of 5 steps is 0 for the segmentor's groups and for D's
    assert _all_lrs(module) == [0.0, 0.0, 0.0]
    assert [s.last_epoch for s in module.lr_schedulers()] == [5, 5]
    metrics = trainer.callback_metrics
    for key in (
        "train/loss_source",
        "train/loss_adversarial",
        "train/adversarial_main",
        "train/loss_discriminator_main",
    ):
        assert torch.isfinite(metrics[key]), key


class NaiveAdvEnt(CountingAdvEnt):
    """Steps D through ``LightningOptimizer.step()`` like the segmentor (what AdvEnt avoids)."""

    def discriminator_optimizer_step(self) -> None:
        self.discriminator_steps += 1
        _, optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers()[1].step()


@pytest.mark.fit
def test_lightning_counts_every_lightning_optimizer_step(tmp_path):
    # Why AdvEnt bypasses LightningOptimizer for D: with Lightning 2.x, stepping two optimisers
    # that way counts two global steps per iteration, so max_steps=4 stops after 2 iterations.
    module = NaiveAdvEnt(**advent_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=4)
    trainer.fit(module, datamodule=toy32_datamodule())
    assert trainer.global_step == 4
    assert module.iterations == 2


def _grads(module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def _changed(before: dict, after: dict) -> set[str]:
    changed = set()
    for name, old in before.items():
        new = after[name]
        if (old is None) != (new is None) or (old is not None and not torch.equal(old, new)):
            changed.add(name)
    return changed


class InstrumentedAdvEnt(AdvEntModule):
    """Records which parameters' gradients each backward changes, and which parameters each
    optimiser step changes, as ``(event, names)`` in order."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.events: list[tuple[str, set[str]]] = []

    def manual_backward(self, loss, *args, **kwargs) -> None:
        before = _grads(self)
        super().manual_backward(loss, *args, **kwargs)
        self.events.append(("backward", _changed(before, _grads(self))))

    def _params(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters()}

    def optimizer_steps(self) -> None:
        before = self._params()
        super().optimizer_steps()
        self.events.append(("segmentor_step", _changed(before, self._params())))

    def discriminator_optimizer_step(self) -> None:
        before = self._params()
        super().discriminator_optimizer_step()
        self.events.append(("discriminator_step", _changed(before, self._params())))


@pytest.mark.fit
def test_generator_phase_leaves_discriminator_alone_and_d_phase_leaves_segmentor_alone(tmp_path):
    torch.manual_seed(0)
    module = InstrumentedAdvEnt(**advent_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy32_datamodule())
    names = {n for n, _ in module.named_parameters()}
    segmentor = {n for n in names if n.startswith("model.")}
    discriminator = {n for n in names if n.startswith("discriminators.")}
    assert segmentor and discriminator and segmentor | discriminator == names
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    # per iteration: source CE, adversarial, segmentor step, D loss, D step
    expected_kinds = ["backward", "backward", "segmentor_step", "backward", "discriminator_step"]
    assert [kind for kind, _ in module.events] == expected_kinds * 2
    for i in range(2):
        source, adversarial, seg_step, d_loss, d_step = (
            changed for _, changed in module.events[5 * i : 5 * i + 5]
        )
        assert source == segmentor & trainable  # D is not used by the source CE
        # the adversarial loss goes through D, yet only the segmentor receives gradients
        assert adversarial == segmentor & trainable
        assert seg_step == segmentor & trainable
        # D's loss is on detached maps: gradients for D only, and only D moves in its step
        assert d_loss == discriminator
        assert d_step == discriminator


@pytest.mark.fit
def test_resume_restores_discriminator_optimisers_and_schedules(tmp_path):
    kwargs = advent_kwargs(total_steps=3)  # the poly schedules' length, whatever max_steps is
    torch.manual_seed(0)
    straight = AdvEntModule(**kwargs)
    cpu_trainer(tmp_path / "a", max_steps=3).fit(straight, datamodule=toy32_datamodule())

    torch.manual_seed(0)
    first = AdvEntModule(**kwargs)
    trainer = cpu_trainer(tmp_path / "b", max_steps=2)  # interrupted after 2 of 3 iterations
    trainer.fit(first, datamodule=toy32_datamodule())
    assert first.uda_step == 2
    ckpt_path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt_path)
    checkpoint = torch.load(ckpt_path, weights_only=False)
    assert len(checkpoint["optimizer_states"]) == 2
    assert len(checkpoint["lr_schedulers"]) == 2
    assert any(k.startswith("discriminators.main.") for k in checkpoint["state_dict"])

    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed = AdvEntModule(**kwargs)
    trainer = cpu_trainer(tmp_path / "c", max_steps=3)
    trainer.fit(resumed, datamodule=toy32_datamodule(), ckpt_path=ckpt_path)
    assert resumed.uda_step == trainer.global_step == 3

    # the resumed run is the uninterrupted one: weights (segmentor and D) and optimiser states
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # the same computation: bit-identical
    for opt_a, opt_b in zip(straight.optimizers(), resumed.optimizers(), strict=True):
        state_a, state_b = opt_a.optimizer.state_dict(), opt_b.optimizer.state_dict()
        assert [g["lr"] for g in state_a["param_groups"]] == [
            g["lr"] for g in state_b["param_groups"]
        ]
        for index, slot in state_a["state"].items():
            for key, value in slot.items():
                assert torch.equal(value, state_b["state"][index][key]), key


class RecordingScaler(torch.amp.GradScaler):
    """Records the loss scale at each backward (``scale``) and each optimiser ``step``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, str | None, float]] = []

    def scale(self, outputs):
        self.events.append(("scale", None, self.get_scale()))
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.events.append(("step", type(optimizer).__name__, self.get_scale()))
        return super().step(optimizer, *args, **kwargs)


@pytest.mark.fit
def test_both_optimisers_go_through_the_amp_scaler_with_their_own_loss_scale(tmp_path):
    # growth_interval=1: the scale doubles after every optimiser step, so a backward scaled before
    # another optimiser's step would be unscaled with the wrong factor.
    scaler = RecordingScaler("cpu", init_scale=2.0**8, growth_interval=1)
    module = AdvEntModule(**advent_kwargs())
    trainer = cpu_trainer(
        tmp_path, max_steps=2, plugins=[MixedPrecision("16-mixed", "cpu", scaler)]
    )
    trainer.fit(module, datamodule=toy32_datamodule())
    assert trainer.global_step == 2
    steps = [name for kind, name, _ in scaler.events if kind == "step"]
    segmentor = type(trainer.optimizers[0]).__name__
    assert steps == [segmentor, "Adam", segmentor, "Adam"]
    pending: list[float] = []
    for kind, _, scale in scaler.events:
        if kind == "scale":
            pending.append(scale)
        else:
            assert pending and set(pending) == {scale}  # grads unscaled with their own scale
            pending = []


class GradNormAdvEnt(CountingAdvEnt):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.segmentor_grad_norms: list[float] = []

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)  # the module clips here (after unscaling)
        if isinstance(optimizer, torch.optim.SGD):  # the segmentor's
            params = [p for g in optimizer.param_groups for p in g["params"]]
            grads = [p.grad.flatten() for p in params if p.grad is not None]
            self.segmentor_grad_norms.append(float(torch.cat(grads).norm()))


@pytest.mark.fit
def test_module_level_accumulation_and_clipping(tmp_path):
    module = GradNormAdvEnt(**advent_kwargs(accumulate_grad_batches=2, gradient_clip_val=1e-3))
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy32_datamodule())
    assert module.iterations == 4  # batches
    assert trainer.global_step == module.uda_step == module.discriminator_steps == 2
    assert len(module.segmentor_grad_norms) == 2
    assert all(norm <= 1e-3 * (1 + 1e-4) for norm in module.segmentor_grad_norms)


@pytest.mark.fit
def test_trainer_level_accumulation_is_rejected_with_the_fix(tmp_path):
    module = AdvEntModule(**advent_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=2, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 to the module instead"):
        trainer.fit(module, datamodule=toy32_datamodule())


def test_too_small_images_are_rejected_with_the_reason():
    module = AdvEntModule(**advent_kwargs())
    with pytest.raises(ValueError, match="at least 32×32"):
        module.entropy_maps({"main": torch.zeros(1, 3, 16, 16)}, (16, 16))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_adversarial_loss_labels_target_maps_as_source():
    # With D's last bias set to b and every other D weight 0, D outputs b everywhere, so
    # BCE(D(I_t), source=0) = softplus(b) and BCE(D(I_s), 0) / BCE(D(I_t), 1) average to
    # (softplus(b) + softplus(-b)) / 2.
    module = AdvEntModule(**advent_kwargs(adv_weight=0.5))
    b = 0.7
    for name, p in module.discriminators.named_parameters():
        torch.nn.init.zeros_(p)
        if name.endswith("layers.8.bias"):
            p.data.fill_(b)
    images = torch.randn(2, 3, 32, 32)
    batch = {
        "source": {"image": images, "mask": torch.zeros(2, 32, 32, dtype=torch.long)},
        "target": {"image": images + 1},
    }
    losses = dict(module.training_losses(batch))
    softplus = torch.nn.functional.softplus
    assert float(losses["adversarial"].detach()) == pytest.approx(
        0.5 * float(softplus(torch.tensor(b)))
    )
    ((name, d_loss),) = list(module.discriminator_losses())
    expected = 0.5 * (softplus(torch.tensor(b)) + softplus(torch.tensor(-b)))
    assert name == "discriminator_main"
    assert float(d_loss.detach()) == pytest.approx(float(expected))


@pytest.mark.parametrize("target_size", [(32, 32), (64, 32)], ids=["same_size", "other_size"])
def test_discriminator_loss_equals_advent_formula_on_both_domains(target_size):
    # AdvEnt's step 2 written out with torch's ops (bilinear upsampling, softmax, the entropy map
    # formula, D in the default memory format): ½ BCE(D(I_s), 0) + ½ BCE(D(I_t), 1). Same-size
    # batches take the one-forward path, different sizes (GTA5 vs Cityscapes frames) the other.
    from torch.nn import functional as F

    from lightning_uda.losses import entropy_map

    # D runs channels-last in the module and contiguous here: the same sums in another order,
    # so both are float64 and compared at its reassociation tolerance (tests/helpers/numerics.py).
    torch.manual_seed(0)
    module = AdvEntModule(**advent_kwargs()).double()
    source = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    module._detached_logits = {
        "source": ({"main": source}, (32, 32)),
        "target": ({"main": target}, target_size),
    }
    ((name, got),) = list(module.discriminator_losses())

    disc = module.discriminators["main"].to(memory_format=torch.contiguous_format)

    def bce(logits, size, label):
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out = disc(entropy_map(torch.softmax(up, dim=1)))
        return F.binary_cross_entropy_with_logits(out, torch.full_like(out, label))

    expected = 0.5 * (bce(source, (32, 32), 0.0) + bce(target, target_size, 1.0))
    assert name == "discriminator_main"
    assert_equal_up_to_reassociation({name: got}, {name: expected})


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.fit
def test_multi_level_segmentor_gets_an_auxiliary_discriminator(tmp_path):
    torch.manual_seed(0)
    module = AdvEntModule(
        num_classes=3,
        arch="deeplabv2",
        encoder="resnet18",
        model_kwargs={"multi_level": True},
        discriminator_width=8,
        lr=1e-3,
    )
    assert module.levels == ("main", "aux")
    assert set(module.discriminators) == {"main", "aux"}
    assert module.adv_weights == {"main": 0.001, "aux": 0.0002}
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy32_datamodule())
    assert trainer.global_step == 2
    for key in (
        "train/loss_source_aux",
        "train/adversarial_aux",
        "train/loss_discriminator_aux",
        "train/loss_discriminator_main",
    ):
        assert torch.isfinite(trainer.callback_metrics[key]), key


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_two_processes_keep_identical_segmentors_and_discriminators(tmp_path):
    module = AdvEntModule(**advent_kwargs())
    trainer = cpu_trainer(
        tmp_path,
        max_steps=3,
        devices=2,
        strategy="ddp_fork_find_unused_parameters_true",
        callbacks=[SaveWeights(str(tmp_path))],
    )
    trainer.fit(module, datamodule=toy32_datamodule())
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert any(k.startswith("discriminators.") for k in rank0)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_without_unused_parameter_detection_is_rejected_with_the_fix(tmp_path):
    module = AdvEntModule(**advent_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=1, devices=2, strategy="ddp_fork")
    with pytest.raises(Exception, match="ddp_find_unused_parameters_true"):
        trainer.fit(module, datamodule=toy32_datamodule())
