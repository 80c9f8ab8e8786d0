"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) in plain PyTorch.

ViT-Adapter (and so VFM-UDA++) runs it through a compiled CUDA op; here the sampling is
:func:`torch.nn.functional.grid_sample` (bilinear, zero padding, ``align_corners=False``: the
convention of the CUDA op and of its reference PyTorch fallback), so it runs on any device and
under autocast, at the cost of materialising the sampled values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Attention-weighted sum of bilinear samples of ``value`` at ``sampling_locations``.

    For query q, head m: ``out[q, m] = Σ_l Σ_p A[q, m, l, p] · bilinear(V_l[m], loc[q, m, l, p])``,
    where ``V_l`` is level l of ``value`` seen as an ``H_l × W_l`` map and locations are in
    [0, 1] (0 and 1 are the outer edges of the map; pixel centres at ``(i + 0.5) / size``);
    samples outside the map read zeros.

    Args:
        value: ``B × Σ_l H_l·W_l × M × D`` (levels concatenated in ``spatial_shapes`` order,
            each flattened row-major).
        spatial_shapes: ``[(H_l, W_l), ...]``.
        sampling_locations: ``B × Q × M × L × P × 2`` as ``(x, y)`` in [0, 1].
        attention_weights: ``B × Q × M × L × P``.

    Returns:
        ``B × Q × M·D``.
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"value has {value.shape[1]} positions but spatial_shapes {spatial_shapes} sum to "
            f"{sum(sizes)}"
        )
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1]
    sampled = []
    for level, ((height, width), part) in enumerate(
        zip(spatial_shapes, value.split(sizes, dim=1), strict=True)
    ):
        # (B·M) × D × H × W maps and (B·M) × Q × P × 2 grids
        maps = part.permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(
            F.grid_sample(
                maps,
                grid.to(maps.dtype),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
        )  # (B·M) × D × Q × P
    stacked = torch.stack(sampled, dim=-2)  # (B·M) × D × Q × L × P
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    out = (stacked * weights.to(stacked.dtype)).sum(dim=(-1, -2))  # (B·M) × D × Q
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``levels`` feature maps, ``points`` samples per head and level.

    Each query predicts its sampling offsets (in units of each level's cells, around its
    reference point) and softmax weights over the ``levels × points`` samples; values are
    projected to ``d_model · value_ratio`` channels (ViT-Adapter's ``deform_ratio``) and the
    result back to ``d_model``. Initialisation as Deformable DETR: offsets start on a ring of
    directions, one per head, growing with the point index; weights uniform.

    Args:
        d_model: query and feature width.
        levels, heads, points: L, M, P.
        value_ratio: width of the values as a fraction of ``d_model`` (0.5 in ViT-Adapter).
    """

    def __init__(
        self,
        d_model: int,
        levels: int = 1,
        heads: int = 8,
        points: int = 4,
        value_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        value_dim = int(d_model * value_ratio)
        if value_dim % heads:
            raise ValueError(
                f"value width {value_dim} (d_model {d_model} × value_ratio {value_ratio}) must "
                f"divide into {heads} heads"
            )
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        ring = torch.stack([angles.cos(), angles.sin()], dim=-1)
        ring = ring / ring.abs().max(dim=-1, keepdim=True).values
        ring = ring.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        ring = ring * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        features: Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """Attend from ``query`` (``B×Q×C``) to ``features`` (``B×Σ H_l·W_l×C``).

        ``reference_points``: ``B×Q×L×2`` or ``1×Q×1×2`` (broadcast), ``(x, y)`` in [0, 1].
        Returns ``B×Q×C``.
        """
        batch, queries, _ = query.shape
        value = self.value_proj(features).view(batch, features.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(
            batch, queries, self.heads, self.levels, self.points, 2
        )
        weights = self.attention_weights(query).view(
            batch, queries, self.heads, self.levels * self.points
        )
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        # offsets are in cells of each level: divide by (W_l, H_l)
        normaliser = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normaliser[None, None, None, :, None, :]
        )
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
