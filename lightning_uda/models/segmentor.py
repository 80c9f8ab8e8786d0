"""Segmentor factory, parameter groups, checkpoint loading and the small :class:`TinyUNet`.

Every segmentor built here maps ``B×3×H×W`` images to ``B×K×h×w`` logits (``h, w`` may be smaller
than ``H, W``; callers upsample) and keeps its backbone under ``.encoder``; everything else is the
head (10× learning rate in DACS/AdvEnt). Each also names the input space it expects in
``input_normalization`` (``"imagenet"``, or ``"caffe"`` for ``DeepLabV2(style="caffe")``).

:func:`load_checkpoint` reads the library's own checkpoints, the DeepLab-v2 weight files the
papers start from (DACS' MSCOCO and AdvEnt's ImageNet initialisations, and their trained
checkpoints) and SegFormer's ImageNet MiT files (DAFormer's initialisation); see
:data:`CHECKPOINT_LAYOUTS`.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.models.daformer import DAFormer
from lightning_uda.models.deeplabv2 import ASPPClassifier, DeepLabV2

#: Our own architectures; any other name is looked up in ``smp.MODEL_ARCHITECTURES_MAPPING``.
_OWN_ARCHS = ("tiny_unet", "deeplabv2", "daformer")

#: Wrapper prefixes tried, in order, when matching checkpoint keys to the model
#: (Lightning modules store the segmentor as ``model.``; DDP / DataParallel add ``module.``).
CHECKPOINT_PREFIXES = ("", "model.", "module.", "model.module.", "module.model.")

#: How many key names an error message shows.
_SHOW_KEYS = 5

_LOGGER = logging.getLogger("lightning_uda")

#: The checkpoint layouts :func:`load_checkpoint` recognises: name -> description.
CHECKPOINT_LAYOUTS: dict[str, str] = {
    "library": (
        "this library's own state dicts: the whole model or its encoder (also a torchvision "
        "ResNet file, whose fc.* is ignored), plain or under 'state_dict' (Lightning) or 'model', "
        f"keys optionally prefixed {', '.join(repr(p) for p in CHECKPOINT_PREFIXES[1:])}"
    ),
    "deeplab": (
        "plain DeepLab-v2 ResNet, as DACS' MSCOCO init (resnet101COCO-41f33a49.pth) and DACS "
        "checkpoints: conv1.*, bn1.*, layer1..layer4.*, optional classifier "
        "layer5.conv2d_list.<i>.weight/bias on layer4"
    ),
    "advent-imagenet": (
        "AdvEnt's ImageNet init (DeepLab_resnet_pretrained_imagenet.pth): the 'deeplab' keys "
        "prefixed 'Scale.'"
    ),
    "advent": (
        "AdvEnt checkpoints: conv1.*, bn1.*, layer1..layer4.*, main classifier "
        "layer6.conv2d_list.* on layer4 and, multi-level, auxiliary layer5.conv2d_list.* on layer3"
    ),
    "mit-imagenet": (
        "SegFormer's ImageNet Mix Transformer files (mit_b0.pth ... mit_b5.pth, DAFormer's init) "
        "for a MiT encoder (daformer, smp mit_b* encoders): patch_embed1..4.*, block1..4.*, "
        "norm1..4.* and the ImageNet classifier head.* (ignored); plain or under 'state_dict', "
        "keys optionally prefixed 'backbone.' (mmseg)"
    ),
}

#: Top-level names of the DeepLab-v2 reference ResNet: backbone, then classifier modules.
_REFERENCE_BACKBONE = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_REFERENCE_HEADS = ("layer5", "layer6")
#: Whole-file key prefixes of the reference layouts (``None``: decided by the keys).
_REFERENCE_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("Scale.", "advent-imagenet"),
    ("", None),
    ("module.", None),  # a DataParallel-wrapped reference model
)
_CLASSIFIER_KEY = re.compile(r"conv2d_list\.(\d+)\.(weight|bias)")
#: Top-level names of a SegFormer MiT file: the encoder's, then its ImageNet classifier.
_MIT_BACKBONE = re.compile(r"(patch_embed|block|norm)[1-4]")
_MIT_HEAD = "head"
#: Whole-file key prefixes of the MiT layout (mmseg checkpoints store it as ``backbone.``).
_MIT_PREFIXES = ("", "backbone.")


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
            separable-ASPP fusion head, logits at 1/4), or any segmentation_models_pytorch
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


def _read_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, str]:
    """Load ``checkpoint`` and return ``(flat state dict, description for messages)``."""
    if isinstance(checkpoint, Mapping):
        obj: Any = checkpoint
        where = "the given state dict"
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint file not found: {path} (expected a local file written by "
                "torch.save holding a state dict, plain or under 'state_dict' or 'model')"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise RuntimeError(
                f"{path} holds objects other than tensors and plain containers, which "
                "torch.load(weights_only=True) refuses. If you trust the file, load it yourself "
                "(torch.load(path, weights_only=False)) and pass the state dict as checkpoint="
            ) from error
        except (EOFError, RuntimeError) as error:  # empty, truncated or not a torch file
            size = path.stat().st_size
            raise RuntimeError(
                f"cannot read checkpoint {path} ({size} bytes): {type(error).__name__}: {error}. "
                "The file is empty, truncated or not written by torch.save; copy it again."
            ) from error
        where = str(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        found = list(obj)[:_SHOW_KEYS] if isinstance(obj, Mapping) else type(obj).__name__
        raise RuntimeError(
            f"{where} does not hold a state dict (a non-empty mapping of names to tensors, plain "
            f"or under 'state_dict' or 'model'); found {found}"
        )
    return dict(obj), where


def _compare(candidate: Mapping[str, Tensor], target: Mapping[str, Tensor], encoder: bool) -> dict:
    """Missing / unexpected / shape-mismatched keys of ``candidate`` against ``target``."""
    # Old checkpoints may lack BatchNorm's step counter; it does not affect the outputs.
    missing = [k for k in target if k not in candidate and not k.endswith("num_batches_tracked")]
    # An ImageNet classifier file carries its `fc` head; the encoder has no use for it.
    unexpected = [k for k in candidate if k not in target and not (encoder and k.startswith("fc."))]
    mismatched = [
        f"{k}: checkpoint {tuple(candidate[k].shape)} vs model {tuple(target[k].shape)}"
        for k in candidate
        if k in target and candidate[k].shape != target[k].shape
    ]
    matched = sum(1 for k in candidate if k in target) - len(mismatched)
    return {
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
        "matched": matched,
    }


@dataclass(frozen=True)
class CheckpointReport:
    """What :func:`load_checkpoint` loaded (it also logs this at INFO level).

    Attributes:
        source: the file's path, or ``"the given state dict"``.
        layout: the recognised layout, a :data:`CHECKPOINT_LAYOUTS` name.
        target: ``"model"`` when every tensor of the model (but BatchNorm's step counters) was
            set from the file, ``"encoder"`` when the backbone was and the head kept (at least
            part of) its initialisation; ``heads`` names the head modules that were loaded.
        heads: head modules set from the file besides the encoder (``"classifier"``,
            ``"aux_classifier"``); with ``target="model"`` every head module was.
        loaded: the model's state-dict keys that were set.
        skipped: file key -> why it was not loaded (reference classifiers that do not fit,
            an ImageNet file's ``fc.*``). Keys outside a library file's wrapper prefix (a
            Lightning checkpoint's ``teacher.*``, ``discriminator.*``) are not listed.
    """

    source: str
    layout: str
    target: Literal["model", "encoder"]
    heads: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def _show_keys(keys: Sequence[str]) -> str:
    """``"N [first keys], ... (M more)"`` for messages."""
    more = f", ... ({len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
    return f"{len(keys)} {list(keys[:_SHOW_KEYS])}{more}"


def _log_skipped(skipped: Mapping[str, str]) -> None:
    """One INFO line per distinct reason, naming the first keys it applies to."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        _LOGGER.info("load_checkpoint: skipped %s: %s", _show_keys(keys), reason)


def _load_tensors(module: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """``module.load_state_dict(tensors, strict=False)``, past subclasses' overrides.

    smp's MiT encoder overrides ``load_state_dict`` without a ``strict`` argument; the callers
    have already checked the keys (a missing ``num_batches_tracked`` is the only gap allowed).
    """
    nn.Module.load_state_dict(module, tensors, strict=False)


def _load_library(
    model: nn.Module, state_dict: Mapping[str, Tensor], where: str
) -> tuple[CheckpointReport | None, dict[str, Any]]:
    """Try the library layout: ``(report, _)`` when it loaded, ``(None, closest miss)`` if not."""
    encoder = getattr(model, "encoder", None)
    targets: list[tuple[Literal["model", "encoder"], nn.Module]] = [("model", model)]
    if isinstance(encoder, nn.Module):
        targets.append(("encoder", encoder))
    best: dict[str, Any] | None = None
    for prefix in CHECKPOINT_PREFIXES:
        candidate = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not candidate:
            continue
        for target_name, target in targets:
            target_state = target.state_dict()
            comparison = _compare(candidate, target_state, encoder=target_name == "encoder")
            if not (comparison["missing"] or comparison["unexpected"] or comparison["mismatched"]):
                loadable = {k: v for k, v in candidate.items() if k in target_state}
                _load_tensors(target, loadable)
                key_prefix = "" if target_name == "model" else "encoder."
                skipped = {
                    prefix + k: "an ImageNet classifier's fc layer; the encoder has none"
                    for k in candidate
                    if k not in target_state
                }
                report = CheckpointReport(
                    source=where,
                    layout="library",
                    target=target_name,
                    loaded=tuple(key_prefix + k for k in loadable),
                    skipped=skipped,
                )
                _LOGGER.info(
                    "load_checkpoint: loaded %d tensors from %s into the %s (library layout, "
                    "key prefix %r stripped)",
                    len(loadable),
                    where,
                    target_name,
                    prefix,
                )
                _log_skipped(skipped)
                return report, {}
            if best is None or comparison["matched"] > best["matched"]:
                best = {**comparison, "target": target_name, "prefix": prefix}
    assert best is not None  # the state dict is non-empty, so prefix "" gave a candidate
    return None, best


def _match_reference(
    state_dict: Mapping[str, Tensor],
) -> tuple[str, str, dict[str, Tensor]] | None:
    """``(prefix, layout, keys with the prefix stripped)`` for a DeepLab-v2 reference file."""
    known = {*_REFERENCE_BACKBONE, *_REFERENCE_HEADS}
    for prefix, layout in _REFERENCE_PREFIXES:
        if not all(k.startswith(prefix) for k in state_dict):
            continue
        stripped = {k[len(prefix) :]: v for k, v in state_dict.items()}
        tops = {k.split(".", 1)[0] for k in stripped}
        if tops <= known and "conv1.weight" in stripped:
            return prefix, layout or ("advent" if "layer6" in tops else "deeplab"), stripped
    return None


def _unmatched_reference_keys(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The file's keys that fit no reference layout (under the prefix that leaves fewest)."""
    known = {*_REFERENCE_BACKBONE, *_REFERENCE_HEADS}
    candidates = []
    for prefix, _ in _REFERENCE_PREFIXES:
        candidates.append(
            [
                k
                for k in state_dict
                if not k.startswith(prefix) or k[len(prefix) :].split(".", 1)[0] not in known
            ]
        )
    return min(candidates, key=len)


def _plan_head(
    model: nn.Module,
    module_name: str,
    file_name: str,
    tensors: Mapping[str, Tensor],
    prefix: str,
    layout: str,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Map one reference classifier (``layer5``/``layer6``) onto ``model.<module_name>``.

    ``tensors`` are the file's ``<file_name>.*`` entries (keys relative to ``file_name``).
    Returns ``(state dict to load into the module, skipped file key -> reason)``; the module is
    either loaded completely or left alone.
    """
    file_key = {k: f"{prefix}{file_name}.{k}" for k in tensors}

    def skip_all(reason: str) -> tuple[dict[str, Tensor], dict[str, str]]:
        return {}, {file_key[k]: reason for k in tensors}

    module = getattr(model, module_name, None)
    if not isinstance(module, ASPPClassifier):
        if module_name == "aux_classifier" and isinstance(model, DeepLabV2):
            return skip_all(
                "the file's layer3 classifier; the model has no aux_classifier (build it with "
                "multi_level=True to load it)"
            )
        return skip_all(f"{type(model).__name__} has no DeepLab-v2 classifier `{module_name}`")
    skipped: dict[str, str] = {}
    mapped: dict[str, Tensor] = {}  # module key -> tensor
    source: dict[str, str] = {}  # module key -> file key (relative to file_name)
    for key, value in tensors.items():
        match = _CLASSIFIER_KEY.fullmatch(key)
        if match is None:
            skipped[file_key[key]] = (
                "not a DeepLab-v2 classifier tensor (expected conv2d_list.<i>.weight/bias)"
            )
            continue
        mapped[f"branches.{match[1]}.{match[2]}"] = value
        source[f"branches.{match[1]}.{match[2]}"] = key
    module_state = module.state_dict()
    n_model = len(module.branches)
    n_file = len({k.split(".")[1] for k in mapped})
    for key, value in module_state.items():
        if key in mapped and mapped[key].shape != value.shape:
            file_shape, model_shape = tuple(mapped[key].shape), tuple(value.shape)
            if file_shape[1:] == model_shape[1:] and file_shape[0] != model_shape[0]:
                why = f"{file_shape[0]} classes, the model has {model_shape[0]}"
            elif len(file_shape) == 4 and file_shape[1] != model_shape[1]:
                why = f"it reads {file_shape[1]} channels, {module_name} reads {model_shape[1]}"
            else:
                why = "different shapes"
            return skip_all(
                f"{file_name} does not fit {module_name} ({why}: {file_key[source[key]]} "
                f"{file_shape} vs {module_name}.{key} {model_shape}); {module_name} keeps its "
                "initialisation"
            )
    missing = [k for k in module_state if k not in mapped]
    if missing:
        return skip_all(
            f"{file_name} has {n_file} branches, {module_name} has {n_model} (missing "
            f"{module_name}.{missing[0]}); {module_name} keeps its initialisation"
        )
    extra = [k for k in mapped if k not in module_state]
    if extra and layout != "deeplab":
        return skip_all(
            f"{file_name} sums {n_file} branches, {module_name} has {n_model}: build the model "
            f"with {n_file} dilations (AdvEnt: dilations=(6, 12, 18, 24)) to load it"
        )
    for key in extra:  # DACS: 4 branches stored, the first 2 used
        skipped[file_key[source[key]]] = (
            f"{module_name} has {n_model} branches, {file_name} {n_file}; the extra branches are "
            "left out (exact for DACS checkpoints: DACS' Classifier_Module returns after adding "
            "the second branch, so its 4 stored branches act as the 2-branch (6, 12) head)"
        )
    return {k: v for k, v in mapped.items() if k in module_state}, skipped


def _require_backbone_fit(
    comparison: Mapping[str, list[str]],
    encoder: nn.Module,
    prefix: str,
    layout: str,
    where: str,
    part: str,
    hint: str,
) -> None:
    """Raise unless every ``part`` tensor of a reference file fits the encoder (names and
    shapes), naming the missing, unexpected and mismatched keys (with the file's ``prefix``)."""
    if not (comparison["missing"] or comparison["unexpected"] or comparison["mismatched"]):
        return
    name = getattr(encoder, "name", type(encoder).__name__)
    unexpected = [prefix + k for k in comparison["unexpected"]]
    mismatched = [prefix + k for k in comparison["mismatched"]]
    raise RuntimeError(
        f"checkpoint {where} has the {layout!r} layout ({CHECKPOINT_LAYOUTS[layout]}), but "
        f"its backbone does not fit the model's encoder ({name}); every {part} tensor "
        f"must load. Missing in the file: {_show_keys(comparison['missing'])}; not in the "
        f"encoder: {_show_keys(unexpected)}; shape mismatches: {_show_keys(mismatched)}. "
        f"Check encoder= ({hint})."
    )


def _load_reference(
    model: nn.Module, stripped: dict[str, Tensor], prefix: str, layout: str, where: str
) -> CheckpointReport:
    """Load a DeepLab-v2 reference file (keys already stripped of ``prefix``) into ``model``."""
    encoder: nn.Module = model.encoder
    backbone = {k: v for k, v in stripped.items() if k.split(".", 1)[0] in _REFERENCE_BACKBONE}
    head = {k: v for k, v in stripped.items() if k.split(".", 1)[0] in _REFERENCE_HEADS}
    comparison = _compare(backbone, encoder.state_dict(), encoder=False)
    _require_backbone_fit(
        comparison,
        encoder,
        prefix,
        layout,
        where,
        "backbone",
        "the DeepLab-v2 files of DACS and AdvEnt hold a ResNet-101: encoder='resnet101'",
    )
    if "layer6" in {k.split(".", 1)[0] for k in head}:
        groups = {"layer6": "classifier", "layer5": "aux_classifier"}
    else:
        groups = {"layer5": "classifier"}
    plans: dict[str, dict[str, Tensor]] = {}
    skipped: dict[str, str] = {}
    for file_name, module_name in groups.items():
        tensors = {
            k[len(file_name) + 1 :]: v for k, v in head.items() if k.startswith(file_name + ".")
        }
        if not tensors:
            continue
        plan, head_skipped = _plan_head(model, module_name, file_name, tensors, prefix, layout)
        skipped.update(head_skipped)
        if plan:
            plans[module_name] = plan
    encoder.load_state_dict(backbone, strict=False)  # a missing num_batches_tracked is fine
    for module_name, plan in plans.items():
        getattr(model, module_name).load_state_dict(plan)
    loaded = [f"encoder.{k}" for k in backbone] + [
        f"{module_name}.{k}" for module_name, plan in plans.items() for k in plan
    ]
    remaining = set(model.state_dict()) - set(loaded)
    complete = not any(not k.endswith("num_batches_tracked") for k in remaining)
    report = CheckpointReport(
        source=where,
        layout=layout,
        target="model" if complete else "encoder",
        heads=tuple(plans),
        loaded=tuple(loaded),
        skipped=skipped,
    )
    heads_text = "".join(
        f", {module_name} from {prefix}{file_name}"
        for file_name, module_name in groups.items()
        if module_name in plans
    )
    _LOGGER.info(
        "load_checkpoint: loaded %s (%r layout): %d backbone tensors into encoder%s",
        where,
        layout,
        len(backbone),
        heads_text,
    )
    _log_skipped(skipped)
    kept = [
        name
        for name in ("classifier", "aux_classifier")
        if isinstance(getattr(model, name, None), nn.Module) and name not in plans
    ]
    if kept:
        _LOGGER.info("load_checkpoint: kept the initialisation of %s", ", ".join(kept))
    if getattr(encoder, "style", None) != "caffe":
        _LOGGER.warning(
            "load_checkpoint: %s holds Caffe DeepLab-v2 weights, trained with the Caffe ResNet "
            "layout (stride on the first 1×1 conv, ceil-mode max-pool) on BGR 0–255 "
            "mean-subtracted input, but the model's encoder has the %s layout. Build it with "
            "build_segmentor('deeplabv2', ..., style='caffe') and feed it the 'caffe' input "
            "normalisation.",
            where,
            getattr(encoder, "style", "torchvision"),
        )
    return report


def _match_mit(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor]] | None:
    """``(prefix, keys with the prefix stripped)`` for a SegFormer MiT file, else ``None``."""
    for prefix in _MIT_PREFIXES:
        if not all(k.startswith(prefix) for k in state_dict):
            continue
        stripped = {k[len(prefix) :]: v for k, v in state_dict.items()}
        tops = {k.split(".", 1)[0] for k in stripped}
        if "patch_embed1.proj.weight" in stripped and all(
            top == _MIT_HEAD or _MIT_BACKBONE.fullmatch(top) for top in tops
        ):
            return prefix, stripped
    return None


def _load_mit(
    model: nn.Module, stripped: dict[str, Tensor], prefix: str, where: str
) -> CheckpointReport:
    """Load a SegFormer MiT file (keys already stripped of ``prefix``) into ``model.encoder``."""
    layout = "mit-imagenet"
    encoder: nn.Module = model.encoder
    backbone = {k: v for k, v in stripped.items() if k.split(".", 1)[0] != _MIT_HEAD}
    comparison = _compare(backbone, encoder.state_dict(), encoder=False)
    _require_backbone_fit(
        comparison,
        encoder,
        prefix,
        layout,
        where,
        "encoder",
        "the file's variant: mit_b5.pth needs encoder='mit_b5', e.g. "
        "build_segmentor('daformer', ...)",
    )
    _load_tensors(encoder, backbone)
    skipped = {
        prefix + k: "the MiT file's ImageNet classifier; the encoder has none"
        for k in stripped
        if k not in backbone
    }
    report = CheckpointReport(
        source=where,
        layout=layout,
        target="encoder",
        loaded=tuple(f"encoder.{k}" for k in backbone),
        skipped=skipped,
    )
    _LOGGER.info(
        "load_checkpoint: loaded %s (%r layout, key prefix %r stripped): %d tensors into encoder",
        where,
        layout,
        prefix,
        len(backbone),
    )
    _log_skipped(skipped)
    return report


def load_checkpoint(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]
) -> CheckpointReport:
    """Load a state dict file into ``model``: the whole model, its encoder, or a reference file.

    The file holds a state dict, plain or under ``"state_dict"`` (Lightning checkpoints) or
    ``"model"`` (DACS checkpoints, whose ``"ema_model"`` is then ignored: pass
    ``torch.load(path)["ema_model"]`` to load the teacher). Four families of layouts
    (:data:`CHECKPOINT_LAYOUTS`) are recognised, tried in this order:

    1. ``"library"``: the library's own. Keys may carry a wrapper prefix
       (:data:`CHECKPOINT_PREFIXES`: ``model.``, ``module.``, ``model.module.``,
       ``module.model.``), which is stripped; keys outside the matching prefix are ignored, so a
       Lightning checkpoint of a UDA module loads its student ``model.*`` and skips
       ``teacher.*`` / ``discriminator.*``. The keys must match exactly (names and shapes; a
       missing ``num_batches_tracked`` is tolerated): first the whole model is tried, then the
       encoder alone (where ``fc.*`` keys of an ImageNet classifier are ignored).
    2. ``"deeplab"``: the plain DeepLab-v2 ResNet-101 of DACS: ``conv1.*``, ``bn1.*``,
       ``layer1..layer4.*`` (Bottleneck ``conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/
       downsample.1``; BatchNorm ``weight/bias/running_mean/running_var``, old files without
       ``num_batches_tracked``) and optionally one classifier ``layer5.conv2d_list.<i>.weight/
       bias`` on layer4: DACS' MSCOCO init ``resnet101COCO-41f33a49.pth`` (a classifier with
       the COCO class count) and DACS' trained checkpoints (19 classes).
    3. ``"advent-imagenet"``: AdvEnt's ImageNet init ``DeepLab_resnet_pretrained_imagenet.pth``,
       the same keys prefixed ``Scale.``. ``"advent"``: AdvEnt's trained checkpoints, with the
       main classifier ``layer6`` (on layer4, 2048 channels) and, multi-level, the auxiliary
       ``layer5`` (on layer3, 1024 channels).
    4. ``"mit-imagenet"``: SegFormer's ImageNet Mix Transformer files (``mit_b0.pth`` ...
       ``mit_b5.pth``; DAFormer starts from ``mit_b5.pth``): ``patch_embed1..4.*``,
       ``block1..4.*`` (``norm1``, ``attn.q/kv/sr/norm/proj``, ``norm2``, ``mlp.fc1``,
       ``mlp.dwconv.dwconv``, ``mlp.fc2``), ``norm1..4.*`` and the ImageNet classifier
       ``head.*``, every key optionally prefixed ``backbone.`` (mmseg). The names are those of
       smp's MiT encoder (used by ``daformer`` and smp models with a ``mit_b*`` encoder), so the
       file is loaded into ``model.encoder`` as is; every encoder tensor must load (a missing,
       unexpected or shape-mismatched one is an error naming it) and ``head.*`` is reported
       skipped.

    A reference file (2, 3) is remapped: backbone keys -> ``encoder.<key>`` (the names are the
    same as torchvision's); ``layer5.conv2d_list.<i>`` of a single-classifier file ->
    ``classifier.branches.<i>``; in a file with ``layer6``, ``layer6`` -> ``classifier`` and
    ``layer5`` -> ``aux_classifier`` (if the model is multi-level). Every backbone tensor must
    load (a missing, unexpected or shape-mismatched one is an error naming it). A classifier is
    loaded only when the file holds all of its tensors with the same shapes (e.g. a 19-class
    DACS or AdvEnt checkpoint into a 19-class model); otherwise it keeps its initialisation and
    the file's tensors are reported skipped, with the reason (e.g. the COCO or ImageNet
    classifier's class count). Extra branches in a ``"deeplab"`` file are left out: DACS
    stores four but its ``Classifier_Module`` returns after adding the second, so a DACS
    checkpoint matches the default 2-branch ``dilations=(6, 12)`` head exactly. Dilations are
    not stored in the files; build with the references' (DACS ``(6, 12)``, AdvEnt
    ``(6, 12, 18, 24)``). What was loaded and skipped is logged at INFO level on the
    ``"lightning_uda"`` logger; loading a reference file into an encoder that is not
    ``style="caffe"`` logs a WARNING (the weights expect the Caffe layout and BGR input).

    Differences from the reference code: AdvEnt drops the ImageNet file's ``layer5`` by name
    and copies the rest by name; DACS copies every tensor whose name and shape match, silently.
    Here head tensors are dropped by shape (so a 19-class checkpoint's classifiers do load), a
    backbone that does not fit is an error instead of a partial copy, and what is skipped is
    logged.

    Returns:
        A :class:`CheckpointReport`: the layout, whether the whole model or the encoder (plus
        which head modules) was loaded, and the skipped file keys with reasons.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: not a state dict; a file that matches no layout (the message names the
            file, shows its first keys that fit no layout, the closest library match's
            missing / unexpected / mismatched keys, and lists the known layouts); or a reference
            or MiT file whose backbone does not fit the encoder (the message names the tensors).
    """
    state_dict, where = _read_state_dict(checkpoint)
    report, best = _load_library(model, state_dict, where)
    if report is not None:
        return report
    has_encoder = isinstance(getattr(model, "encoder", None), nn.Module)
    reference = _match_reference(state_dict)
    if reference is not None and has_encoder:
        prefix, layout, stripped = reference
        return _load_reference(model, stripped, prefix, layout, where)
    mit = _match_mit(state_dict)
    if mit is not None and has_encoder:
        prefix, stripped = mit
        return _load_mit(model, stripped, prefix, where)
    layouts = "".join(f"\n  - {name}: {text}" for name, text in CHECKPOINT_LAYOUTS.items())
    raise RuntimeError(
        f"checkpoint {where} matches none of the layouts load_checkpoint knows (nor "
        f"{type(model).__name__} or its encoder). Keys that fit no DeepLab-v2 reference layout: "
        f"{_show_keys(_unmatched_reference_keys(state_dict))}. Closest library match: the "
        f"{best['target']} with key prefix {best['prefix']!r} stripped: missing keys "
        f"{_show_keys(best['missing'])}; unexpected keys {_show_keys(best['unexpected'])}; "
        f"shape mismatches {_show_keys(best['mismatched'])}. Check that arch, encoder and "
        f"num_classes match the run that saved it. Known layouts:{layouts}"
    )


__all__ = [
    "CHECKPOINT_LAYOUTS",
    "CHECKPOINT_PREFIXES",
    "CheckpointReport",
    "TinyUNet",
    "TinyUNetDecoder",
    "TinyUNetEncoder",
    "build_segmentor",
    "forward_with_features",
    "load_checkpoint",
    "parameter_groups",
    "valid_archs",
]
