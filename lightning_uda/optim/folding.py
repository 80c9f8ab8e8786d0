"""`FoldingSGD`: momentum SGD that adds each backward's gradients to its momentum buffer.

Why it exists: the library's methods back-propagate their losses one at a time (source CE, then
the target or mixed loss), so only one forward's activations are alive at once. Between those
backwards, ``.grad`` holds a full copy of the segmentor's gradients while the next forward runs.
Momentum SGD is linear in the gradient, so the step's summed gradient never has to exist: after
each backward its gradients can be added to the momentum buffer (which SGD keeps anyway) and
dropped. torch's SGD has no entry point for that, hence this subclass. It is opt-in
(``UDAModule(fold_gradients=True)``); ``benchmarks/README.md`` has what it saves.

One step of ``torch.optim.SGD`` (no dampening, no Nesterov) on the summed gradient ``g = g₁ + … +
gₙ`` is::

    b ← μ·b + (g + λ·p)        (b ← g + λ·p at the first step)
    p ← p − η·b

:meth:`FoldingSGD.fold_gradients` does, per parameter: at the first fold of a step
``b ← μ·b + (g₁ + λ·p)`` (torch's arithmetic), at each later fold ``b ← b + gᵢ``; then it drops
``.grad``. :meth:`FoldingSGD.step` folds what is left in ``.grad`` and applies ``p ← p − η·b``.
That is torch's update up to the order of floating-point additions, and torch's bit for bit when a
step folds once (one backward per step). Learning rates may change between folds and the step
(the poly schedule steps after the optimiser): only the step uses η.

A parameter with no gradient in any backward of a step is skipped, as torch's SGD skips it. The
per-parameter flag ``"folded"`` lives in the optimiser state, so a checkpoint written between the
backwards of one step (``accumulate_grad_batches > 1``) resumes with the partial sum.

What cannot fold, and is refused with an error rather than silently not folded (see
:class:`~lightning_uda.optim.OptimizerSettings`): momentum 0 (no buffer), dampening and Nesterov
(not linear in the step's summed gradient in the way above), gradient clipping (needs the norm of
the summed gradient) and 16-bit AMP with a loss scaler (gradients stay scaled until the step).
``.grad`` is empty when ``on_before_optimizer_step`` runs, so gradient-norm logging
(``lightning.pytorch.utilities.grad_norm``) reports only the last backward: leave folding off for
it.
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
        *,
        dampening: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if not momentum > 0:
            raise ValueError(
                f"FoldingSGD folds gradients into the momentum buffer, so momentum must be > 0; "
                f"got {momentum}. Use torch.optim.SGD for plain SGD."
            )
        if dampening or nesterov:
            raise ValueError(
                "FoldingSGD folds the plain momentum update b ← μ·b + g; with "
                f"dampening={dampening} or nesterov={nesterov} the step is not that update. Use "
                "torch.optim.SGD (fold_gradients=False) for them."
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buffer = state.get("momentum_buffer")
                if state.get("folded", False):
                    buffer.add_(p.grad)
                else:
                    step = p.grad.add(p, alpha=decay) if decay else p.grad
                    if buffer is None:
                        state["momentum_buffer"] = torch.clone(step).detach()
                    else:
                        buffer.mul_(momentum).add_(step)
                    state["folded"] = True
                p.grad = None  # freed one parameter at a time: no second copy of all gradients

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
            for p in group["params"]:
                if p in self.state and self.state[p].pop("folded", False):
                    p.add_(self.state[p]["momentum_buffer"], alpha=-group["lr"])
        return loss
