"""`FoldingSGD`: momentum SGD that can fold gradients into its momentum buffer between backwards.

Why it exists: every method of the library back-propagates its losses one at a time (source CE,
then the target or mixed loss) so that only one forward's activations are alive at once. The
gradients of the first backward, a full copy of the segmentor's parameters, are still held while
the second forward runs, and on the CPU benchmark that copy is most of what AdvEnt holds on top of
SourceOnly. Momentum SGD is linear in the gradient, so the sum of the gradients of one step does
not have to exist: after each backward the gradient can be added to the momentum buffer (which
SGD keeps anyway) and dropped. torch's SGD has no such entry point, hence this subclass.

One step of ``torch.optim.SGD`` (no dampening, no Nesterov) on the summed gradient ``g = g₁ + … +
gₙ`` is::

    b ← μ·b + (g + λ·p)        (b ← g + λ·p at the first step)
    p ← p − η·b

The first fold of a step does ``b ← μ·b + (g₁ + λ·p)`` as torch does, each later fold
``b ← b + gᵢ``, and each drops its gradients; :meth:`FoldingSGD.step` folds what is left in
``.grad`` and applies ``p ← p − η·b``. That is the same update up to the order of floating-point
additions, and torch's exactly when a step folds once (one backward per step). Learning rates
may change between folds and the step (the poly schedule steps after the optimiser): only the
step uses η.

A parameter with no gradient in any backward of a step is skipped, as torch's SGD skips it. The
per-parameter flag ``"folded"`` lives in the optimiser state, so a checkpoint written between the
backwards of one step (``accumulate_grad_batches > 1``) resumes with the partial sum.

Not foldable, and so not folded by :class:`~lightning_uda.methods.UDAModule`: gradient clipping
(the norm of the summed gradient is needed first), 16-bit AMP with a loss scaler (the gradients are
scaled until the step), and momentum 0 (no buffer to fold into). Callbacks that read ``.grad`` in
``on_before_optimizer_step`` see only the last backward's gradients; pass ``fold_gradients=False``
to the module for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["FoldingSGD"]


class FoldingSGD(torch.optim.SGD):
    """``torch.optim.SGD`` with momentum and weight decay, plus :meth:`fold_gradients`.

    Without calls to :meth:`fold_gradients` it is torch's SGD (its own :meth:`step` runs). The
    state dict has torch's layout (``momentum_buffer`` per parameter) plus the ``folded`` flag of
    parameters folded since the last step.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: μ, > 0.
        weight_decay: λ (L2, added to the gradient as torch's SGD does).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = FoldingSGD([w], lr=0.1, momentum=0.9)
        >>> (2 * w).sum().backward(); opt.fold_gradients()    # first loss: gradient 2, dropped
        >>> w.grad is None
        True
        >>> (3 * w).sum().backward(); opt.step()               # second loss: gradient 3
        >>> w.detach()                                          # 1 − 0.1·(2 + 3)
        tensor([0.5000, 0.5000, 0.5000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float,
        weight_decay: float = 0.0,
    ) -> None:
        if not momentum > 0:
            raise ValueError(
                f"FoldingSGD folds gradients into the momentum buffer, so momentum must be > 0; "
                f"got {momentum}. Use torch.optim.SGD for plain SGD."
            )
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @property
    def has_folded(self) -> bool:
        """Whether gradients were folded since the last :meth:`step`."""
        return any(state.get("folded", False) for state in self.state.values())

    def folded_sums_finite(self) -> bool:
        """Whether the momentum buffers holding folded gradients (partial sums between steps)
        are all finite; ``True`` when nothing is folded."""
        buffers = [
            state["momentum_buffer"]
            for state in self.state.values()
            if state.get("folded", False) and "momentum_buffer" in state
        ]
        return all(bool(torch.isfinite(b).all()) for b in buffers)

    @torch.no_grad()
    def fold_gradients(self) -> None:
        """Add every ``.grad`` to its momentum buffer and drop it (``.grad = None``).

        The first fold of a step does torch's arithmetic (``b ← μ·b + (g + λ·p)``, ``b ← g + λ·p``
        at the first step), so a step with one fold is torch's SGD step bit for bit; later folds
        add their gradient.
        """
        for group in self.param_groups:
            momentum, decay = group["momentum"], group["weight_decay"]
            later = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if state.get("folded", False):
                    later.append(p)
                    continue
                step = p.grad.add(p, alpha=decay) if decay else p.grad
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    state["momentum_buffer"] = torch.clone(step).detach()
                else:
                    buffer.mul_(momentum).add_(step)
                state["folded"] = True
                p.grad = None  # freed one parameter at a time: no second copy of all gradients
            if later:
                torch._foreach_add_(
                    [self.state[p]["momentum_buffer"] for p in later], [p.grad for p in later]
                )
                for p in later:
                    p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One SGD step over the folded gradients and those still in ``.grad``."""
        if not self.has_folded:
            return super().step(closure)
        loss = None
        if closure is not None:  # Lightning's precision plugin runs its hooks (clipping) in it
            with torch.enable_grad():
                loss = closure()
        self.fold_gradients()  # what arrived after the last fold
        for group in self.param_groups:
            params = [
                p for p in group["params"] if p in self.state and self.state[p].pop("folded", False)
            ]
            if params:
                buffers = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
