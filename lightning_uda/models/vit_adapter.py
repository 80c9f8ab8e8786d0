"""ViT-Adapter (Chen et al., ICLR 2023) around a timm DINOv2 ViT, as VFM-UDA++ uses it.

A convolutional spatial-prior module (SPM) gives features at strides 4, 8, 16 and 32; four
interaction blocks split the ViT's blocks into four equal runs, and around each run an
*injector* (ViT patch tokens attend to the SPM features, multi-scale deformable attention, a
zero-initialised gate) and an *extractor* (SPM features attend to the ViT tokens, plus a
convolutional FFN; the last block has two extra extractors) exchange information. The output is
four maps at strides 4, 8, 16, 32 (``embed_dim`` channels, BatchNorm), each the SPM path plus the
matching interaction's ViT tokens resized to it.

The ViT itself stays the timm model (``segmentor.encoder``); :class:`ViTAdapter` holds only the
adapter's own parameters and takes the encoder as an argument, so the encoder's weights are
stored once. Differences from VFM-UDA++'s code: deformable attention in plain PyTorch
(:mod:`~lightning_uda.models.deformable_attention`), not the compiled op; BatchNorm instead of
SyncBatchNorm (the examples convert it under DDP); register tokens (``_reg`` encoders) travel
with the class token; level sizes are read from the SPM's outputs, so any input whose sides are
multiples of 14 works (the reference needs multiples of 224).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from lightning_uda.models.deformable_attention import MultiScaleDeformableAttention
from lightning_uda.models.vit import PATCH_SIZE, run_blocks

__all__ = ["SpatialPriorModule", "ViTAdapter", "reference_points"]


def reference_points(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Cell centres of each ``(H, W)`` grid in [0, 1], concatenated: ``1 × Σ H·W × 1 × 2``."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
    return torch.cat(points)[None, :, None]


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=0.01),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """ViT-Adapter's convolutional stem: ``B×3×H×W`` -> four ``B×C×…`` maps at strides 4–32."""

    def __init__(self, embed_dim: int, planes: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn(3, planes, 2),
            *_conv_bn(planes, planes, 1),
            *_conv_bn(planes, planes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn(planes, 2 * planes, 2))
        self.conv3 = nn.Sequential(*_conv_bn(2 * planes, 4 * planes, 2))
        self.conv4 = nn.Sequential(*_conv_bn(4 * planes, 4 * planes, 2))
        widths = (planes, 2 * planes, 4 * planes, 4 * planes)
        self.projections = nn.ModuleList(nn.Conv2d(w, embed_dim, kernel_size=1) for w in widths)

    def forward(self, images: Tensor) -> list[Tensor]:
        c1 = self.stem(images)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [proj(c) for proj, c in zip(self.projections, (c1, c2, c3, c4), strict=True)]


class _ConvFFN(nn.Module):
    """Linear -> per-level 3×3 depth-wise conv -> GELU -> linear, on concatenated levels."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.fc1(x)
        parts = []
        for (height, width), part in zip(
            shapes, x.split([h * w for h, w in shapes], dim=1), strict=True
        ):
            grid = part.transpose(1, 2).reshape(x.shape[0], -1, height, width)
            parts.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.fc2(self.act(torch.cat(parts, dim=1)))


class _Injector(nn.Module):
    """ViT tokens += γ · deformable attention to the SPM levels (γ starts at 0)."""

    def __init__(self, dim: int, heads: int, points: int, value_ratio: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleDeformableAttention(
            dim, levels=3, heads=heads, points=points, value_ratio=value_ratio
        )
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, ref: Tensor, c: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        attended = self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes)
        return x + self.gamma * attended


class _Extractor(nn.Module):
    """SPM levels += deformable attention to the ViT tokens, then a convolutional FFN."""

    def __init__(self, dim: int, heads: int, points: int, value_ratio: float, ffn_ratio: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleDeformableAttention(
            dim, levels=1, heads=heads, points=points, value_ratio=value_ratio
        )
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = _ConvFFN(dim, int(dim * ffn_ratio))

    def forward(
        self,
        c: Tensor,
        ref: Tensor,
        x: Tensor,
        token_shape: tuple[int, int],
        shapes: list[tuple[int, int]],
    ) -> Tensor:
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), [token_shape])
        return c + self.ffn(self.ffn_norm(c), shapes)


class _Interaction(nn.Module):
    def __init__(
        self, dim: int, heads: int, points: int, value_ratio: float, ffn_ratio: float, extra: bool
    ) -> None:
        super().__init__()
        self.injector = _Injector(dim, heads, points, value_ratio)
        self.extractors = nn.ModuleList(
            _Extractor(dim, heads, points, value_ratio, ffn_ratio) for _ in range(3 if extra else 1)
        )


class ViTAdapter(nn.Module):
    """ViT-Adapter's parameters for a DINOv2 ``encoder`` of width ``embed_dim`` and ``depth``.

    Args:
        embed_dim, depth: the ViT's width and block count (depth divisible by 4).
        heads: deformable-attention heads (``embed_dim // 64`` as VFM-UDA++ when ``None``).
        points: samples per head and level (4).
        value_ratio: deformable attention's value width ratio (0.5).
        ffn_ratio: the convolutional FFN's hidden ratio (0.25).
        spm_planes: the SPM's base width (64).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        heads: int | None = None,
        points: int = 4,
        value_ratio: float = 0.5,
        ffn_ratio: float = 0.25,
        spm_planes: int = 64,
    ) -> None:
        super().__init__()
        if depth % 4:
            raise ValueError(f"ViT-Adapter splits the ViT into 4 runs of blocks; depth {depth}")
        heads = heads or max(1, embed_dim // 64)
        step = depth // 4
        #: ``(first, last)`` block indices of each interaction's run.
        self.runs = [(i * step, (i + 1) * step) for i in range(4)]
        self.level_embed = nn.Parameter(torch.randn(3, embed_dim))
        self.spm = SpatialPriorModule(embed_dim, planes=spm_planes)
        self.interactions = nn.ModuleList(
            _Interaction(embed_dim, heads, points, value_ratio, ffn_ratio, extra=i == 3)
            for i in range(4)
        )
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(embed_dim, momentum=0.01) for _ in range(4))
        for module in (self.spm, self.up, *self.interactions):
            module.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()

    def forward(
        self,
        encoder: VisionTransformer,
        images: Tensor,
        tokens: Tensor,
        spm_images: Tensor | None = None,
    ) -> list[Tensor]:
        """Four ``B×C×H/s×W/s`` maps (s = 4, 8, 16, 32) from the run of ``encoder``'s blocks.

        Args:
            encoder: the timm DINOv2 ViT.
            images: ``B×3×H×W`` (sides multiples of 14).
            tokens: the ViT's input sequence after position embedding, ``B×(prefix+h·w)×C``.
            spm_images: what the SPM sees (default ``images``; token masking blanks the masked
                patches here too, so the convolutional branch does not see them).
        """
        batch = images.shape[0]
        grid = (images.shape[-2] // PATCH_SIZE, images.shape[-1] // PATCH_SIZE)
        c1, c2, c3, c4 = self.spm(images if spm_images is None else spm_images)
        levels = [c2, c3, c4]
        shapes = [tuple(c.shape[-2:]) for c in levels]
        c = torch.cat(
            [(lv + self.level_embed[i, :, None, None]).flatten(2) for i, lv in enumerate(levels)],
            dim=2,
        ).transpose(1, 2)
        ref_tokens = reference_points([grid], images.device)
        ref_levels = reference_points(shapes, images.device)
        prefix_count = encoder.num_prefix_tokens
        prefix, x = tokens[:, :prefix_count], tokens[:, prefix_count:]
        outs = []
        for (first, last), interaction in zip(self.runs, self.interactions, strict=True):
            x = interaction.injector(x, ref_tokens, c, shapes)
            sequence = run_blocks(
                encoder, torch.cat([prefix, x], dim=1), encoder.blocks[first:last]
            )
            prefix, x = sequence[:, :prefix_count], sequence[:, prefix_count:]
            for extractor in interaction.extractors:
                c = extractor(c, ref_levels, x, grid, shapes)
            outs.append(x.transpose(1, 2).reshape(batch, -1, *grid))
        sizes = [h * w for h, w in shapes]
        c2, c3, c4 = (
            part.transpose(1, 2).reshape(batch, -1, *shape)
            for part, shape in zip(c.split(sizes, dim=1), shapes, strict=True)
        )
        up = self.up(c2)
        c1 = c1 + (up if up.shape[-2:] == c1.shape[-2:] else _resize(up, c1))
        maps = [c1, c2, c3, c4]
        maps = [m + _resize(vit, m) for m, vit in zip(maps, outs, strict=True)]
        return [norm(m) for norm, m in zip(self.norms, maps, strict=True)]


def _resize(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
