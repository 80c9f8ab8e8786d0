"""Multi-scale deformable attention (grid_sample) against a direct per-point bilinear sum."""

from __future__ import annotations

import math

import torch

from lightning_uda.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)


def _bilinear(grid: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``grid`` (H×W×D) at continuous pixel coordinates (pixel centres at integers), zero
    outside: the four neighbours weighted by their areas, written out."""
    height, width, _ = grid.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(grid.shape[-1], dtype=grid.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * grid[yy, xx]
    return out


def _direct(value, shapes, locations, weights):
    """Σ_l Σ_p A · bilinear(V_l, loc), one point at a time (locations in [0, 1])."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lv, (h, w) in enumerate(shapes):
                    grid = value[b, starts[lv] : starts[lv + 1], m].reshape(h, w, dim)
                    for p in range(points):
                        x, y = locations[b, q, m, lv, p].tolist()
                        # [0, 1] edges -> pixel coordinates with centres at integers
                        sample = _bilinear(grid, x * w - 0.5, y * h - 0.5)
                        out[b, q, m] += weights[b, q, m, lv, p] * sample
    return out.reshape(batch, queries, heads * dim)


def test_grid_sample_form_equals_the_direct_sum():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (2, 3), (1, 1)]
    batch, queries, heads, dim, points = 2, 3, 2, 3, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, generator=g)
    value = value.double()
    # some locations outside [0, 1], to check the zero padding
    locations = (torch.rand(batch, queries, heads, 3, points, 2, generator=g) * 1.4 - 0.2).double()
    weights = torch.rand(batch, queries, heads, 3, points, generator=g).double()
    got = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(got, _direct(value, shapes, locations, weights))


def test_a_point_on_a_pixel_centre_reads_that_pixel():
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)  # one 3×4 map
    location = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64)  # column 2, row 1
    out = multi_scale_deformable_attention(
        value, [(3, 4)], location.view(1, 1, 1, 1, 1, 2), torch.ones(1, 1, 1, 1, 1).double()
    )
    assert out.item() == 1 * 4 + 2


def test_module_starts_with_uniform_weights_on_a_ring_of_offsets():
    attention = MultiScaleDeformableAttention(d_model=16, levels=2, heads=4, points=3)
    query = torch.randn(1, 5, 16)
    weights = attention.attention_weights(query).view(1, 5, 4, 6).softmax(-1)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 6))
    offsets = attention.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks right (+x), point k at distance k + 1 cells
    torch.testing.assert_close(offsets[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    features = torch.randn(2, 4 * 4 + 2 * 2, 16)
    out = attention(torch.randn(2, 5, 16), torch.rand(2, 5, 1, 2), features, [(4, 4), (2, 2)])
    assert out.shape == (2, 5, 16)
