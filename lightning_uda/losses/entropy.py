"""AdvEnt's weighted self-information map and the MinEnt entropy loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["entropy_loss", "entropy_map", "entropy_map_from_logits", "channel_softmax"]


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def channel_softmax(logits: Tensor, log: bool = False) -> Tensor:
    """``softmax`` (or ``log_softmax``) over dim 1 that keeps a channels-last layout.

    ``torch.softmax(x, dim=1)`` of a channels-last ``x`` returns a contiguous (NCHW) tensor, so a
    channels-last consumer (AdvEnt's discriminators) pays another full copy. In channels-last
    memory the channels are the innermost dimension: the softmax runs over the last dim of the
    ``B×H×W×C`` view and the result is permuted back, with no copy. Other layouts: dim 1 as usual.
    """
    op = torch.log_softmax if log else torch.softmax
    if _channels_last(logits) and logits.shape[1] > 1:
        return op(logits.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
    return op(logits, dim=1)


class _EntropyMapFromLogits(torch.autograd.Function):
    """``-softmax(z)·log_softmax(z) / ln K`` per channel, saving only ``z`` for the backward.

    Autograd through softmax, log and product keeps four ``B×K×H×W`` tensors alive until the
    backward; this function keeps the logits and recomputes the rest (one extra log-softmax in
    the backward). Written by hand because PyTorch has no fused entropy kernel.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: Tensor) -> Tensor:
        ctx.save_for_backward(logits)
        log_p = channel_softmax(logits, log=True)
        return -(log_p.exp() * log_p) / math.log(logits.shape[1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (logits,) = ctx.saved_tensors
        log_p = channel_softmax(logits, log=True)
        p = log_p.exp()
        # dI_c/dp_c = -(ln p_c + 1) / ln K; then the softmax Jacobian p_j (g_j - Σ_c p_c g_c).
        g = grad * (log_p + 1.0) * (-1.0 / math.log(logits.shape[1]))
        return p * (g - (p * g).sum(dim=1, keepdim=True))


def entropy_map_from_logits(logits: Tensor) -> Tensor:
    """:func:`entropy_map` of ``softmax(logits)``, computed from the logits with less memory.

    Equal to ``entropy_map(torch.softmax(logits, 1))`` (up to rounding; ``log_softmax`` needs no
    clamp at ``p = 0``) with the same gradient, but only ``logits`` is kept for the backward
    (AdvEnt's maps are ``K×H×W`` at the input resolution: 70 MB per 1280×720 GTA5 frame). A
    channels-last input gives a channels-last map (:func:`channel_softmax`).

    Args:
        logits: ``B×C×H×W`` scores (``C >= 2``).

    Returns:
        ``B×C×H×W`` weighted self-information map.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"entropy needs at least 2 channels, got logits {tuple(logits.shape)}")
    return _EntropyMapFromLogits.apply(logits)


def entropy_map(probs: Tensor) -> Tensor:
    """Weighted self-information ``I = -p·log2(p) / log2(C)`` per channel (AdvEnt, eq. 1).

    The log argument is clamped at the dtype's smallest normal number (AdvEnt adds 1e-30), so
    ``p = 0`` gives the value 0 and a finite gradient.

    Args:
        probs: ``B×C×H×W`` softmax probabilities (``C >= 2``).

    Returns:
        ``B×C×H×W`` map; its channel sum is the normalised entropy in ``[0, 1]``.
    """
    num_classes = probs.shape[1]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 channels, got probs {tuple(probs.shape)}")
    tiny = torch.finfo(probs.dtype).tiny
    return -probs * torch.log2(probs.clamp_min(tiny)) / math.log2(num_classes)


def entropy_loss(probs: Tensor) -> Tensor:
    """MinEnt loss: mean over pixels (B, H, W) of the channel sum of :func:`entropy_map`.

    Args:
        probs: ``B×C×H×W`` softmax probabilities.

    Returns:
        Scalar in ``[0, 1]``.
    """
    return entropy_map(probs).sum(dim=1).mean()
