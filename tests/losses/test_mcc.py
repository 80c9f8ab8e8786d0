"""Tests for lightning_uda/losses/mcc.py against an independent closed form (numpy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lightning_uda.losses.mcc as mcc_module
from lightning_uda.losses import MinimumClassConfusionLoss, minimum_class_confusion


def closed_form_mcc(logits: np.ndarray, temperature: float = 2.5) -> float:
    """MCC paper, written with loops: ``1 − mean_j(C_jj / Σ_j' C_jj')``."""
    num_samples, num_classes = logits.shape
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    certainty = [1.0 + np.exp(sum(p * np.log(p) for p in row)) for row in probs]  # 1 + e^{-H_i}
    weights = [num_samples * c / sum(certainty) for c in certainty]
    confusion = np.zeros((num_classes, num_classes))
    for j in range(num_classes):
        for k in range(num_classes):
            confusion[j, k] = sum(
                weights[i] * probs[i, j] * probs[i, k] for i in range(num_samples)
            )
    return 1.0 - np.mean([confusion[j, j] / confusion[j].sum() for j in range(num_classes)])


@pytest.mark.parametrize(("num_samples", "num_classes", "scale"), [(16, 4, 1.0), (7, 6, 5.0)])
def test_matches_closed_form(num_samples: int, num_classes: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(num_samples)
    logits = scale * torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
    expected = closed_form_mcc(logits.numpy())
    assert minimum_class_confusion(logits).item() == pytest.approx(expected, abs=1e-10)
    assert minimum_class_confusion(logits.float()).item() == pytest.approx(expected, abs=1e-5)


def test_temperature_is_applied() -> None:
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = closed_form_mcc(logits.numpy(), temperature=1.0)
    assert minimum_class_confusion(logits, temperature=1.0).item() == pytest.approx(expected)


def test_confident_distinct_classes_give_zero() -> None:
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    logits = 50.0 * torch.nn.functional.one_hot(labels, 4).float()
    assert minimum_class_confusion(logits).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_predictions_give_one_minus_one_over_k() -> None:
    # All probabilities 1/K: every C̃ entry is 1/K, so L = 1 − K·(1/K)/K = 1 − 1/K.
    assert minimum_class_confusion(torch.zeros(5, 4)).item() == pytest.approx(0.75, abs=1e-6)


def test_range_zero_to_one() -> None:
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        logits = 10.0 * torch.randn(12, 5, generator=generator)
        loss = minimum_class_confusion(logits).item()
        assert 0.0 <= loss < 1.0


def test_invariant_to_sample_order() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    permuted = logits[torch.randperm(20, generator=generator)]
    assert minimum_class_confusion(permuted).item() == pytest.approx(
        minimum_class_confusion(logits).item(), abs=1e-12
    )


def test_gradient_treats_entropy_weights_as_constants() -> None:
    # Reference gradient from plain float64 torch ops with w computed outside the graph.
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    minimum_class_confusion(logits).backward()
    reference_logits = logits.detach().clone().requires_grad_()
    probs = torch.softmax(reference_logits / 2.5, dim=1)
    p = probs.detach()
    certainty = 1 + torch.exp((p * p.log()).sum(1))
    weights = 9 * certainty / certainty.sum()
    confusion = (probs * weights[:, None]).T @ probs
    (1 - (confusion.diagonal() / confusion.sum(1)).mean()).backward()
    assert torch.allclose(logits.grad, reference_logits.grad, atol=1e-12)


def test_segmentation_loss_equals_closed_form_over_all_pixels() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64)
    pixels = logits.permute(0, 2, 3, 1).reshape(-1, 4).numpy()  # all 30 pixels as samples
    loss = MinimumClassConfusionLoss(num_pixels=100)(logits)
    assert loss.item() == pytest.approx(closed_form_mcc(pixels), abs=1e-10)


def test_segmentation_samples_at_most_num_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    seen_shapes = []
    original = mcc_module.minimum_class_confusion

    def recording(samples: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
        seen_shapes.append(tuple(samples.shape))
        return original(samples, temperature=temperature)

    monkeypatch.setattr(mcc_module, "minimum_class_confusion", recording)
    logits = torch.randn(2, 6, 32, 32)
    loss = MinimumClassConfusionLoss(num_pixels=100)(logits, generator=torch.Generator())
    assert seen_shapes == [(100, 6)]
    assert torch.isfinite(loss)


def test_sampled_pixels_are_distinct_real_pixels() -> None:
    generator = torch.Generator().manual_seed(6)
    # Encode each pixel's flat index in channel 0 so samples can be traced back.
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    logits[:, 0] = torch.arange(2 * 64, dtype=torch.float32).view(2, 8, 8)
    samples = MinimumClassConfusionLoss(num_pixels=50).sample_pixels(logits, generator=generator)
    assert samples.shape == (50, 3)
    flat_index = samples[:, 0].long()
    assert flat_index.unique().numel() == 50
    image, pixel = flat_index // 64, flat_index % 64
    assert torch.equal(samples, logits.flatten(2)[image, :, pixel])


def test_segmentation_respects_valid_mask() -> None:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    logits[:, 0] = torch.arange(2 * 64, dtype=torch.float32).view(2, 8, 8)
    valid = torch.rand(2, 8, 8, generator=generator) < 0.3
    loss_fn = MinimumClassConfusionLoss(num_pixels=10)
    samples = loss_fn.sample_pixels(logits, valid=valid, generator=generator)
    assert samples.shape[0] == 10
    assert valid.reshape(-1)[samples[:, 0].long()].all()
    # Fewer valid pixels than num_pixels: all of them are used.
    few = torch.zeros(2, 8, 8, dtype=torch.bool)
    few[0, 1, 2] = few[1, 7, 7] = few[1, 0, 0] = True
    samples = MinimumClassConfusionLoss(num_pixels=10).sample_pixels(logits, valid=few)
    assert sorted(samples[:, 0].long().tolist()) == [0 * 64 + 10, 64 + 0, 64 + 63]


def test_segmentation_without_valid_pixels_is_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = MinimumClassConfusionLoss()(logits, valid=torch.zeros(1, 4, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()


def test_segmentation_valid_size_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="upsample"):
        MinimumClassConfusionLoss()(torch.randn(1, 3, 4, 4), valid=torch.ones(1, 8, 8).bool())


def test_segmentation_reproducible_with_generator() -> None:
    logits = torch.randn(2, 5, 16, 16, generator=torch.Generator().manual_seed(8))
    loss_fn = MinimumClassConfusionLoss(num_pixels=64)
    first = loss_fn(logits, generator=torch.Generator().manual_seed(0))
    again = loss_fn(logits, generator=torch.Generator().manual_seed(0))
    other = loss_fn(logits, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segmentation_on_cuda_with_cpu_generator() -> None:
    logits = torch.randn(2, 5, 16, 16, device="cuda")
    valid = torch.rand(2, 16, 16, device="cuda") > 0.5
    loss = MinimumClassConfusionLoss(num_pixels=32)(
        logits, valid=valid, generator=torch.Generator().manual_seed(0)
    )
    assert loss.device.type == "cuda" and torch.isfinite(loss)
