"""HRDA: multi-resolution segmentation with a learned scale attention (Hoyer et al., ECCV 2022).

One encoder and one segmentation head see two views of a full-resolution training crop
(1024×1024 in the paper):

- the **context** view: the whole crop downscaled by 0.5 (512×512), giving context logits ``lr``
  on an ``h×w`` grid (1/8 of the crop for DAFormer's stride-4 head);
- the **detail** view: a ``detail_size`` crop (512×512) of the full-resolution crop, at a
  random box whose coordinates are multiples of ``2 × output stride`` (8 for DAFormer), giving
  detail logits ``hr`` on the fused grid (1/4 of the crop).

A **scale-attention head** (DAFormer's head with a 1×1 fusion instead of the separable ASPP,
embedding 256, one channel per class, sigmoid) looks at the context features and says, per
pixel and class, how much to trust the detail logits. :func:`fuse_scales` combines them::

    fused = up(a·m) · insert(hr) + up((1 − a·m) · lr)

At inference (pseudo-labels, evaluation) there is no box: the detail logits of the whole input
come from overlapping ``detail_size`` windows (stride half a window) with
:func:`lightning_uda.inference.sliding_window_logits`, and are fused with the context logits over
the whole input. Evaluation on 2048×1024 frames slides :class:`HRDA` itself over 1024×1024
windows (stride 512), each window fused (``UDAModule(inference="slide")``).

Where this differs from HRDA's code: the detail box is drawn uniformly among *all* positions
whose coordinates are multiples of the divisor (HRDA's draw leaves out the last position, e.g.
offset 512 of a 512 crop in a 1024 crop); the sliding detail windows are averaged on the fused
grid as in HRDA, computed by :func:`~lightning_uda.inference.sliding_window_logits` on
nearest-upsampled window logits (then read back every ``output_stride`` pixels), which gives
the same average.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.inference import sliding_window_logits, window_starts
from lightning_uda.models.daformer import ConvBNReLU, DAFormer, DAFormerHead
from lightning_uda.models.deeplabv2 import ASPPClassifier, DeepLabV2
from lightning_uda.models.hrda_fusion import Box, crop_box, fuse_scales, sample_detail_box

__all__ = ["HRDA", "HRDA_HEADS", "HRDAOutput", "ScaleAttentionHead", "build_hrda"]

#: Single-scale segmentors HRDA wraps -> their logits' output stride.
HRDA_HEADS: dict[str, int] = {"daformer": 4, "deeplabv2": 8}


class HRDAOutput(NamedTuple):
    """What one multi-resolution training forward gives (:meth:`HRDA.forward_train`).

    ``fused``: ``B×K×H/s×W/s`` (``s`` the output stride); ``context``: ``B×K×H/2s×W/2s``;
    ``detail``: ``B×K×(y2−y1)/s×(x2−x1)/s``; ``attention``: ``B×(K or 1)×H/2s×W/2s`` after the
    sigmoid; ``box``: the detail box in image pixels ``(y1, y2, x1, x2)``; ``features``: the
    context view's encoder features (shallow → deep).
    """

    fused: Tensor
    context: Tensor
    detail: Tensor
    attention: Tensor
    box: Box
    features: list[Tensor]


class ScaleAttentionHead(DAFormerHead):
    """HRDA's scale attention: :class:`DAFormerHead` with a ``1×1`` :class:`ConvBNReLU` fusion
    of the concatenated embeddings instead of the separable ASPP.

    Its output are attention *logits* (``B×out_channels×h×w``); :class:`HRDA` applies the sigmoid.
    ``out_channels`` is K (class-wise attention, HRDA's default) or 1.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            embed_dim=embed_dim,
            channels=embed_dim,
            dilations=(1,),
            dropout=dropout,
        )
        self.fuse = ConvBNReLU(len(self.in_channels) * embed_dim, embed_dim, kernel_size=1)


class HRDA(nn.Module):
    """HRDA's multi-resolution segmentor around DAFormer or DeepLab-v2 (shared encoder and head).

    ``.encoder`` is the backbone (1× learning rate); ``.decode_head`` the single-scale head used
    for both views; ``.scale_attention`` the attention head (DAFormer: :class:`ScaleAttentionHead`;
    DeepLab-v2: an ASPP-sum classifier with K or 1 outputs, as HRDA's ``DLV2Head``).

    - :meth:`forward` (inference, pseudo-labels): fused logits of the whole input, detail logits
      from overlapping ``detail_size`` windows (stride half a window).
    - :meth:`forward_train` (training): one random detail box, all the parts (:class:`HRDAOutput`).

    Args:
        num_classes: K.
        head: ``"daformer"`` (MiT encoder, output stride 4) or ``"deeplabv2"`` (dilated ResNet,
            output stride 8; ``style="torchvision"`` only, whose logits are exactly 1/8).
        encoder: the backbone (DAFormer: ``mit_b5`` default; DeepLab-v2: ``resnet101``).
        encoder_weights: see :class:`~lightning_uda.models.DAFormer` /
            :class:`~lightning_uda.models.DeepLabV2`.
        detail_size: ``(h, w)`` of the detail crop (512×512) and of the sliding detail windows.
        attention_classwise: one attention channel per class (HRDA) or one for all.
        attention_embed_dim: embedding (and fusion) channels of the DAFormer attention head (256).
        crop_coord_divisible: the detail box offset step; default ``2 × output stride`` (8 for
            DAFormer, HRDA's ``crop_coord_divisible``), the smallest that keeps the box on the
            context grid.
        detail_window_batch: sliding detail windows per forward at inference; ``None`` (default,
            as HRDA's batched slide): all windows of the batch at once, so a train-mode
            BatchNorm (the teacher's) normalises over all of them; a number bounds the memory
            of pseudo-labelling (``benchmarks/README.md``: with 4, HRDA's step needs 0.60× the
            peak memory of DAFormer's on the same crop at 384², with all windows 0.77×), and
            train-mode BatchNorm then sees each group of windows on its own.
        **kwargs: the single-scale segmentor's own arguments (``DAFormer(embed_dim, channels,
            dilations, dropout)``, ``DeepLabV2(dilations, freeze_bn_affine, style)``).

    Shape:
        - input ``B×3×H×W`` with ``H, W`` multiples of ``crop_coord_divisible``; output of
          :meth:`forward`: ``B×K×H/s×W/s`` (``s`` the output stride; callers upsample).

    Raises:
        ValueError: an unknown head, a Caffe-layout DeepLab-v2, or a ``crop_coord_divisible``
            that does not keep the box on the context grid.

    Example:
        >>> import torch
        >>> model = HRDA(num_classes=19, encoder="mit_b0", detail_size=(32, 32))
        >>> model.eval()(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 19, 16, 16])
    """

    def __init__(
        self,
        num_classes: int,
        head: str = "daformer",
        encoder: str | None = None,
        encoder_weights: str | None = None,
        detail_size: Sequence[int] = (512, 512),
        attention_classwise: bool = True,
        attention_embed_dim: int = 256,
        crop_coord_divisible: int | None = None,
        detail_window_batch: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__()
        if head not in HRDA_HEADS:
            raise ValueError(f"HRDA head must be one of {list(HRDA_HEADS)}, got {head!r}")
        self.head = head
        self.output_stride = HRDA_HEADS[head]
        attention_channels = num_classes if attention_classwise else 1
        if head == "daformer":
            base = DAFormer(
                num_classes, encoder=encoder or "mit_b5", encoder_weights=encoder_weights, **kwargs
            )
            self.decode_head: nn.Module = base.decode_head
            self.scale_attention: nn.Module = ScaleAttentionHead(
                base.stage_channels,
                attention_channels,
                embed_dim=attention_embed_dim,
                dropout=base.decode_head.dropout.p,
            )
        else:
            if kwargs.get("style", "torchvision") != "torchvision" or kwargs.get("multi_level"):
                raise ValueError(
                    "HRDA with the DeepLab-v2 head needs logits at exactly 1/8 of the input and "
                    "one classifier: build it with style='torchvision' and multi_level=False "
                    f"(got {kwargs})"
                )
            base = DeepLabV2(
                num_classes,
                encoder=encoder or "resnet101",
                encoder_weights=encoder_weights,
                **kwargs,
            )
            self.decode_head = base.classifier
            self.scale_attention = ASPPClassifier(
                base.encoder.out_channels, attention_channels, base.classifier.dilations
            )
        self.encoder = base.encoder
        self.num_classes = num_classes
        self.multi_level = False
        self.input_normalization = base.input_normalization
        divisible = crop_coord_divisible or 2 * self.output_stride
        if divisible % (2 * self.output_stride):
            raise ValueError(
                f"crop_coord_divisible={divisible} must be a multiple of 2 × the output stride "
                f"({2 * self.output_stride}) so that the detail box falls on the context grid"
            )
        self.crop_coord_divisible = divisible
        if detail_window_batch is not None and detail_window_batch < 1:
            raise ValueError(f"detail_window_batch must be >= 1 or None, got {detail_window_batch}")
        self.detail_window_batch = detail_window_batch
        self.detail_size = (int(detail_size[0]), int(detail_size[1]))
        for value in self.detail_size:
            if value < 1 or value % divisible:
                raise ValueError(
                    f"detail_size {self.detail_size} must be positive multiples of "
                    f"crop_coord_divisible={divisible}"
                )

    # ------------------------------------------------------------------ single-scale parts
    def extract_features(self, x: Tensor) -> list[Tensor]:
        """Encoder features of one view, shallow → deep (MiT: 4 stages; ResNet: layer3, 4)."""
        if self.head == "daformer":
            return list(self.encoder(x)[-4:])
        return list(self.encoder(x))

    def decode(self, features: list[Tensor]) -> Tensor:
        """The single-scale head: features -> ``B×K×h×w`` logits at the output stride."""
        return self.decode_head(features if self.head == "daformer" else features[-1])

    def attend(self, features: list[Tensor]) -> Tensor:
        """Scale attention in [0, 1]: ``sigmoid`` of the attention head on ``features``."""
        head_input = features if self.head == "daformer" else features[-1]
        return torch.sigmoid(self.scale_attention(head_input))

    def _detail_logits(self, x: Tensor) -> Tensor:
        return self.decode(self.extract_features(x))

    def check_input(self, x: Tensor, training: bool = False) -> None:
        """``x`` must be ``B×3×H×W`` with ``H, W`` multiples of ``crop_coord_divisible`` and at
        least ``detail_size`` (the detail crop in training, the sliding window at inference;
        raises ``ValueError`` naming the sizes)."""
        height, width = int(x.shape[-2]), int(x.shape[-1])
        divisible = self.crop_coord_divisible
        if height % divisible or width % divisible:
            raise ValueError(
                f"HRDA input {height}×{width} must have sides divisible by {divisible} (2 × the "
                "output stride), so that the context view (×0.5) and the detail logits share one "
                f"grid; crop or pad the images to multiples of {divisible}"
            )
        if training and (height < self.detail_size[0] or width < self.detail_size[1]):
            sample_detail_box((height, width), self.detail_size, divisible)  # raises
        if height < self.detail_size[0] or width < self.detail_size[1]:
            raise ValueError(
                f"HRDA input {height}×{width} is smaller than the detail window "
                f"{self.detail_size[0]}×{self.detail_size[1]}: use images at least that large "
                "(HRDA: 1024×1024 crops, 512×512 windows) or lower detail_size"
            )

    def _context(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(context logits, attention, context features)`` of the ×0.5 view."""
        small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        features = self.extract_features(small)
        return self.decode(features), self.attend(features), features

    # ------------------------------------------------------------------ views
    def sliding_detail_logits(self, x: Tensor) -> Tensor:
        """Detail logits of the whole input on the fused grid (``B×K×H/s×W/s``): overlapping
        ``detail_size`` windows every half window, averaged where they overlap (HRDA's
        ``hr_slide_inference``), through :func:`~lightning_uda.inference.sliding_window_logits`.
        """
        self.check_input(x)
        scale = self.output_stride

        def windows(crops: Tensor) -> Tensor:
            # nearest ×s: every s×s block holds the window's logit, so the average over windows
            # read back every s pixels is the average on the fused grid
            return F.interpolate(self._detail_logits(crops), scale_factor=scale, mode="nearest")

        window = self.detail_size
        step = (window[0] // 2, window[1] // 2)
        # by default all windows in one batch, as HRDA's batched slide: a train-mode BatchNorm
        # (the teacher's) then normalises over every window of the batch at once
        count = self.detail_window_batch or len(
            window_starts(x.shape[-2], window[0], step[0])
        ) * len(window_starts(x.shape[-1], window[1], step[1]))
        full = sliding_window_logits(
            windows, x, window=window, stride=step, window_batch_size=count
        )
        return full[..., ::scale, ::scale]

    def forward_train(self, x: Tensor, box: Sequence[int] | None = None) -> HRDAOutput:
        """One training forward: context view, the detail crop at ``box`` (image pixels; drawn
        with :func:`sample_detail_box` when ``None``), attention and fused logits."""
        self.check_input(x, training=True)
        if box is None:
            box = sample_detail_box(x.shape[-2:], self.detail_size, self.crop_coord_divisible)
        box = tuple(int(v) for v in box)
        y1, y2, x1, x2 = box
        if (y2 - y1, x2 - x1) != self.detail_size:
            raise ValueError(
                f"detail box {box} is {y2 - y1}×{x2 - x1}, not detail_size {self.detail_size}"
            )
        if any(v % self.crop_coord_divisible for v in box):
            raise ValueError(
                f"detail box {box} has coordinates not divisible by {self.crop_coord_divisible} "
                f"(2 × the encoder's output stride {self.output_stride}); the detail logits "
                "would not align with the context grid. Draw boxes with sample_detail_box."
            )
        context, attention, features = self._context(x)
        detail = self._detail_logits(crop_box(x, box))
        stride = self.output_stride
        fused = fuse_scales(context, detail, attention, box=tuple(v // stride for v in box))
        return HRDAOutput(fused, context, detail, attention, box, features)  # type: ignore[arg-type]

    def forward_inference(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(fused logits, attention, context features)`` over the whole input (no box)."""
        self.check_input(x)
        context, attention, features = self._context(x)
        fused = fuse_scales(context, self.sliding_detail_logits(x), attention)
        return fused, attention, features

    def forward(self, x: Tensor) -> Tensor:
        """Fused logits ``B×K×H/s×W/s`` of the whole input (sliding detail windows)."""
        return self.forward_inference(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(fused logits, context features)`` from one forward (the segmentor feature contract;
        the context view's features are those HRDA's feature distance uses)."""
        fused, _, features = self.forward_inference(x)
        return fused, features


def build_hrda(
    num_classes: int,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    **kwargs: object,
) -> HRDA:
    """:class:`HRDA` with its keyword arguments checked (``build_segmentor("hrda", ...)``).

    Raises:
        TypeError: a keyword argument neither HRDA nor its single-scale network accepts (the
            message lists the accepted ones).
    """
    head = str(kwargs.get("head", "daformer"))
    base = DAFormer if head == "daformer" else DeepLabV2
    reserved = {"self", "num_classes", "encoder", "encoder_weights"}
    accepted = set()
    for cls in (HRDA, base):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                accepted.add(name)
    accepted -= reserved
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"build_segmentor(arch='hrda', head={head!r}) got unexpected keyword argument(s) "
            f"{unknown}; it accepts {sorted(accepted)} (plus num_classes, encoder, "
            "encoder_weights and checkpoint)"
        )
    return HRDA(num_classes, encoder=encoder, encoder_weights=encoder_weights, **kwargs)
