from __future__ import annotations

import pytest
import torch

from lightning_uda.callbacks import PseudoLabelThreshold


def test_confident_logits_give_q_one_and_uniform_give_zero():
    labeler = PseudoLabelThreshold(threshold=0.968)
    confident = torch.zeros(2, 3, 4, 4)
    confident[:, 1] = 20.0  # softmax max-prob ≈ 1
    labels, weights = labeler(confident)
    assert torch.equal(labels, torch.ones(2, 4, 4, dtype=torch.long))
    assert torch.allclose(weights, torch.ones(2, 4, 4))

    uniform = torch.zeros(2, 3, 4, 4)  # max-prob = 1/3 < 0.968
    _, weights = labeler(uniform)
    assert torch.allclose(weights, torch.zeros(2, 4, 4))


def test_uniform_weight_is_fraction_of_confident_pixels():
    # 1 of 4 pixels confident → q = 0.25 on every pixel (one scalar per batch, as DACS).
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = 10.0  # p = 1/(1+e^-10) ≈ 0.99995 ≥ 0.968
    logits[0, 0, 1, 1] = 3.0  # p = 1/(1+e^-3) ≈ 0.9526 < 0.968
    _, weights = PseudoLabelThreshold(threshold=0.968)(logits)
    assert torch.allclose(weights, torch.full((1, 2, 2), 0.25))
    _, pixel = PseudoLabelThreshold(threshold=0.968, weighting="pixel")(logits)
    assert torch.equal(pixel, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabelThreshold(threshold=1.5)
    with pytest.raises(ValueError, match="weighting"):
        PseudoLabelThreshold(weighting="soft")
