"""Token masks: exactly the ratio per image, replaced by the mask token, nothing else touched."""

from __future__ import annotations

import pytest
import torch

from lightning_uda.mixing import apply_token_mask, random_token_mask


@pytest.mark.parametrize(
    ("ratio", "grid", "count"),
    [(0.7, (4, 5), 14), (0.7, (37, 37), 958), (0.0, (3, 3), 0), (1.0, (3, 3), 9)],
)
def test_every_image_masks_round_ratio_times_its_tokens(ratio, grid, count):
    g = torch.Generator().manual_seed(0)
    mask = random_token_mask(6, grid, ratio=ratio, generator=g)
    assert mask.shape == (6, *grid) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [count] * 6  # round(0.7 · 1369) = 958


def test_masks_differ_between_images_and_cover_every_token_over_draws():
    g = torch.Generator().manual_seed(1)
    masks = random_token_mask(200, (2, 3), ratio=0.5, generator=g)
    assert not torch.equal(masks[0], masks[1])
    share = masks.float().mean(0)  # uniform choice: each token masked about half the time
    assert (share - 0.5).abs().max() < 0.12


def test_masked_tokens_become_the_mask_token_and_others_stay():
    tokens = torch.randn(2, 3, 4, 5)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True
    mask_token = torch.randn(1, 5, requires_grad=True)
    out = apply_token_mask(tokens, mask, mask_token)
    torch.testing.assert_close(out[mask], mask_token.detach().expand(2, 5))
    torch.testing.assert_close(out[~mask], tokens[~mask])
    out.sum().backward()
    torch.testing.assert_close(mask_token.grad, torch.full((1, 5), 2.0))  # used twice


def test_a_mask_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="6 tokens per image for 12 tokens"):
        apply_token_mask(
            torch.randn(1, 12, 4), torch.zeros(1, 2, 3, dtype=torch.bool), torch.zeros(4)
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        random_token_mask(1, (2, 2), ratio=1.5)
