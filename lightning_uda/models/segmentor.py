"""Segmentor factory, parameter groups, checkpoint loading and the small :class:`TinyUNet`.

Every segmentor built here maps ``B×3×H×W`` images to ``B×K×h×w`` logits (``h, w`` may be smaller
than ``H, W``; callers upsample) and keeps its backbone under ``.encoder``; everything else is the
head (10× learning rate in DACS/AdvEnt).
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.models.deeplabv2 import DeepLabV2

#: Our own architectures; any other name is looked up in ``smp.MODEL_ARCHITECTURES_MAPPING``.
_OWN_ARCHS = ("tiny_unet", "deeplabv2")

#: Wrapper prefixes tried, in order, when matching checkpoint keys to the model
#: (Lightning modules store the segmentor as ``model.``; DDP / DataParallel add ``module.``).
CHECKPOINT_PREFIXES = ("", "model.", "module.", "model.module.", "module.model.")

#: How many key names an error message shows.
_SHOW_KEYS = 5


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
        self.encoder = TinyUNetEncoder(in_channels, channels)
        self.decoder = TinyUNetDecoder(channels)
        self.classifier = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` -> logits ``B×K×H×W``."""
        return self.classifier(self.decoder(self.encoder(x)))


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

    Args:
        arch: ``"tiny_unet"`` (:class:`TinyUNet`, logits at full resolution), ``"deeplabv2"``
            (:class:`~lightning_uda.models.deeplabv2.DeepLabV2`, logits at 1/8), or any
            segmentation_models_pytorch architecture name (``"unet"``, ``"deeplabv3plus"``,
            ``"segformer"``, ...; case-insensitive), built with ``smp.create_model``.
        num_classes: K.
        encoder: backbone name. ``tiny_unet``: must be ``None``. ``deeplabv2``: ``resnet101``
            (default), ``resnet50``, ``resnet152``, ``resnet18``, ``resnet34``. smp: any smp
            encoder name (default ``resnet34``, smp's default).
        encoder_weights: ``None`` (default): random init, nothing is downloaded.
            ``"imagenet"`` (opt-in) downloads ImageNet weights on first use (torchvision's
            ``IMAGENET1K_V1`` for ``deeplabv2``; smp's for smp architectures). ``tiny_unet``
            has none.
        checkpoint: a local file saved with ``torch.save`` holding a state dict (or an
            already-loaded mapping); see :func:`load_checkpoint` for the accepted layouts. It is
            loaded into the **whole model** if its keys match the model's, otherwise into the
            **encoder only** if they match the encoder's (e.g. an ImageNet ResNet file; its
            ``fc.*`` classifier keys are ignored). Applied after ``encoder_weights``.
        **kwargs: passed to the architecture: ``TinyUNet(in_channels, width, depth)``,
            ``DeepLabV2(dilations, multi_level, freeze_bn_affine)``, or the smp class'
            arguments (e.g. ``decoder_channels``; anything for ``tu-`` timm encoders).

    Raises:
        ValueError: unknown ``arch`` (the message lists the valid ones), or an option the
            architecture does not have (an encoder for ``tiny_unet``, smp ``activation`` /
            ``aux_params``, which would break the logits contract).
        TypeError: a keyword argument the architecture does not accept.
        FileNotFoundError: ``checkpoint`` does not exist.
        RuntimeError: ``checkpoint`` keys or shapes match neither the model nor its encoder.

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
    elif name in smp.MODEL_ARCHITECTURES_MAPPING:
        model = _build_smp(name, num_classes, encoder or "resnet34", encoder_weights, kwargs)
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


def load_checkpoint(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]
) -> Literal["model", "encoder"]:
    """Load a state dict file into ``model`` (whole model) or, failing that, ``model.encoder``.

    Accepted layouts: a plain state dict; one under ``"state_dict"`` (Lightning checkpoints) or
    ``"model"``. Keys may carry a wrapper prefix (:data:`CHECKPOINT_PREFIXES`: ``model.``,
    ``module.``, ``model.module.``, ``module.model.``), which is stripped; keys outside the
    matching prefix are ignored, so a Lightning checkpoint of a UDA module loads its student
    ``model.*`` and skips ``teacher.*`` / ``discriminator.*``.

    The keys must match exactly (names and shapes; a missing ``num_batches_tracked`` is
    tolerated): first the whole model is tried, then the encoder alone (where ``fc.*`` keys of an
    ImageNet classifier are ignored).

    Returns:
        ``"model"`` or ``"encoder"``: what was loaded.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: not a state dict, or no prefix makes the keys match; the message shows the
            closest match's missing / unexpected / mismatched keys.
    """
    state_dict, where = _read_state_dict(checkpoint)
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
            report = _compare(candidate, target_state, encoder=target_name == "encoder")
            if not (report["missing"] or report["unexpected"] or report["mismatched"]):
                target.load_state_dict(
                    {k: v for k, v in candidate.items() if k in target_state}, strict=False
                )
                return target_name
            if best is None or report["matched"] > best["matched"]:
                best = {**report, "target": target_name, "prefix": prefix}
    assert best is not None  # the state dict is non-empty, so prefix "" gave a candidate

    def show(keys: list[str]) -> str:
        more = f", ... ({len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
        return f"{len(keys)} {keys[:_SHOW_KEYS]}{more}"

    raise RuntimeError(
        f"checkpoint {where} matches neither {type(model).__name__} nor its encoder. Closest: "
        f"the {best['target']} with key prefix {best['prefix']!r} stripped: "
        f"missing keys {show(best['missing'])}; unexpected keys {show(best['unexpected'])}; "
        f"shape mismatches {show(best['mismatched'])}. Check that arch, encoder and num_classes "
        "match the run that saved it."
    )


__all__ = [
    "CHECKPOINT_PREFIXES",
    "TinyUNet",
    "TinyUNetDecoder",
    "TinyUNetEncoder",
    "build_segmentor",
    "load_checkpoint",
    "parameter_groups",
    "valid_archs",
]
