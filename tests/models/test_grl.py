"""Tests for lightning_uda/models/grl.py (gradient reversal and the DANN schedule)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_uda.models.grl import GradientReversal, dann_coefficient, gradient_reversal

COEFFS = [1.0, 0.5, 0.0, 2.5, -0.3]


def test_forward_is_identity_copy() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = gradient_reversal(x, 0.7)
    assert torch.equal(y, x)
    assert y.dtype == x.dtype and y.shape == x.shape
    y.add_(1.0)  # a copy: writing into the output leaves the input alone
    assert not torch.equal(y, x)


@pytest.mark.parametrize("coeff", COEFFS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_gradient_is_reversed_and_scaled(coeff: float, as_tensor: bool) -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64)
    c = torch.tensor(coeff) if as_tensor else coeff
    (grad,) = torch.autograd.grad((w * gradient_reversal(x, c)).sum(), x)
    value = c.item() if isinstance(c, torch.Tensor) else c  # float32 tensor: rounded coeff
    torch.testing.assert_close(grad, -value * w, rtol=0, atol=1e-15)
    assert grad.dtype == torch.float64  # a float32 0-d coeff does not change grad's dtype


def test_coeff_zero_blocks_gradient() -> None:
    x = torch.randn(5, requires_grad=True)
    (grad,) = torch.autograd.grad(gradient_reversal(x, 0.0).sum(), x)
    assert torch.equal(grad, torch.zeros(5))


def test_no_gradient_to_tensor_coeff() -> None:
    x = torch.randn(4, requires_grad=True)
    c = torch.tensor(0.5, requires_grad=True)
    gradient_reversal(x, c).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -0.5))
    assert c.grad is None


def test_chain_through_layers() -> None:
    """Reversal sits between a feature layer and a head: only the part below it is reversed."""
    x = torch.randn(6, requires_grad=True)
    features = 3.0 * x
    features.retain_grad()
    out = (2.0 * gradient_reversal(features, 0.25)).sum()
    out.backward()
    torch.testing.assert_close(features.grad, torch.full((6,), -0.5))
    torch.testing.assert_close(x.grad, torch.full((6,), -1.5))


def test_double_backward() -> None:
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad((gradient_reversal(x, 2.0) ** 2).sum(), x, create_graph=True)
    torch.testing.assert_close(grad, -4.0 * x)  # d/dx of x² is 2x, reversed and scaled by 2
    # grad = -2 · 2·grl(x): its own graph runs through the reversal once more, (-2)·2·(-2) = 8.
    (grad2,) = torch.autograd.grad(grad.sum(), x)
    torch.testing.assert_close(grad2, torch.full((3,), 8.0, dtype=torch.float64))


def test_invalid_coeff() -> None:
    with pytest.raises(ValueError, match="0-d tensor"):
        gradient_reversal(torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="0-d tensor"):
        GradientReversal(coeff="1")  # type: ignore[arg-type]


def test_module_settable_coeff_and_repr() -> None:
    layer = GradientReversal()
    assert layer.coeff == 1.0
    assert repr(layer) == "GradientReversal(coeff=1.0)"
    x = torch.randn(4, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -1.0))

    layer.coeff = 0.25
    assert "coeff=0.25" in repr(layer)
    x.grad = None
    y = layer(x)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -0.25))

    layer.coeff = torch.tensor(0.5)
    assert "coeff=0.5" in repr(layer)
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -0.5))
    assert list(layer.parameters()) == [] and list(layer.buffers()) == []


def test_dann_coefficient_values() -> None:
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(1.0) == pytest.approx(2.0 / (1.0 + math.exp(-10.0)) - 1.0, abs=1e-15)
    assert dann_coefficient(0.5) == pytest.approx(2.0 / (1.0 + math.exp(-5.0)) - 1.0, abs=1e-15)
    # Hand values (guard the formula itself): tanh(5) and tanh(2.5), since 2/(1+e^-x)-1 = tanh(x/2).
    assert dann_coefficient(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_coefficient(0.5) == pytest.approx(0.9866143, abs=1e-7)
    assert dann_coefficient(0.1) == pytest.approx(0.4621172, abs=1e-7)  # tanh(0.5)
    assert dann_coefficient(0.3, gamma=1.0) == pytest.approx(math.tanh(0.15), abs=1e-15)


def test_dann_coefficient_monotone_and_clipped() -> None:
    values = [dann_coefficient(i / 100) for i in range(101)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v < 1.0 for v in values)
    assert dann_coefficient(-0.5) == dann_coefficient(0.0)
    assert dann_coefficient(3.0) == dann_coefficient(1.0)


def test_dann_coefficient_low_high() -> None:
    assert dann_coefficient(0.0, low=0.2, high=0.8) == pytest.approx(0.2)
    for p in (0.1, 0.5, 1.0):
        expected = 0.2 + 0.6 * dann_coefficient(p)
        assert dann_coefficient(p, low=0.2, high=0.8) == pytest.approx(expected, abs=1e-15)
    # A decreasing schedule is allowed (high < low).
    assert dann_coefficient(1.0, low=1.0, high=0.0) == pytest.approx(1.0 - dann_coefficient(1.0))


@pytest.mark.parametrize("gamma", [0.0, -1.0, math.inf, math.nan])
def test_dann_coefficient_bad_gamma(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        dann_coefficient(0.5, gamma=gamma)


def test_dann_coefficient_nan_progress() -> None:
    with pytest.raises(ValueError, match="progress"):
        dann_coefficient(math.nan)
