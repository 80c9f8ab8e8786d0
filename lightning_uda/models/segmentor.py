"""Segmentor factory (:func:`build_segmentor`), parameter groups and the feature contract.

Every segmentor built here maps ``B×3×H×W`` images to ``B×K×h×w`` logits (``h, w`` may be smaller
than ``H, W``; callers upsample) and keeps its backbone under ``.encoder``; everything else is the
head (10× learning rate in DACS/AdvEnt). Each also names the input space it expects in
``input_normalization`` (``"imagenet"``, or ``"caffe"`` for ``DeepLabV2(style="caffe")``).

Architectures live in their own modules (:mod:`~lightning_uda.models.tiny_unet`,
:mod:`~lightning_uda.models.deeplabv2`, :mod:`~lightning_uda.models.daformer`); weight files are
read by :func:`~lightning_uda.models.checkpoints.load_checkpoint`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import segmentation_models_pytorch as smp
from torch import Tensor, nn

from lightning_uda.models.checkpoints import load_checkpoint
from lightning_uda.models.daformer import DAFormer
from lightning_uda.models.deeplabv2 import DeepLabV2
from lightning_uda.models.hrda import build_hrda
from lightning_uda.models.tiny_unet import TinyUNet
from lightning_uda.models.vfm import VFMSegmentor, build_vfm

#: Our own architectures; any other name is looked up in ``smp.MODEL_ARCHITECTURES_MAPPING``.
_OWN_ARCHS = (
    "tiny_unet",
    "deeplabv2",
    "daformer",
    "hrda",
    "vfm",
)


def forward_with_features(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and encoder features of ``images`` from a single forward (encoder run once).

    The segmentor feature contract that methods looking inside the network rely on (ImageNet
    feature distance, domain classifiers on features): the model splits into
    ``encoder(x) -> list of feature maps, shallow → deep`` and a head turning them into logits.

    - A model with ``forward_features(x) -> (logits, features)`` (DeepLabV2: ``[layer3,
      layer4]``; TinyUNet: its encoder's list; a user's own segmentor) is called as is.
    - segmentation-models-pytorch models: ``encoder`` → ``decoder`` → ``segmentation_head``,
      as their ``forward`` does.

    Returns:
        ``(B×K×h×w logits, list of B×C_i×h_i×w_i features)``; the logits equal ``model(images)``.

    Raises:
        TypeError: the model offers neither; the message says what to add.
    """
    own = getattr(model, "forward_features", None)
    if callable(own):
        return own(images)
    if isinstance(model, smp.base.SegmentationModel):
        features = model.encoder(images)
        logits = model.segmentation_head(model.decoder(features))
        return logits, list(features)
    raise TypeError(
        f"{type(model).__name__} does not expose its features: give it a method "
        "forward_features(x) -> (logits, [feature maps shallow → deep]) that runs the encoder "
        "once (see lightning_uda.models.forward_with_features)."
    )


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``model``'s parameters into ``(backbone, head)`` for the 1× / 10× learning rates.

    The backbone is ``model.encoder``; the head is every other parameter of ``model``. Every
    parameter appears in exactly one list, once, in ``model.parameters()`` order; frozen ones
    (``requires_grad=False``, e.g. DeepLabV2's BatchNorm affine) are included (optimisers skip
    parameters that never get a gradient).

    Raises:
        TypeError: ``model`` has no ``.encoder`` module.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(
            f"parameter_groups needs the backbone under `.encoder`; {type(model).__name__} has "
            "none. Build the model with build_segmentor or add an `encoder` submodule."
        )
    backbone = list(encoder.parameters())
    backbone_ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    return backbone, head


def _accepted_kwargs(cls: type, reserved: set[str]) -> set[str]:
    """Keyword arguments of ``cls.__init__`` that a caller may pass through ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    return {
        name
        for name, p in params.items()
        if name != "self"
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    } - reserved


def _check_kwargs(arch: str, cls: type, kwargs: Mapping[str, Any], reserved: set[str]) -> None:
    accepted = _accepted_kwargs(cls, reserved)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"build_segmentor(arch={arch!r}) got unexpected keyword argument(s) {unknown}; "
            f"{cls.__name__} accepts {sorted(accepted)} (plus num_classes, encoder, "
            "encoder_weights and checkpoint, which build_segmentor takes itself)"
        )


def valid_archs() -> list[str]:
    """All names :func:`build_segmentor` accepts: ours, then smp's."""
    return [*_OWN_ARCHS, *smp.MODEL_ARCHITECTURES_MAPPING]


def build_segmentor(
    arch: str,
    num_classes: int,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a segmentor ``B×3×H×W -> B×K×h×w`` logits with its backbone under ``.encoder``.

    The model's ``input_normalization`` attribute names the input space it expects (a
    :func:`lightning_uda.normalization.get_normalization` name): ``"caffe"`` for
    ``deeplabv2`` with ``style="caffe"``, ``"imagenet"`` for everything else.

    Args:
        arch: ``"tiny_unet"`` (:class:`TinyUNet`, logits at full resolution), ``"deeplabv2"``
            (:class:`~lightning_uda.models.deeplabv2.DeepLabV2`, logits at 1/8), ``"daformer"``
            (:class:`~lightning_uda.models.daformer.DAFormer`: MiT encoder and DAFormer's
            separable-ASPP fusion head, logits at 1/4), ``"hrda"``
            (:class:`~lightning_uda.models.hrda.HRDA`: DAFormer's or, with ``head="deeplabv2"``,
            DeepLab-v2's network on a context and a detail view fused by a learned scale
            attention; ``detail_size``, ``attention_classwise``), ``"vfm"``
            (:class:`~lightning_uda.models.vfm.VFMSegmentor`: a timm DINOv2 ViT, encoders
            ``dinov2_vit{s,b,l,g}14[_reg]``, with VFM-UDA's light head or, ``head="pyramid"``,
            ViT-Adapter + pyramid head; ``checkpoint`` also takes the official DINOv2 files;
            see docs/vfm.md), or any segmentation_models_pytorch
            architecture name (``"unet"``, ``"deeplabv3plus"``, ``"segformer"``, ...;
            case-insensitive), built with ``smp.create_model``.
        num_classes: K.
        encoder: backbone name. ``tiny_unet``: must be ``None``. ``deeplabv2``: ``resnet101``
            (default), ``resnet50``, ``resnet152``, ``resnet18``, ``resnet34``. ``daformer``:
            ``mit_b5`` (default, the paper), ``mit_b0`` ... ``mit_b4``. smp: any smp encoder
            name (default ``resnet34``, smp's default).
        encoder_weights: ``None`` (default): random init, nothing is downloaded.
            ``"imagenet"`` (opt-in) downloads ImageNet weights on first use (torchvision's
            ``IMAGENET1K_V1`` for ``deeplabv2`` with ``style="torchvision"``; smp's for smp
            architectures and ``daformer``). ``tiny_unet`` has none.
        checkpoint: a local file saved with ``torch.save`` holding a state dict (or an
            already-loaded mapping); see :func:`load_checkpoint` for the accepted layouts. A
            library file is loaded into the **whole model** if its keys match the model's,
            otherwise into the **encoder only** if they match the encoder's (e.g. an ImageNet
            ResNet file; its ``fc.*`` classifier keys are ignored). A DeepLab-v2 reference file
            (DACS' MSCOCO or AdvEnt's ImageNet init, or their checkpoints) fills the encoder, and
            the classifiers where names and shapes match; build it with ``style="caffe"``, e.g.
            ``build_segmentor("deeplabv2", 19, style="caffe", checkpoint=PATH)``. SegFormer's
            ImageNet MiT file (DAFormer's init) fills a MiT encoder, its classifier ``head.*``
            ignored: ``build_segmentor("daformer", 19, checkpoint="mit_b5.pth")``. Applied after
            ``encoder_weights``.
        **kwargs: passed to the architecture: ``TinyUNet(in_channels, width, depth)``,
            ``DeepLabV2(dilations, multi_level, freeze_bn_affine, style)``,
            ``DAFormer(embed_dim, channels, dilations, dropout)``, or the smp class' arguments
            (e.g. ``decoder_channels``; anything for ``tu-`` timm encoders).

    Raises:
        ValueError: unknown ``arch`` (the message lists the valid ones), or an option the
            architecture does not have (an encoder for ``tiny_unet``, a non-MiT encoder for
            ``daformer``, smp ``activation`` / ``aux_params``, which would break the logits
            contract; ``encoder_weights="imagenet"`` with ``style="caffe"``).
        TypeError: a keyword argument the architecture does not accept.
        FileNotFoundError: ``checkpoint`` does not exist.
        RuntimeError: ``checkpoint`` matches no layout, or a reference or MiT file's backbone
            does not fit the encoder.

    Example:
        >>> model = build_segmentor("tiny_unet", num_classes=11)
        >>> backbone, head = parameter_groups(model)
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string, one of {valid_archs()}; got {arch!r}")
    name = arch.lower()
    reserved = {"num_classes", "classes", "encoder", "encoder_name", "encoder_weights"}
    if name == "tiny_unet":
        if encoder is not None:
            raise ValueError(
                f"arch='tiny_unet' has a fixed encoder; got encoder={encoder!r} (leave it None, "
                "use width=/depth= to size it)"
            )
        if encoder_weights is not None:
            raise ValueError(
                f"arch='tiny_unet' has no pretrained weights; got encoder_weights="
                f"{encoder_weights!r}. Use checkpoint=PATH to start from a saved model."
            )
        _check_kwargs(arch, TinyUNet, kwargs, reserved)
        model: nn.Module = TinyUNet(num_classes=num_classes, **kwargs)
    elif name == "deeplabv2":
        _check_kwargs(arch, DeepLabV2, kwargs, reserved)
        model = DeepLabV2(
            num_classes=num_classes,
            encoder=encoder or "resnet101",
            encoder_weights=encoder_weights,
            **kwargs,
        )
    elif name == "daformer":
        _check_kwargs(arch, DAFormer, kwargs, reserved)
        model = DAFormer(
            num_classes=num_classes,
            encoder=encoder or "mit_b5",
            encoder_weights=encoder_weights,
            **kwargs,
        )
    elif name == "hrda":
        model = build_hrda(num_classes, encoder, encoder_weights, **kwargs)
    elif name == "vfm":  # DINOv2 ViT (timm): reads DINOv2 files itself, then library ones
        _check_kwargs(arch, VFMSegmentor, kwargs, reserved)
        model = build_vfm(num_classes, encoder, encoder_weights, checkpoint, **kwargs)
        checkpoint = None
    elif name in smp.MODEL_ARCHITECTURES_MAPPING:
        model = _build_smp(name, num_classes, encoder or "resnet34", encoder_weights, kwargs)
        # smp's encoders take ImageNet-normalised RGB (their ImageNet weights were trained on it).
        model.input_normalization = "imagenet"
    else:
        raise ValueError(f"unknown segmentor arch {arch!r}; valid: {valid_archs()}")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _build_smp(
    name: str,
    num_classes: int,
    encoder: str,
    encoder_weights: str | None,
    kwargs: dict[str, Any],
) -> nn.Module:
    """``smp.create_model`` with our defaults and argument checks."""
    cls = smp.MODEL_ARCHITECTURES_MAPPING[name]
    # smp forwards unknown **kwargs to timm ("tu-" encoders) only; elsewhere they would vanish.
    if not encoder.startswith("tu-"):
        _check_kwargs(name, cls, kwargs, {"encoder_name", "encoder_weights", "classes"})
    if kwargs.get("activation") is not None:
        raise ValueError(
            f"activation={kwargs['activation']!r}: segmentors must return logits; apply softmax "
            "where you need probabilities"
        )
    if kwargs.get("aux_params") is not None:
        raise ValueError("aux_params is not supported: forward must return the logits tensor only")
    try:
        return smp.create_model(
            name,
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            classes=num_classes,
            **kwargs,
        )
    except KeyError as error:  # smp's message lists the valid encoders
        raise ValueError(f"smp arch {name!r}: {error.args[0]}") from error


__all__ = [
    "build_segmentor",
    "forward_with_features",
    "parameter_groups",
    "valid_archs",
]
