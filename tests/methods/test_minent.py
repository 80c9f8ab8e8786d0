from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_uda.methods import MinEntModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

# The loss hooks are called outside a Trainer here, where self.log() only warns.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _logits_of(probs: list[list[float]], height: int, width: int) -> torch.Tensor:
    """``1×K×H×W`` logits whose softmax at pixel i (row-major) is ``probs[i]`` (log-probs)."""
    table = torch.tensor(probs).clamp_min(1e-30).log()  # (H·W)×K; p = 0 → softmax exactly 0
    return table.t().reshape(1, -1, height, width)


class FixedLogits(nn.Module):
    """Returns fixed logits (plus a zero parameter, so there is something to optimise)."""

    def __init__(self, main: torch.Tensor, aux: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.register_buffer("main", main)
        self.register_buffer("aux", aux)
        self.multi_level = aux is not None
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main.expand(x.shape[0], -1, -1, -1) + self.dummy

    def forward_multi(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), self.aux.expand(x.shape[0], -1, -1, -1) + self.dummy


# Normalised entropies (K = 2, so log2 K = 1), by hand:
# (0.5, 0.5): -2 · 0.5 · log2 0.5 = 1
# (0.8, 0.2): -(0.8 · log2 0.8 + 0.2 · log2 0.2) = 0.8 · 0.321928 + 0.2 · 2.321928 = 0.721928
# (1, 0): 0
H_HALF, H_82, H_ONE = 1.0, 0.7219280949, 0.0
PIXEL_PROBS = [[0.5, 0.5], [0.8, 0.2], [1.0, 0.0], [0.2, 0.8]]


def test_entropy_term_equals_lambda_times_hand_computed_entropy():
    main = _logits_of(PIXEL_PROBS, 2, 2)
    module = MinEntModule(FixedLogits(main), num_classes=2, ent_weight=0.01)
    batch = {"target": {"image": torch.zeros(3, 3, 2, 2)}}
    (name, loss), *rest = list(module.adaptation_losses(batch))
    expected = (H_HALF + H_82 + H_ONE + H_82) / 4  # mean over pixels (and the 3 equal images)
    assert name == "entropy" and rest == []
    assert float(loss.detach()) == pytest.approx(0.01 * expected, rel=1e-6)


def test_default_weights_are_advent_s():
    module = MinEntModule(FixedLogits(_logits_of(PIXEL_PROBS, 2, 2)), num_classes=2)
    assert module.ent_weights == {"main": 0.001, "aux": 0.0002}
    assert module.aux_seg_weight == 0.1


def test_uniform_prediction_upsampled_has_entropy_one_and_no_mcc_by_default():
    # 4 classes, uniform logits at 2×2 upsampled to the 8×8 input: normalised entropy 1 everywhere
    module = MinEntModule(FixedLogits(torch.zeros(1, 4, 2, 2)), num_classes=4, ent_weight=1.0)
    losses = dict(module.adaptation_losses({"target": {"image": torch.zeros(2, 3, 8, 8)}}))
    assert list(losses) == ["entropy"]
    assert float(losses["entropy"].detach()) == pytest.approx(1.0, rel=1e-6)


def test_multi_level_entropy_and_auxiliary_source_loss():
    main = _logits_of([[0.8, 0.2]] * 4, 2, 2)
    aux = _logits_of([[0.5, 0.5]] * 4, 2, 2)
    module = MinEntModule(FixedLogits(main, aux), num_classes=2)
    assert module.levels == ("main", "aux")
    losses = dict(module.adaptation_losses({"target": {"image": torch.zeros(1, 3, 2, 2)}}))
    assert float(losses["entropy"].detach()) == pytest.approx(
        0.001 * H_82 + 0.0002 * H_HALF, rel=1e-6
    )
    # source CE, label 0 everywhere but one ignored pixel: main -ln 0.8, aux -ln 0.5, aux × 0.1
    mask = torch.tensor([[[0, 0], [0, 255]]])
    source = module.source_loss({"image": torch.zeros(1, 3, 2, 2), "mask": mask})
    assert float(source.detach()) == pytest.approx(-math.log(0.8) + 0.1 * math.log(2), rel=1e-6)


@pytest.mark.fit
def test_minent_fits_with_finite_losses(tmp_path):
    torch.manual_seed(0)
    module = MinEntModule(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=toy_datamodule())
    assert module.uda_step == 3
    for key in ("train/loss_source", "train/loss_entropy", "train/entropy_main", "train/loss"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    entropy = float(trainer.callback_metrics["train/entropy_main"])
    assert 0.0 <= entropy <= 1.0  # a normalised entropy
