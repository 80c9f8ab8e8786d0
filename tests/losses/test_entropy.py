"""Tests for lightning_uda/losses/entropy.py (AdvEnt weighted self-information)."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.losses import entropy_loss, entropy_map


@pytest.mark.parametrize("num_classes", [2, 5, 19])
def test_uniform_softmax_gives_one_over_c_per_channel(num_classes: int) -> None:
    probs = torch.full((2, num_classes, 3, 4), 1.0 / num_classes)
    information = entropy_map(probs)
    assert information.shape == probs.shape
    # -(1/C)·log2(1/C)/log2(C) = 1/C per channel, channel sum 1 (maximal normalised entropy).
    assert torch.allclose(information, torch.full_like(probs, 1.0 / num_classes), atol=1e-6)
    assert torch.allclose(information.sum(1), torch.ones(2, 3, 4), atol=1e-6)
    assert entropy_loss(probs).item() == pytest.approx(1.0, abs=1e-6)


def test_one_hot_gives_zero() -> None:
    labels = torch.tensor([[[0, 1], [2, 1]]])
    probs = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert torch.equal(entropy_map(probs), torch.zeros_like(probs))
    assert entropy_loss(probs).item() == 0.0


def test_gradient_finite_at_zero_probability() -> None:
    probs = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.0]).view(2, 3, 1, 1).requires_grad_()
    entropy_loss(probs).backward()
    assert torch.isfinite(probs.grad).all()
    logits = torch.tensor([[60.0, -60.0, 0.0]]).view(1, 3, 1, 1).requires_grad_()
    entropy_loss(torch.softmax(logits, dim=1)).backward()
    assert torch.isfinite(logits.grad).all()


def test_hand_computed_two_class() -> None:
    # p = (1/4, 3/4): I_0 = -(1/4)·log2(1/4) = 0.5, I_1 = -(3/4)·log2(3/4) = 0.3112781 (log2 C = 1).
    # Second pixel uniform: I = (0.5, 0.5). Loss = mean over the 2 pixels of the channel sums
    # = (0.8112781 + 1) / 2 = 0.9056391.
    probs = torch.tensor([[[[0.25, 0.5]], [[0.75, 0.5]]]])  # 1×2×1×2
    information = entropy_map(probs)
    assert information[0, :, 0, 0].tolist() == pytest.approx([0.5, 0.3112781], abs=1e-6)
    assert entropy_loss(probs).item() == pytest.approx(0.9056391, abs=1e-6)


def test_hand_computed_three_class_normalisation() -> None:
    # p = (1/2, 1/4, 1/4): entropy 1.5 bits, divided by log2 3 = 1.5849625 -> 0.9463946.
    probs = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1)
    assert entropy_loss(probs).item() == pytest.approx(0.9463946, abs=1e-6)


def test_single_channel_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2 channels"):
        entropy_map(torch.ones(1, 1, 2, 2))


def test_entropy_map_from_logits_equals_the_map_of_the_softmax_with_its_gradient():
    from lightning_uda.losses import entropy_map, entropy_map_from_logits

    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 4, 3, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    ours = entropy_map_from_logits(logits)
    reference = entropy_map(torch.softmax(logits, dim=1))
    torch.testing.assert_close(ours, reference)
    (g_ours,) = torch.autograd.grad((weights * ours).sum(), logits)
    (g_ref,) = torch.autograd.grad((weights * reference).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref)
    assert torch.autograd.gradcheck(entropy_map_from_logits, (logits[:1, :, :2, :2],))
    # a saturated pixel (p = 1 for one class, 0 elsewhere): value and gradient 0, finite
    hard = torch.tensor([[[[200.0]], [[0.0]]]], requires_grad=True)
    out = entropy_map_from_logits(hard)
    out.sum().backward()
    assert torch.equal(out.detach(), torch.zeros_like(out)) and torch.isfinite(hard.grad).all()


@pytest.mark.parametrize("log", [False, True])
def test_channel_softmax_equals_torch_softmax_and_keeps_channels_last(log):
    from lightning_uda.losses import channel_softmax

    torch.manual_seed(0)
    logits = 3 * torch.randn(2, 5, 6, 7, dtype=torch.float64)
    reference = (torch.log_softmax if log else torch.softmax)(logits, dim=1)
    plain = channel_softmax(logits, log=log)
    assert plain.is_contiguous()
    torch.testing.assert_close(plain, reference)
    last = channel_softmax(logits.contiguous(memory_format=torch.channels_last), log=log)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    torch.testing.assert_close(last, reference)


def test_entropy_map_from_channels_last_logits_is_channels_last_with_the_same_gradient():
    from lightning_uda.losses import entropy_map, entropy_map_from_logits

    torch.manual_seed(1)
    logits = 3 * torch.randn(2, 5, 4, 3, dtype=torch.float64)
    weights = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    last = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = entropy_map_from_logits(last)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    reference_logits = logits.clone().requires_grad_()
    reference = entropy_map(torch.softmax(reference_logits, dim=1))
    torch.testing.assert_close(ours, reference)
    (g_ours,) = torch.autograd.grad((weights * ours).sum(), last)
    (g_ref,) = torch.autograd.grad((weights * reference).sum(), reference_logits)
    torch.testing.assert_close(g_ours, g_ref)
