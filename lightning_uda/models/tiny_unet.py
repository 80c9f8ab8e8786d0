"""The small :class:`TinyUNet` segmentor for the CPU demo and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 conv (no bias) + BatchNorm + ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyUNetEncoder(nn.Module):
    """Encoder of :class:`TinyUNet`: a full-resolution stem, then ``max-pool + conv`` per level.

    Shape:
        - input: ``B×in_channels×H×W``.
        - output: a list of ``depth + 1`` feature maps; entry ``i`` is
          ``B×channels[i]×⌊H/2^i⌋×⌊W/2^i⌋``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = tuple(channels)
        self.stem = _conv_bn_relu(in_channels, channels[0])
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(kernel_size=2), _conv_bn_relu(c_in, c_out))
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """``B×C×H×W`` -> features at strides 1, 2, ..., ``2**depth``."""
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class TinyUNetDecoder(nn.Module):
    """Decoder of :class:`TinyUNet`: per level, a 1×1 projection of the coarser map, bilinear
    upsampling, addition of the skip feature, and a 3×3 conv + BN + ReLU.

    Adding (rather than concatenating) the skip keeps the full-resolution conv narrow, which is
    most of the cost at 64×64.

    Shape:
        - input: the encoder's feature list (strides 1 ... ``2**depth``).
        - output: ``B×channels[0]×H×W`` (the stride-1 resolution).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Conv2d(channels[i + 1], channels[i], kernel_size=1, bias=False)
            for i in reversed(range(len(channels) - 1))
        )
        self.fusions = nn.ModuleList(
            _conv_bn_relu(channels[i], channels[i]) for i in reversed(range(len(channels) - 1))
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fuse the features coarse to fine; returns the stride-1 map."""
        x = features[-1]
        for projection, fusion, skip in zip(
            self.projections, self.fusions, reversed(features[:-1]), strict=True
        ):
            x = F.interpolate(
                projection(x), size=skip.shape[-2:], mode="bilinear", align_corners=False
            )
            x = fusion(x + skip)
        return x


class TinyUNet(nn.Module):
    """A small, fast U-Net (BN + ReLU) for the CPU demo and the tests.

    Channels grow linearly, ``width · (1, 2, ..., depth + 1)``: with the defaults (width 16,
    depth 3) that is 16/32/48/64 channels at strides 1/2/4/8, about 85 k parameters, about
    38 M multiply-adds per 64×64 image (a quarter at 32×32), and a receptive field of about
    50 pixels, enough to see a whole digit in a 64×64 scene. Logits are at full resolution.

    ``.encoder`` (:class:`TinyUNetEncoder`) is the backbone; ``.decoder`` and ``.classifier``
    (a 1×1 conv) are the head.

    Args:
        in_channels: input channels (3 for RGB).
        num_classes: K (keyword-only).
        width: channels of the full-resolution stem.
        depth: number of down-sampling levels (2 or 3 is plenty; ``H, W`` need not be divisible
            by ``2**depth``, the decoder resizes to each skip).

    Shape:
        - input: ``B×in_channels×H×W``; output: logits ``B×K×H×W``.

    Example:
        >>> import torch
        >>> TinyUNet(num_classes=11)(torch.zeros(2, 3, 48, 48)).shape
        torch.Size([2, 11, 48, 48])
    """

    def __init__(
        self, in_channels: int = 3, *, num_classes: int, width: int = 16, depth: int = 3
    ) -> None:
        super().__init__()
        if num_classes < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"num_classes, width and depth must be >= 1, got {num_classes}, {width}, {depth}"
            )
        channels = [width * (level + 1) for level in range(depth + 1)]
        self.num_classes = num_classes
        self.multi_level = False
        #: Input space (an ``INPUT_SPACES`` name); trained from scratch, so any would do.
        self.input_normalization = "imagenet"
        self.encoder = TinyUNetEncoder(in_channels, channels)
        self.decoder = TinyUNetDecoder(channels)
        self.classifier = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` -> logits ``B×K×H×W``."""
        return self.classifier(self.decoder(self.encoder(x)))

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits, encoder features shallow → deep)`` from one forward."""
        features = self.encoder(x)
        return self.classifier(self.decoder(features)), features


__all__ = ["TinyUNet", "TinyUNetDecoder", "TinyUNetEncoder"]
