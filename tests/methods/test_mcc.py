from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_uda.methods import MCCModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

# The loss hooks are called outside a Trainer here, where self.log() only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


class ConstantLogits(nn.Module):
    """The same logits at every pixel of every image."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.logits = nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w)


def test_defaults_are_the_paper_s():
    module = MCCModule(ConstantLogits(torch.zeros(3)), num_classes=3)
    assert module.hparams.mcc_weight == 1.0
    assert module.mcc_loss.temperature == 2.5


def test_mcc_term_equals_closed_form_for_identical_predictions():
    # All N pixels predict the same p (all p_k > 0): the entropy weights are all 1, C = N p pᵀ, and
    # every row of the row-normalised C̃ equals pᵀ, so Σ C̃ = K and tr C̃ = Σ_k p_k = 1:
    # L = (K − 1) / K whatever p is. K = 3 → 2/3.
    module = MCCModule(
        ConstantLogits(torch.tensor([2.0, -1.0, 0.5])), num_classes=3, mcc_weight=0.5
    )
    losses = dict(module.adaptation_losses({"target": {"image": torch.zeros(2, 3, 4, 4)}}))
    assert list(losses) == ["mcc"]
    assert float(losses["mcc"].detach()) == pytest.approx(0.5 * 2 / 3, rel=1e-5)


def test_zero_weight_is_rejected():
    with pytest.raises(ValueError, match="SourceOnlyModule"):
        MCCModule(ConstantLogits(torch.zeros(3)), num_classes=3, mcc_weight=0.0)


@pytest.mark.fit
def test_mcc_fits_with_finite_losses(tmp_path):
    torch.manual_seed(0)
    module = MCCModule(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 3
    for key in ("train/loss_source", "train/loss_mcc", "train/loss"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert 0.0 <= float(trainer.callback_metrics["train/loss_mcc"]) < 1.0
