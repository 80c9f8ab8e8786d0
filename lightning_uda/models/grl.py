"""Gradient reversal layer and the DANN coefficient schedule.

Gradient reversal comes from Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation" (ICML 2015), and Ganin et al., "Domain-Adversarial Training of Neural Networks"
(JMLR 2016): the layer is the identity in the forward pass and multiplies the gradient by
``-λ`` in the backward pass, so one optimiser step trains the domain classifier to separate the
domains while it trains the feature extractor to confuse it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradientReversal", "dann_coefficient", "gradient_reversal"]


def _check_coeff(coeff: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``coeff`` is a Python number or a 0-d tensor."""
    if isinstance(coeff, Tensor):
        if coeff.dim() != 0:
            raise ValueError(
                f"coeff must be a float or a 0-d tensor, got shape {tuple(coeff.shape)}"
            )
    elif isinstance(coeff, bool) or not isinstance(coeff, numbers.Real):
        raise ValueError(f"coeff must be a float or a 0-d tensor, got {type(coeff).__name__}")


class _GradientReversalFunction(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-coeff``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float | Tensor) -> Tensor:
        # A detached coefficient: no gradient flows to it, and ctx holds no graph.
        ctx.coeff = coeff.detach() if isinstance(coeff, Tensor) else float(coeff)
        # A copy, not a view, so that in-place ops on the output never touch the input.
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        # Plain tensor ops, so create_graph=True (double backward) works too.
        return grad_output * (-ctx.coeff), None


def gradient_reversal(x: Tensor, coeff: float | Tensor = 1.0) -> Tensor:
    """Gradient reversal: ``y = x`` forward, ``dL/dx = -coeff · dL/dy`` backward.

    The output is a copy of ``x`` (same values, dtype and device) attached to the graph; its
    backward multiplies the incoming gradient by ``-coeff``. No gradient flows to ``coeff``, even
    when it is a tensor that requires grad. ``coeff = 0`` blocks the gradient (it becomes zeros);
    a negative ``coeff`` passes a scaled, un-reversed gradient.

    Args:
        x: any tensor.
        coeff: the reversal coefficient ``λ``: a Python number or a 0-d tensor (any device; a
            0-d tensor keeps ``grad``'s dtype, as in any 0-d tensor product).

    Returns:
        A copy of ``x`` whose gradient is reversed and scaled by ``coeff``.

    Raises:
        ValueError: if ``coeff`` is neither a number nor a 0-d tensor.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> (2.0 * gradient_reversal(x, coeff=0.5)).sum().backward()
        >>> x.grad
        tensor([-1., -1., -1.])
    """
    _check_coeff(coeff)
    return _GradientReversalFunction.apply(x, coeff)


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal`, with a settable coefficient.

    Set ``coeff`` between steps to follow a schedule, e.g. ``layer.coeff =
    dann_coefficient(step / max_steps)`` (what transfer-learning libraries' warm-start reversal
    layers do internally with an iteration counter; here the caller owns the schedule).

    Args:
        coeff: the reversal coefficient ``λ`` (a Python number or a 0-d tensor).

    Example:
        >>> layer = GradientReversal(coeff=0.5)
        >>> layer
        GradientReversal(coeff=0.5)
        >>> x = torch.ones(2, requires_grad=True)
        >>> layer(x).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """

    def __init__(self, coeff: float | Tensor = 1.0) -> None:
        super().__init__()
        _check_coeff(coeff)
        self.coeff = coeff

    def forward(self, x: Tensor) -> Tensor:
        """Identity on ``x``; the gradient is multiplied by ``-self.coeff``."""
        return gradient_reversal(x, self.coeff)

    def extra_repr(self) -> str:
        coeff = self.coeff.item() if isinstance(self.coeff, Tensor) else self.coeff
        return f"coeff={coeff}"


def dann_coefficient(
    progress: float, gamma: float = 10.0, low: float = 0.0, high: float = 1.0
) -> float:
    """DANN's reversal-coefficient schedule: ``low + (high − low)·(2 / (1 + exp(−γ·p)) − 1)``.

    Ganin & Lempitsky (2015) use ``λ_p = 2 / (1 + exp(−γ·p)) − 1`` with ``γ = 10`` and ``p`` the
    training progress from 0 to 1, so that ``λ`` rises smoothly from 0 and the domain
    classifier's noisy early gradients barely reach the features. ``low`` and ``high`` rescale
    it to rise from ``low`` (at ``p = 0``) towards ``high`` (reached as ``γ·p → ∞``; at ``p = 1``
    with ``γ = 10`` it is 99.99 % of the way). This is the form of the Transfer-Learning-Library's
    (tllib) ``WarmStartGradientReverseLayer`` (``lo``/``hi``, ``alpha`` = ``γ``, and
    ``p = iter_num / max_iters``), except that ``p`` is clipped here to ``[0, 1]``, so the value
    stays put after the last planned step instead of creeping on.

    Args:
        progress: training progress ``p`` (e.g. ``step / max_steps``); clipped to ``[0, 1]``.
        gamma: steepness ``γ`` (> 0).
        low: value at ``p = 0``.
        high: limit of the schedule.

    Returns:
        ``λ_p`` as a Python float.

    Raises:
        ValueError: if ``gamma`` is not a finite positive number or ``progress`` is NaN.

    Example:
        >>> dann_coefficient(0.0)
        0.0
        >>> round(dann_coefficient(0.5), 7)
        0.9866143
    """
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0.0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    p = float(progress)
    if math.isnan(p):
        raise ValueError("progress must be a number in [0, 1], got nan")
    p = min(max(p, 0.0), 1.0)
    return low + (high - low) * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
