"""MIC's masked images (Hoyer et al., CVPR 2023): random square blocks of an image are blanked."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["block_mask"]


def block_mask(
    shape: Sequence[int] | torch.Size,
    block_size: int = 64,
    ratio: float = 0.7,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """MIC's keep-mask: 1 where the image stays, 0 on masked blocks.

    A ``B×1×round(H/block_size)×round(W/block_size)`` uniform draw is kept where it exceeds
    ``ratio`` (so about ``1 − ratio`` of the blocks stay) and nearest-upsampled to ``H×W``, as
    MIC's ``BlockMaskGenerator``. ``round`` is Python's (halves to even), as there; when ``H`` is
    not a multiple of ``block_size`` the blocks are the cells of that nearest-neighbour grid
    (``F.interpolate`` mode ``"nearest"``: output row ``i`` takes grid row
    ``floor(i · grid_h / H)``). Multiply a normalised image by the mask to blank the masked
    pixels (they become 0 in the normalised space, as in MIC).

    Args:
        shape: ``(B, C, H, W)`` of the images (or ``(B, H, W)``).
        block_size: side of a block in pixels (64 in MIC at 512×512 crops).
        ratio: masked fraction of the blocks (0.7 in MIC); 0 keeps everything (a draw in [0, 1)
            exceeds 0 almost surely), 1 masks everything.
        generator: random source (CPU or on ``device``); the global RNG when ``None``.
        device: where the mask lives (default: the generator's device).

    Returns:
        ``B×1×H×W`` float tensor of 0s and 1s.
    """
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (B, C, H, W) or (B, H, W), got {tuple(shape)}")
    if block_size < 1 or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"block_size must be >= 1 and ratio in [0, 1], got {block_size}, {ratio}")
    batch, height, width = int(shape[0]), int(shape[-2]), int(shape[-1])
    grid = (max(1, round(height / block_size)), max(1, round(width / block_size)))
    rng_device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.rand((batch, 1, *grid), generator=generator, device=rng_device)
    keep = (draw > ratio).float()
    if device is not None:
        keep = keep.to(device)
    return F.interpolate(keep, size=(height, width), mode="nearest")
