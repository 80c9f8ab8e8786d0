"""AdvEnt's weighted self-information map and the MinEnt entropy loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["entropy_loss", "entropy_map"]


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
