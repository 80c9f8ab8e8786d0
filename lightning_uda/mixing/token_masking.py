"""Token masking for ViTs: MIC's masked consistency as VFM-UDA does it (Englert et al., 2024).

Instead of zeroing image blocks (:func:`~lightning_uda.mixing.block_mask`), a fraction of the
ViT's patch tokens is replaced by a learned mask token right after the patch embedding (before
the position embeddings are added, so a masked token still knows where it is).

Where this differs from the references: VFM-UDA draws an independent Bernoulli(ratio) per token,
so the masked share varies from image to image; here exactly ``round(ratio · N)`` of each image's
``N`` tokens are masked, chosen uniformly without replacement (the expected share is the same).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_token_mask", "random_token_mask"]


def random_token_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = 0.7,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A ``B×h×w`` bool mask, True on exactly ``round(ratio · h · w)`` tokens of each image.

    Args:
        batch: B.
        grid: the patch grid ``(h, w)``.
        ratio: masked share in [0, 1] (0.7 in VFM-UDA).
        generator: random source (CPU or on ``device``); the global RNG when ``None``.
        device: where the mask lives (default: the generator's device).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"token mask ratio must be in [0, 1], got {ratio}")
    height, width = grid
    count = round(ratio * height * width)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand((batch, height * width), generator=generator, device=rng_device)
    order = scores.argsort(dim=1)
    mask = torch.zeros((batch, height * width), dtype=torch.bool, device=rng_device)
    mask.scatter_(1, order[:, :count], True)
    mask = mask.view(batch, height, width)
    return mask if device is None else mask.to(device)


def apply_token_mask(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """``tokens`` with the masked ones replaced by ``mask_token`` (out of place).

    Args:
        tokens: ``B×h×w×C`` or ``B×N×C`` patch tokens.
        mask: bool, ``B×h×w`` or ``B×N`` (True = replace).
        mask_token: ``C`` or ``1×C`` learned token (receives the gradient of every use).
    """
    flat_mask = mask.reshape(mask.shape[0], -1, 1)
    shape = tokens.shape
    flat = tokens.reshape(shape[0], -1, shape[-1])
    if flat_mask.shape[1] != flat.shape[1]:
        raise ValueError(
            f"token mask of {flat_mask.shape[1]} tokens per image for {flat.shape[1]} tokens "
            f"(tokens {tuple(shape)}, mask {tuple(mask.shape)})"
        )
    token = mask_token.reshape(1, 1, -1).to(flat.dtype)
    return torch.where(flat_mask.to(flat.device), token, flat).reshape(shape)
