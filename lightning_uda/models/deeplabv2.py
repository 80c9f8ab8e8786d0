"""DeepLab-v2 with a dilated ResNet encoder (output stride 8), as used by AdvEnt and DACS.

Reference: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs" (TPAMI 2018); the UDA variants follow the AdvEnt
(Vu et al., CVPR 2019) and DACS (Tranheden et al., WACV 2021) code.

Two ResNet layouts (``style``), with the same parameter names and shapes:

- ``"torchvision"`` (default): torchvision's ResNet (stride on the 3×3 conv of a down-sampling
  Bottleneck, floor max-pool); fits torchvision's ImageNet weights and ImageNet-normalised RGB.
- ``"caffe"``: the original Caffe DeepLab-v2 ResNet that the AdvEnt (ImageNet init) and DACS
  (MSCOCO init) weight files were trained with: stride on the *first 1×1* conv, max-pool with
  ``ceil_mode=True``; fed BGR 0–255 minus the mean pixel
  (:data:`lightning_uda.normalization.CAFFE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

#: The ResNet layouts :class:`DilatedResNet` builds.
STYLES = ("torchvision", "caffe")

#: Input space (a :data:`lightning_uda.normalization.INPUT_SPACES` name) each style expects.
STYLE_INPUT_NORMALIZATION: dict[str, str] = {"torchvision": "imagenet", "caffe": "caffe"}

#: torchvision ResNet name -> (layer3 channels, layer4 channels).
RESNET_CHANNELS: dict[str, tuple[int, int]] = {
    "resnet18": (256, 512),
    "resnet34": (256, 512),
    "resnet50": (1024, 2048),
    "resnet101": (1024, 2048),
    "resnet152": (1024, 2048),
}


def _torchvision_weights(encoder: str, encoder_weights: str | None):
    """Map our ``encoder_weights`` name to a torchvision weights enum (``None`` -> random init)."""
    if encoder_weights is None:
        return None
    if encoder_weights == "imagenet":
        return torchvision.models.get_model_weights(encoder).IMAGENET1K_V1
    raise ValueError(
        f"encoder_weights must be None (random init) or 'imagenet' (torchvision IMAGENET1K_V1, "
        f"downloaded on first use), got {encoder_weights!r}. To start from a local file use "
        f"build_segmentor(..., checkpoint=PATH)."
    )


def _check_style(style: str, weights: str | None) -> None:
    """Validate ``style`` and refuse torchvision ImageNet weights for the Caffe layout."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {list(STYLES)}, got {style!r}")
    if style == "caffe" and weights is not None:
        raise ValueError(
            f"encoder_weights={weights!r} with style='caffe': encoder_weights loads torchvision's "
            "ImageNet weights, which belong to the torchvision layout (stride on the 3×3 conv, "
            "floor max-pool, ImageNet-normalised RGB input). For the Caffe DeepLab-v2 weights "
            "(AdvEnt's ImageNet or DACS' MSCOCO init) leave encoder_weights=None and pass the "
            "file: build_segmentor('deeplabv2', ..., style='caffe', checkpoint=PATH); for "
            "torchvision's weights use style='torchvision'."
        )


def _caffe_stem_and_stride(resnet: nn.Module) -> None:
    """Turn a torchvision ResNet into the Caffe DeepLab-v2 layout, in place.

    The max-pool gets ``ceil_mode=True`` and, in the first (down-sampling) Bottleneck of
    ``layer2``, the stride 2 moves from the 3×3 ``conv2`` to the 1×1 ``conv1`` (the
    ``downsample.0`` projection keeps its stride 2). A ``BasicBlock`` (resnet18/34) already has
    its stride on ``conv1``, so only the max-pool changes. ``layer3``/``layer4`` are made stride 1
    by :func:`_dilate_layer` in both layouts.
    """
    resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    first = resnet.layer2[0]
    if isinstance(first, Bottleneck):
        first.conv1.stride = (2, 2)
        first.conv2.stride = (1, 1)


def _dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a ResNet stage into a stride-1 stage whose 3×3 convs all have ``dilation``.

    In place: every stride is set to 1 (the first block's 3×3 conv or 1×1 conv and the
    downsample projection) and every 3×3 conv gets ``dilation=padding=dilation``, so spatial size
    is preserved. The weights keep their shapes, so ImageNet weights still load.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


class DilatedResNet(nn.Module):
    """ResNet stem + ``layer1..layer4`` with output stride 8 (layer3 dilation 2, layer4 dilation 4).

    The parameter names are those of the torchvision ResNet without ``fc`` (``conv1``, ``bn1``,
    ``layer1`` ... ``layer4``), so a torchvision ResNet state dict loads into it directly. The
    Caffe DeepLab-v2 ResNet of AdvEnt and DACS has the same names and shapes (its weight files
    load with ``build_segmentor(..., checkpoint=PATH)``).

    Two layouts (``style``) differ in where the down-sampling happens, not in the parameters:

    - ``"torchvision"``: torchvision's ResNet. The stride 2 of ``layer2``'s first Bottleneck sits
      on its 3×3 ``conv2``; the max-pool rounds down. Expects ImageNet-normalised RGB
      (``input_normalization == "imagenet"``). ``⌈H/8⌉`` features (64×64 for 512×512).
    - ``"caffe"``: the Caffe DeepLab-v2 ResNet that AdvEnt's ImageNet and DACS' MSCOCO weight
      files were trained with. The stride 2 sits on the first 1×1 ``conv1`` of that block
      (``downsample.0`` keeps its stride 2), and the max-pool is
      ``MaxPool2d(3, stride=2, padding=1, ceil_mode=True)``. Expects BGR in [0, 255] minus the
      mean pixel (``input_normalization == "caffe"``, :data:`lightning_uda.normalization.CAFFE`).
      One more row and column: 65×65 features for 512×512. The references also freeze every
      BatchNorm weight and bias (``freeze_bn_affine=True``, the default). For ``BasicBlock``
      encoders (resnet18/34) the stride is on ``conv1`` in both layouts; only the max-pool
      differs.

    Every 3×3 conv of ``layer3`` has dilation 2 and every one of ``layer4`` dilation 4, as in the
    original DeepLab-v2 (Caffe) ResNet that AdvEnt and DACS use. torchvision's
    ``replace_stride_with_dilation=[False, True, True]`` differs only in the first block of each
    stage (dilation 1 resp. 2) and does not support ``BasicBlock`` (resnet18/34), hence the
    explicit :func:`_dilate_layer`.

    Args:
        name: one of :data:`RESNET_CHANNELS` (``resnet18``, ``resnet34``, ``resnet50``,
            ``resnet101``, ``resnet152``).
        weights: ``None`` (random init; nothing is downloaded) or ``"imagenet"`` (torchvision
            ``IMAGENET1K_V1``, downloaded to the torch hub cache on first use; opt-in;
            ``style="torchvision"`` only).
        freeze_bn_affine: set ``requires_grad=False`` on every BatchNorm weight and bias, as the
            AdvEnt/DACS DeepLab-v2 does (running statistics still update in train mode).
        style: ``"torchvision"`` (default) or ``"caffe"``, see above.

    Shape:
        - input: ``B×3×H×W`` (in the space :attr:`input_normalization` names).
        - output: ``(layer3, layer4)`` features, ``B×C3×h×w`` and ``B×C4×h×w``;
          ``C3, C4 = RESNET_CHANNELS[name]`` (1024, 2048 for resnet50/101/152).
          ``"torchvision"``: ``h = ⌈H/8⌉``. ``"caffe"``: ``h = ⌈(⌈(⌈H/2⌉ − 1)/2⌉ + 1)/2⌉``,
          which is ``⌈H/8⌉ + 1`` when ``H mod 8`` is 0 or 7 (65 for 512) and ``⌈H/8⌉``
          otherwise. Same rule for ``w``.

    Raises:
        ValueError: unknown ``name`` or ``style``, an unknown ``weights`` name, or
            ``weights="imagenet"`` with ``style="caffe"``.
    """

    def __init__(
        self,
        name: str = "resnet101",
        weights: str | None = None,
        freeze_bn_affine: bool = True,
        style: Literal["torchvision", "caffe"] = "torchvision",
    ) -> None:
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise ValueError(
                f"unknown DeepLabV2 encoder {name!r}; choose one of {sorted(RESNET_CHANNELS)}"
            )
        _check_style(style, weights)  # before anything is downloaded
        resnet = getattr(torchvision.models, name)(weights=_torchvision_weights(name, weights))
        if style == "caffe":
            _caffe_stem_and_stride(resnet)
        self.name = name
        self.style = style
        #: Input space the layout expects (an ``INPUT_SPACES`` name).
        self.input_normalization = STYLE_INPUT_NORMALIZATION[style]
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        _dilate_layer(self.layer3, dilation=2)
        _dilate_layer(self.layer4, dilation=4)
        self.layer3_channels, self.out_channels = RESNET_CHANNELS[name]
        if freeze_bn_affine:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``B×3×H×W`` -> ``(B×C3×h×w, B×C4×h×w)`` (layer3, layer4 features; ``h ≈ H/8``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        layer3 = self.layer3(x)
        return layer3, self.layer4(layer3)


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP classifier: the *sum* of parallel 3×3 convs with different dilations.

    Each branch is ``Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)`` with
    weights drawn from N(0, 0.01) (bias keeps PyTorch's default init), as in the original code.

    Args:
        in_channels: feature channels (2048 for layer4 of ResNet-50/101).
        num_classes: K.
        dilations: one branch per entry; DACS uses ``(6, 12)``, AdvEnt ``(6, 12, 18, 24)``.

    Shape:
        - input: ``B×in_channels×h×w``; output: ``B×K×h×w`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(
                f"dilations must be a non-empty sequence of ints >= 1, got {dilations}"
            )
        self.dilations = dilations
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, mean=0.0, std=0.01)  # DeepLab-v2 / AdvEnt / DACS

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×K×h×w``: sum of the branch outputs."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab-v2: dilated ResNet (output stride 8) + ASPP-sum classifier(s).

    ``.encoder`` is the backbone (:class:`DilatedResNet`); ``.classifier`` (on layer4) and, with
    ``multi_level=True``, ``.aux_classifier`` (on layer3, as in AdvEnt's multi-level variant) form
    the head. Logits are at 1/8 of the input resolution; callers upsample.

    ``style`` picks the ResNet layout (details in :class:`DilatedResNet`):

    - ``"torchvision"`` (default): for torchvision's ImageNet weights
      (``encoder_weights="imagenet"``) or training from scratch; ImageNet-normalised RGB input.
    - ``"caffe"``: the layout of the Caffe DeepLab-v2 ResNet-101 that the papers start from
      (AdvEnt: ``DeepLab_resnet_pretrained_imagenet.pth``; DACS: ``resnet101COCO-41f33a49.pth``),
      loaded with ``build_segmentor("deeplabv2", style="caffe", checkpoint=PATH)``. Input: BGR
      0–255 minus the mean pixel (normalisation ``"caffe"``); logits one row and column larger
      (65×65 for 512×512).

    :attr:`input_normalization` names the input space the model expects (``"imagenet"`` or
    ``"caffe"``, a :func:`lightning_uda.normalization.get_normalization` name).

    Args:
        num_classes: K (19 for Cityscapes).
        encoder: ``resnet101`` (the papers), ``resnet50``, ``resnet152``, or the small
            ``resnet18``/``resnet34`` (512/256 channels, for tests).
        dilations: ASPP branch dilations, summed. DACS: ``(6, 12)`` (default); AdvEnt:
            ``(6, 12, 18, 24)``. The auxiliary classifier uses the same dilations (as in AdvEnt).
        multi_level: add the auxiliary layer3 classifier and enable :meth:`forward_multi`.
        encoder_weights: ``None`` (default; random init, nothing downloaded) or ``"imagenet"``
            (torchvision ``IMAGENET1K_V1``; downloads on first use, opt-in). The papers start from
            ImageNet (AdvEnt) or MSCOCO (DACS) weights; load such a file with
            ``build_segmentor(..., checkpoint=PATH)``.
        freeze_bn_affine: freeze the BatchNorm weights and biases of the encoder
            (``requires_grad=False``) as the AdvEnt/DACS code does. Default ``True``.
        style: ``"torchvision"`` (default) or ``"caffe"``; ``encoder_weights="imagenet"`` needs
            ``"torchvision"``.

    Shape:
        - input: ``B×3×H×W``; output of :meth:`forward`: ``B×K×h×w`` with ``h, w = ⌈H/8⌉,
          ⌈W/8⌉`` (``"torchvision"``); ``"caffe"`` adds one where the size is 0 or 7 mod 8
          (65×65 for 512×512; see :class:`DilatedResNet`).

    Example:
        >>> import torch
        >>> model = DeepLabV2(num_classes=19, encoder="resnet18")
        >>> model(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 19, 8, 8])
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet101",
        dilations: Sequence[int] = (6, 12),
        multi_level: bool = False,
        encoder_weights: str | None = None,
        freeze_bn_affine: bool = True,
        style: Literal["torchvision", "caffe"] = "torchvision",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.multi_level = bool(multi_level)
        self.encoder = DilatedResNet(
            encoder, weights=encoder_weights, freeze_bn_affine=freeze_bn_affine, style=style
        )
        self.style = style
        #: Input space the model expects: ``"imagenet"`` (torchvision) or ``"caffe"``.
        self.input_normalization = self.encoder.input_normalization
        self.classifier = ASPPClassifier(self.encoder.out_channels, num_classes, dilations)
        self.aux_classifier = (
            ASPPClassifier(self.encoder.layer3_channels, num_classes, dilations)
            if self.multi_level
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """``B×3×H×W`` -> main logits ``B×K×h×w``, ``h ≈ H/8`` (never the auxiliary output)."""
        _, layer4 = self.encoder(x)
        return self.classifier(layer4)

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(main logits, [layer3, layer4])`` from one forward (the segmentor feature contract,
        see :func:`lightning_uda.models.forward_with_features`)."""
        layer3, layer4 = self.encoder(x)
        return self.classifier(layer4), [layer3, layer4]

    def forward_multi(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``B×3×H×W`` -> ``(main, aux)`` logits, both ``B×K×h×w`` (needs ``multi_level``).

        ``main`` comes from layer4, ``aux`` from layer3 (AdvEnt's multi-level output).
        """
        if self.aux_classifier is None:
            raise RuntimeError(
                "forward_multi needs the auxiliary classifier: build DeepLabV2(multi_level=True)"
            )
        layer3, layer4 = self.encoder(x)
        return self.classifier(layer4), self.aux_classifier(layer3)


__all__ = [
    "ASPPClassifier",
    "DeepLabV2",
    "DilatedResNet",
    "RESNET_CHANNELS",
    "STYLES",
    "STYLE_INPUT_NORMALIZATION",
]
