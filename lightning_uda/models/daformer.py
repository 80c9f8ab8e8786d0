"""DAFormer: a Mix Transformer (MiT) encoder and the context-aware fusion head.

Reference: Hoyer et al., "DAFormer: Improving Network Architectures and Training Strategies for
Domain-Adaptive Semantic Segmentation" (CVPR 2022), the head of its Table 7 ("DAFormer" with
context-aware feature fusion: depthwise-separable ASPP, dilations 1/6/12/18, no image pooling).

The encoder is segmentation-models-pytorch's MiT (``mit_b0`` ... ``mit_b5``; the paper uses
``mit_b5``), whose parameter names are SegFormer's, so SegFormer's ImageNet files
(``mit_b5.pth``) load into it with :func:`lightning_uda.models.load_checkpoint` (layout
``"mit-imagenet"``).

Where this differs from DAFormer's mmseg code: the modules are plain PyTorch (so state-dict
names differ from mmseg's ``decode_head.*``; a trained DAFormer checkpoint's head does not load
by name), and the encoder's stochastic depth is smp's (drop-path rate 0.1, as DAFormer's
``mit_b5``). Initialisation follows mmcv's defaults as DAFormer uses them: Kaiming-normal
(fan-out, ReLU) convolutions before BatchNorm, BatchNorm weight 1 and bias 0, PyTorch's default
for the linear embeddings, and N(0, 0.01) for the classifier with zero bias.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: MiT encoders :class:`DAFormer` accepts -> channels of the four stages (strides 4, 8, 16, 32).
MIT_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "mit_b0": (32, 64, 160, 256),
    "mit_b1": (64, 128, 320, 512),
    "mit_b2": (64, 128, 320, 512),
    "mit_b3": (64, 128, 320, 512),
    "mit_b4": (64, 128, 320, 512),
    "mit_b5": (64, 128, 320, 512),
}


class ConvBNReLU(nn.Sequential):
    """``Conv2d`` (no bias) + ``BatchNorm2d`` + ``ReLU``, keeping the spatial size.

    The convolution is ``kernel_size×kernel_size`` with padding ``dilation · (kernel_size − 1)
    / 2`` and Kaiming-normal (fan-out, ReLU) weights; the children are named ``conv``, ``bn`` and
    ``relu``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        dilation: dilation of the convolution.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(
            OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels), relu=nn.ReLU(inplace=True))
        )


class DepthwiseSeparableConv(nn.Sequential):
    """A depthwise ``3×3`` dilated :class:`ConvBNReLU`, then a pointwise ``1×1`` one.

    Args:
        in_channels: input channels (also the depthwise convolution's groups).
        out_channels: output channels of the pointwise convolution.
        dilation: dilation (and padding) of the depthwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            OrderedDict(
                depthwise=ConvBNReLU(
                    in_channels, in_channels, kernel_size=3, dilation=dilation, groups=in_channels
                ),
                pointwise=ConvBNReLU(in_channels, out_channels, kernel_size=1),
            )
        )


class SeparableASPP(nn.Module):
    """Depthwise-separable ASPP without image pooling, then a ``3×3`` bottleneck.

    One branch per dilation, each ``in_channels -> channels``: dilation 1 is a ``1×1``
    :class:`ConvBNReLU`, larger ones a :class:`DepthwiseSeparableConv`. The branch outputs are
    concatenated (in ``dilations`` order) and fused by a ``3×3`` :class:`ConvBNReLU` to
    ``channels``.

    Args:
        in_channels: input channels.
        channels: channels of each branch and of the output.
        dilations: one branch per entry, each ``>= 1``.

    Shape:
        - input: ``B×in_channels×h×w``; output: ``B×channels×h×w``.
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(
                f"dilations must be a non-empty sequence of ints >= 1, got {dilations}"
            )
        self.dilations = dilations
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, channels, kernel_size=1)
            if d == 1
            else DepthwiseSeparableConv(in_channels, channels, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×channels×h×w``."""
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class LinearEmbed(nn.Module):
    """SegFormer's "MLP" embedding: one ``nn.Linear`` applied at every position.

    Equivalent to a ``1×1`` convolution with bias; written as flatten, ``Linear``, reshape as in
    SegFormer and DAFormer.

    Args:
        in_channels: input channels.
        embed_dim: output channels.

    Shape:
        - input: ``B×in_channels×h×w``; output: ``B×embed_dim×h×w``.
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×E×h×w``."""
        batch, _, height, width = x.shape
        out = self.proj(x.flatten(2).transpose(1, 2))  # B×hw×E
        return out.transpose(1, 2).reshape(batch, -1, height, width)


class DAFormerHead(nn.Module):
    """DAFormer's decoder with context-aware feature fusion (paper, Sec. 3.2 and Table 7).

    1. Each encoder level is embedded to ``embed_dim`` channels by a :class:`LinearEmbed`.
    2. The embeddings are resized bilinearly (``align_corners=False``) to the first (stride-4)
       level's size and concatenated, shallow to deep (``len(in_channels) · embed_dim``
       channels).
    3. :class:`SeparableASPP` with ``dilations`` fuses them to ``channels``.
    4. ``Dropout2d(dropout)`` and a ``1×1`` convolution (with bias) give the logits.

    ``.embeds``, ``.fuse``, ``.dropout`` and ``.classifier`` are its parts.

    Args:
        in_channels: channels of the encoder levels, shallow to deep (MiT-B5: 64, 128, 320, 512).
        num_classes: K.
        embed_dim: channels of each level's embedding (DAFormer: 256).
        channels: channels of the ASPP branches and bottleneck (DAFormer: 256).
        dilations: ASPP dilations (DAFormer: 1, 6, 12, 18).
        dropout: ``Dropout2d`` probability before the classifier (DAFormer: 0.1).

    Shape:
        - input: a sequence of ``B×in_channels[i]×h_i×w_i`` maps; output: ``B×K×h_0×w_0``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        channels: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels or num_classes < 1 or embed_dim < 1 or channels < 1:
            raise ValueError(
                "in_channels must be non-empty and num_classes, embed_dim, channels >= 1; got "
                f"{in_channels}, {num_classes}, {embed_dim}, {channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embeds = nn.ModuleList(LinearEmbed(c, embed_dim) for c in in_channels)
        self.fuse = SeparableASPP(len(in_channels) * embed_dim, channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Encoder levels (shallow → deep) -> logits at the first level's resolution."""
        if len(features) != len(self.embeds):
            raise ValueError(
                f"DAFormerHead expects {len(self.embeds)} feature maps, got {len(features)}"
            )
        size = features[0].shape[-2:]
        embedded = []
        for embed, feature in zip(self.embeds, features, strict=True):
            out = embed(feature)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            embedded.append(out)
        return self.classifier(self.dropout(self.fuse(torch.cat(embedded, dim=1))))


class DAFormer(nn.Module):
    """DAFormer segmentor: MiT encoder + :class:`DAFormerHead`, logits at stride 4.

    ``.encoder`` is segmentation-models-pytorch's MiT encoder (the backbone of
    :func:`lightning_uda.models.parameter_groups`); ``.decode_head`` is the head. The encoder
    takes ImageNet-normalised RGB (``input_normalization = "imagenet"``). The paper starts from
    SegFormer's ImageNet ``mit_b5.pth``: ``build_segmentor("daformer", 19, checkpoint=PATH)``.

    Args:
        num_classes: K (19 for Cityscapes).
        encoder: ``"mit_b5"`` (default, the paper) or ``"mit_b0"`` ... ``"mit_b4"``.
        encoder_weights: ``None`` (default; random init, nothing downloaded) or ``"imagenet"``
            (smp's ImageNet MiT weights, downloaded on first use; opt-in).
        embed_dim: see :class:`DAFormerHead`.
        channels: see :class:`DAFormerHead`.
        dilations: see :class:`DAFormerHead`.
        dropout: see :class:`DAFormerHead`.

    Shape:
        - input: ``B×3×H×W``; output: ``B×K×⌈H/4⌉×⌈W/4⌉`` logits (callers upsample).

    Raises:
        ValueError: an unknown ``encoder`` (the message lists the valid ones) or
            ``encoder_weights``.

    Example:
        >>> import torch
        >>> model = DAFormer(num_classes=19, encoder="mit_b0")
        >>> model(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 19, 16, 16])
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "mit_b5",
        encoder_weights: str | None = None,
        embed_dim: int = 256,
        channels: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if encoder not in MIT_CHANNELS:
            raise ValueError(
                f"DAFormer needs a Mix Transformer encoder; got encoder={encoder!r}, valid: "
                f"{list(MIT_CHANNELS)}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        try:
            self.encoder = smp.encoders.get_encoder(
                encoder, in_channels=3, depth=5, weights=encoder_weights
            )
        except KeyError as error:  # smp's message lists the available weights
            raise ValueError(f"encoder {encoder!r}: {error.args[0]}") from error
        self.num_classes = num_classes
        self.multi_level = False
        #: Input space the model expects (smp's and SegFormer's MiT weights: ImageNet RGB).
        self.input_normalization = "imagenet"
        self.stage_channels = tuple(self.encoder.out_channels[-4:])
        self.decode_head = DAFormerHead(
            self.stage_channels,
            num_classes,
            embed_dim=embed_dim,
            channels=channels,
            dilations=dilations,
            dropout=dropout,
        )

    def _stages(self, x: Tensor) -> list[Tensor]:
        """The four MiT stage outputs (strides 4, 8, 16, 32), dropping smp's leading entries
        (the input and an empty stride-2 placeholder)."""
        return list(self.encoder(x)[-4:])

    def forward(self, x: Tensor) -> Tensor:
        """``B×3×H×W`` -> logits ``B×K×⌈H/4⌉×⌈W/4⌉``."""
        return self.decode_head(self._stages(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits, [stage 1, 2, 3, 4 outputs])`` from one forward (the segmentor feature
        contract, see :func:`lightning_uda.models.forward_with_features`)."""
        features = self._stages(x)
        return self.decode_head(features), features


__all__ = [
    "MIT_CHANNELS",
    "ConvBNReLU",
    "DAFormer",
    "DAFormerHead",
    "DepthwiseSeparableConv",
    "LinearEmbed",
    "SeparableASPP",
]
