"""FoldingSGD against torch's SGD on summed gradients, and the module's use of it."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_uda.methods import AdvEntModule, DACSModule, MinEntModule
from lightning_uda.optim import FoldingSGD
from tests.helpers.methods import (
    advent_kwargs,
    cpu_trainer,
    tiny_module_kwargs,
    toy32_datamodule,
    toy_datamodule,
)
from tests.helpers.numerics import assert_equal_up_to_reassociation


class TwoHeads(nn.Module):
    """``shared`` gets gradients from both losses, ``first``/``second`` from one each,
    ``unused`` from none."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.shared = nn.Parameter(torch.randn(4, 3, generator=g, dtype=dtype))
        self.first = nn.Parameter(torch.randn(3, generator=g, dtype=dtype))
        self.second = nn.Parameter(torch.randn(3, generator=g, dtype=dtype))
        self.unused = nn.Parameter(torch.randn(2, generator=g, dtype=dtype))

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(x.to(self.shared.dtype) @ self.shared)
        return (h * self.first).sum().square(), (h.exp() * self.second).mean()

    def groups(self, lr: float) -> list[dict]:
        return [
            {"params": [self.shared, self.first], "lr": lr, "weight_decay": 5e-4},
            {"params": [self.second, self.unused], "lr": 10 * lr, "weight_decay": 0.0},
        ]


def _inputs(step: int) -> torch.Tensor:
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + step))


def _train(optimizer_cls, model: TwoHeads, steps: int, fold: str) -> TwoHeads:
    """``fold``: "none" (gradients summed by autograd), "between" (after the first backward),
    "each" (after both)."""
    optimizer = optimizer_cls(model.groups(0.01), lr=0.01, momentum=0.9)
    for step in range(steps):
        first, second = model.losses(_inputs(step))
        first.backward(retain_graph=True)
        if fold != "none":
            optimizer.fold_gradients()
        second.backward()
        if fold == "each":
            optimizer.fold_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:  # a schedule changes lr between steps
            group["lr"] *= 0.7
    return model


@pytest.mark.parametrize("fold", ["between", "each"])
def test_folded_steps_equal_torch_sgd_on_the_summed_gradients(fold):
    # the same update, summed in another order: compared in float64 (tests/helpers/numerics.py)
    reference = _train(torch.optim.SGD, TwoHeads(torch.float64), steps=6, fold="none")
    folded = _train(FoldingSGD, TwoHeads(torch.float64), steps=6, fold=fold)
    assert_equal_up_to_reassociation(
        dict(folded.named_parameters()), dict(reference.named_parameters())
    )
    # a parameter no loss reaches is left alone, as torch's SGD leaves it
    torch.testing.assert_close(folded.unused, TwoHeads(torch.float64).unused, rtol=0, atol=0)


def test_without_folds_it_is_torch_sgd_bit_for_bit():
    reference = _train(torch.optim.SGD, TwoHeads(), steps=4, fold="none")
    same = _train(FoldingSGD, TwoHeads(), steps=4, fold="none")
    for name, p in reference.named_parameters():
        assert torch.equal(getattr(same, name), p), name


def test_one_fold_per_step_is_torch_sgd_bit_for_bit():
    # one backward per step (SourceOnly, DANN): the fold does torch's arithmetic
    results = []
    for cls, fold in ((torch.optim.SGD, False), (FoldingSGD, True)):
        model = TwoHeads()
        optimizer = cls(model.groups(0.01), lr=0.01, momentum=0.9)
        for step in range(4):
            first, second = model.losses(_inputs(step))
            (first + second).backward()
            if fold:
                optimizer.fold_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        results.append(model)
    for name, p in results[0].named_parameters():
        assert torch.equal(getattr(results[1], name), p), name


def test_one_fold_by_hand():
    # μ = 0.9, λ = 0.1, η = 0.5; previous buffer b = 1, p = 2, gradients 3 then 4:
    # b ← 0.9·1 + (3 + 4 + 0.1·2) = 8.1, p ← 2 − 0.5·8.1 = −2.05
    p = nn.Parameter(torch.tensor([2.0]))
    optimizer = FoldingSGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    optimizer.state[p]["momentum_buffer"] = torch.tensor([1.0])
    p.grad = torch.tensor([3.0])
    optimizer.fold_gradients()
    assert p.grad is None and optimizer.has_folded
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], torch.tensor([4.1]))
    p.grad = torch.tensor([4.0])
    optimizer.step()
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], torch.tensor([8.1]))
    torch.testing.assert_close(p.detach(), torch.tensor([-2.05]))
    assert not optimizer.has_folded


def test_a_checkpoint_between_folds_resumes_with_the_partial_sum():
    straight = TwoHeads()
    optimizer = FoldingSGD(straight.groups(0.01), lr=0.01, momentum=0.9)
    for step in range(2):
        first, second = straight.losses(_inputs(step))
        first.backward(retain_graph=True)
        optimizer.fold_gradients()
        second.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    resumed = TwoHeads()
    optimizer = FoldingSGD(resumed.groups(0.01), lr=0.01, momentum=0.9)
    first, second = resumed.losses(_inputs(0))
    first.backward(retain_graph=True)
    optimizer.fold_gradients()
    second.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    first, _ = resumed.losses(_inputs(1))
    first.backward(retain_graph=True)
    optimizer.fold_gradients()
    saved = copy.deepcopy((resumed.state_dict(), optimizer.state_dict()))  # pre-empted here

    restarted = TwoHeads()
    restarted.load_state_dict(saved[0])
    optimizer = FoldingSGD(restarted.groups(0.01), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(saved[1])
    assert optimizer.has_folded
    _, second = restarted.losses(_inputs(1))
    second.backward()
    optimizer.step()
    for name, p in straight.named_parameters():
        assert torch.equal(getattr(restarted, name), p), name


def test_momentum_zero_is_refused_with_the_alternative():
    with pytest.raises(ValueError, match="momentum must be > 0.*torch.optim.SGD"):
        FoldingSGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.0)


# ---------------------------------------------------------------------------- in the modules
class GradientsAtTargetForward:
    """Mixin: records whether the segmentor holds gradients when the target pass starts."""

    def adaptation_losses(self, batch):
        self.held.append(any(p.grad is not None for p in self.model.parameters()))
        yield from super().adaptation_losses(batch)


class RecordingMinEnt(GradientsAtTargetForward, MinEntModule):
    held: list[bool] = []


class RecordingAdvEnt(GradientsAtTargetForward, AdvEntModule):
    held: list[bool] = []


@pytest.mark.parametrize(
    ("module_cls", "kwargs", "datamodule"),
    [
        (RecordingMinEnt, tiny_module_kwargs(), toy_datamodule),
        (RecordingAdvEnt, advent_kwargs(), toy32_datamodule),
    ],
    ids=["minent", "advent"],
)
@pytest.mark.fit
def test_the_target_pass_runs_without_source_gradients_and_training_is_unchanged(
    tmp_path, module_cls, kwargs, datamodule
):
    # The same update summed in another order, so the runs are float64 (tests/helpers/numerics.py):
    # in float32, four steps of rounding differ by up to 2e-6 between CPU kernel sets.
    params = {}
    for fold in (False, True):
        torch.manual_seed(0)
        module = module_cls(**kwargs, fold_gradients=fold)
        module.held = []
        trainer = cpu_trainer(tmp_path, max_steps=4, precision="64-true")
        trainer.fit(module, datamodule=datamodule())
        assert module.held == [not fold] * 4
        params[fold] = module.model.state_dict()
    assert_equal_up_to_reassociation(params[True], params[False])


@pytest.mark.fit
def test_the_comparison_tells_a_small_change_of_the_update_from_rounding(tmp_path):
    # The float64 comparison above can fail: 1% less weight decay (a term of 2.5e-7 per step
    # here, relative to the weights) is far outside the reassociation tolerance.
    params = {}
    for weight_decay in (5e-4, 4.95e-4):
        torch.manual_seed(0)
        module = MinEntModule(
            **tiny_module_kwargs(), weight_decay=weight_decay, fold_gradients=True
        )
        trainer = cpu_trainer(tmp_path, max_steps=4, precision="64-true")
        trainer.fit(module, datamodule=toy_datamodule())
        params[weight_decay] = module.model.state_dict()
    with pytest.raises(AssertionError, match="not close"):
        assert_equal_up_to_reassociation(params[4.95e-4], params[5e-4])


@pytest.mark.fit
def test_accumulated_batches_fold_to_the_same_update(tmp_path):
    params = {}
    for fold in (False, True):
        torch.manual_seed(0)
        module = DACSModule(**tiny_module_kwargs(), accumulate_grad_batches=2, fold_gradients=fold)
        trainer = cpu_trainer(tmp_path, max_steps=3, precision="64-true")
        trainer.fit(module, datamodule=toy_datamodule())
        assert module.uda_step == 3
        params[fold] = module.model.state_dict()
    assert_equal_up_to_reassociation(params[True], params[False])


@pytest.mark.fit
def test_folding_is_opt_in_and_refused_where_it_would_change_the_update(tmp_path):
    def optimizer(**module_kwargs) -> torch.optim.Optimizer:
        module = MinEntModule(**tiny_module_kwargs(), **module_kwargs)
        return module.make_optimizer(module.segmentor_param_groups())

    assert type(optimizer()) is torch.optim.SGD  # off by default
    assert isinstance(optimizer(fold_gradients=True), FoldingSGD)
    conflicts = {
        "gradient_clip_val=1.0": {"gradient_clip_val": 1.0},  # needs the summed gradient's norm
        "optimizer='adamw'": {"optimizer": "adamw"},
        "momentum=0": {"momentum": 0.0},
        "dampening=0.1": {"dampening": 0.1},
        "nesterov=True": {"nesterov": True},
    }
    for named, kwargs in conflicts.items():
        with pytest.raises(
            ValueError, match=f"fold_gradients=True cannot be combined with {named}"
        ):
            MinEntModule(**{**tiny_module_kwargs(), **kwargs}, fold_gradients=True)
        MinEntModule(**{**tiny_module_kwargs(), **kwargs})  # each is fine without folding
    # 16-bit AMP: the gradients stay scaled until the step
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    module = MinEntModule(**tiny_module_kwargs(), fold_gradients=True)
    trainer = cpu_trainer(
        tmp_path, max_steps=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler)]
    )
    with pytest.raises(ValueError, match="fold_gradients=True cannot be combined with 16-bit AMP"):
        trainer.fit(module, datamodule=toy_datamodule())
    with pytest.raises(ValueError, match="dampening=0.1 or nesterov=False"):
        FoldingSGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, dampening=0.1)


@pytest.mark.fit
def test_gradient_norm_logging_sees_the_summed_gradient_without_folding(tmp_path):
    # Lightning's grad_norm in on_before_optimizer_step: with folding off (the default) .grad
    # holds the step's whole gradient, so the logged norm is the summed gradient's.
    from lightning.pytorch.utilities import grad_norm

    class NormLogging(MinEntModule):
        norms: list[float] = []

        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            self.norms.append(float(grad_norm(self.model, norm_type=2)["grad_2.0_norm_total"]))

    torch.manual_seed(0)
    module = NormLogging(**tiny_module_kwargs())
    cpu_trainer(tmp_path, max_steps=2).fit(module, datamodule=toy_datamodule())
    assert len(module.norms) == 2 and all(n > 0 for n in module.norms)


class _SaveAfterBatch(Callback):
    def __init__(self, path, batch_idx: int) -> None:
        self.path, self.batch_idx = path, batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)


@pytest.mark.fit
def test_a_run_checkpointed_between_accumulated_batches_resumes_exactly(tmp_path):
    """Step 2 of 3 has folded one of its two batches when the checkpoint is written."""
    kwargs = dict(tiny_module_kwargs(), accumulate_grad_batches=2, fold_gradients=True)
    torch.manual_seed(0)
    straight = MinEntModule(**kwargs)
    path = tmp_path / "mid.ckpt"
    cpu_trainer(tmp_path, max_steps=3, callbacks=[_SaveAfterBatch(path, batch_idx=2)]).fit(
        straight, datamodule=toy_datamodule()
    )
    saved = torch.load(path, weights_only=False)
    assert saved["uda"]["accumulated"] == 1
    assert any(s.get("folded") for s in saved["optimizer_states"][0]["state"].values())

    torch.manual_seed(123)
    resumed = MinEntModule(**kwargs)
    cpu_trainer(tmp_path / "resume", max_steps=3).fit(
        resumed, datamodule=toy_datamodule(), ckpt_path=path
    )
    assert resumed.uda_step == 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


@pytest.mark.fit
def test_non_finite_folded_gradients_are_never_checkpointed(tmp_path):
    module = MinEntModule(**tiny_module_kwargs(), accumulate_grad_batches=2, fold_gradients=True)
    trainer = cpu_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=toy_datamodule())
    optimizer = trainer.optimizers[0]
    p = next(module.model.parameters())
    p.grad = torch.full_like(p, float("nan"))
    optimizer.fold_gradients()
    with pytest.raises(FloatingPointError, match="folded since optimiser step 1 hold NaN or inf"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


@pytest.mark.fit
def test_one_backward_per_step_trains_exactly_as_torch_sgd(tmp_path):
    from lightning_uda.methods import SourceOnlyModule

    params = {}
    for fold in (False, True):
        torch.manual_seed(0)
        module = SourceOnlyModule(**tiny_module_kwargs(), fold_gradients=fold)
        cpu_trainer(tmp_path, max_steps=4).fit(module, datamodule=toy_datamodule())
        params[fold] = module.model.state_dict()
    for name, value in params[False].items():
        assert torch.equal(params[True][name], value), name
