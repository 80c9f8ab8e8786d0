"""The heads of VFM-UDA and VFM-UDA++: light transposed-convolution head, pyramid head,
and the feature projection used for distillation.

- :class:`LightHead` (VFM-UDA): the ViT's last-layer patch tokens (stride 14), upsampled ×4 by
  two 2×2 transposed convolutions (width /2 then /4, LayerNorm, GELU), a 3×3 convolution and a
  1×1 classifier: logits at stride 3.5.
- :class:`PyramidHead` (VFM-UDA++): ViT-Adapter's four maps (strides 4, 8, 16, 32), fused
  top-down (2×2 transposed convolution of the deeper map + 1×1 projection of the shallower one,
  3×3 convolution, BatchNorm, ReLU) to stride 4, then a 1×1 classifier; the widths halve at
  each step (C/2, C/4, C/8).
- :class:`DistillationProjection` (VFM-UDA++): 1×1 convolution to 4×C, LayerNorm, GELU, 1×1
  convolution to the frozen model's width.

Differences from the references: the classifier keeps a bias-free 1×1 convolution initialised
N(0, 0.1) as there; BatchNorm replaces SyncBatchNorm (converted under DDP by the examples).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["DistillationProjection", "LightHead", "PyramidHead"]


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    out = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)
    nn.init.normal_(out.weight, 0.0, 0.1)
    return out


class LightHead(nn.Module):
    """``[B×C×h×w]`` (the last map is used) -> ``B×K×4h×4w`` logits."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        half, quarter = embed_dim // 2, embed_dim // 4
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(quarter),
            nn.Conv2d(quarter, quarter, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(quarter),
        )
        self.classifier = _classifier(quarter, num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.classifier(self.upscale(features[-1]))


class PyramidHead(nn.Module):
    """``[f1, f2, f3, f4]`` at strides 4, 8, 16, 32 (``C`` channels) -> ``B×K×H/4×W/4``."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        widths = [embed_dim // 2, embed_dim // 4, embed_dim // 8]
        inputs = [embed_dim, *widths[:-1]]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
            for cin, cout in zip(inputs, widths, strict=True)
        )
        self.reduce = nn.ModuleList(nn.Conv2d(embed_dim, w, kernel_size=1) for w in widths)
        self.smooth = nn.ModuleList(nn.Conv2d(w, w, kernel_size=3, padding=1) for w in widths)
        self.norms = nn.ModuleList(nn.BatchNorm2d(w, momentum=0.01) for w in widths)
        self.final = nn.Conv2d(widths[-1], widths[-1], kernel_size=3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        self.classifier = _classifier(widths[-1], num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3, f4 = features
        x = f4
        for up, reduce, smooth, norm, skip in zip(
            self.up, self.reduce, self.smooth, self.norms, (f3, f2, f1), strict=True
        ):
            upsampled = up(x)
            if upsampled.shape[-2:] != skip.shape[-2:]:  # odd sizes: align to the skip
                upsampled = F.interpolate(
                    upsampled, size=skip.shape[-2:], mode="bilinear", align_corners=False
                )
            x = F.relu(norm(smooth(upsampled + reduce(skip))))
        return self.classifier(self.final(x))


class DistillationProjection(nn.Module):
    """``B×C_in×h×w`` -> ``B×C_out×h'×w'`` (resized to ``size`` when given)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 4 * in_channels, kernel_size=1),
            LayerNorm2d(4 * in_channels),
            nn.GELU(),
            nn.Conv2d(4 * in_channels, out_channels, kernel_size=1),
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))

    def forward(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        out = self.layers(features)
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out
