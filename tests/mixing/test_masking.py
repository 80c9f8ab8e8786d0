"""MIC's block mask against its definition: blocks, kept fraction, grid for odd sizes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_uda.mixing import block_mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_values_and_constant_blocks():
    mask = block_mask((2, 3, 128, 192), block_size=64, ratio=0.7, generator=_gen())
    assert mask.shape == (2, 1, 128, 192) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.view(2, 1, 2, 64, 3, 64)
    # every 64×64 block is all 0 or all 1
    assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))


def test_block_values_are_the_thresholded_uniform_draw():
    # the same seeded draw, thresholded by hand: block (i, j) is kept iff u_ij > ratio
    draw = torch.rand((1, 1, 2, 3), generator=_gen(5))
    mask = block_mask((1, 3, 64, 96), block_size=32, ratio=0.4, generator=_gen(5))
    assert torch.equal(mask[0, 0, ::32, ::32], (draw[0, 0] > 0.4).float())


def test_kept_fraction_matches_one_minus_ratio():
    mask = block_mask((100, 3, 10, 10), block_size=1, ratio=0.7, generator=_gen(1))
    n = mask.numel()  # 10,000 independent blocks
    sigma = math.sqrt(0.3 * 0.7 / n)
    assert abs(mask.mean().item() - 0.3) < 3 * sigma


def test_edges_of_the_ratio_and_reproducibility():
    assert block_mask((2, 3, 32, 32), 8, ratio=0.0, generator=_gen()).min() == 1
    assert block_mask((2, 3, 32, 32), 8, ratio=1.0, generator=_gen()).max() == 0
    a = block_mask((2, 3, 32, 32), 8, 0.5, generator=_gen(3))
    assert torch.equal(a, block_mask((2, 3, 32, 32), 8, 0.5, generator=_gen(3)))
    assert not torch.equal(a, block_mask((2, 3, 32, 32), 8, 0.5, generator=_gen(4)))


def test_sizes_that_are_not_multiples_follow_the_nearest_grid():
    # H = 100, block 32: round(100/32) = 3 grid rows; output row i takes grid row floor(3i/100)
    draw = torch.rand((1, 1, 3, 2), generator=_gen(9))  # W = 70: round(70/32) = 2
    mask = block_mask((1, 100, 70), block_size=32, ratio=0.5, generator=_gen(9))
    kept = (draw[0, 0] > 0.5).float()
    for i in (0, 33, 34, 66, 67, 99):
        for j in (0, 34, 35, 69):
            assert mask[0, 0, i, j] == kept[(3 * i) // 100, (2 * j) // 70], (i, j)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ratio"):
        block_mask((1, 3, 8, 8), ratio=1.5)
    with pytest.raises(ValueError, match="shape"):
        block_mask((8, 8))
