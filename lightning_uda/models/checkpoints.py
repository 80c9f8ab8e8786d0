"""Loading weight files into segmentors: :func:`load_checkpoint` and the layouts it recognises.

:func:`load_checkpoint` reads the library's own checkpoints, the DeepLab-v2 weight files the
papers start from (DACS' MSCOCO and AdvEnt's ImageNet initialisations, and their trained
checkpoints) and SegFormer's ImageNet MiT files (DAFormer's initialisation); see
:data:`CHECKPOINT_LAYOUTS`. This module holds the converters for the papers' layouts; reading
files, the report and the library layout are in :mod:`lightning_uda.models.state_dicts`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_uda.models.deeplabv2 import ASPPClassifier, DeepLabV2
from lightning_uda.models.state_dicts import (
    CHECKPOINT_PREFIXES,
    CheckpointReport,
    _compare,
    _load_library,
    _load_tensors,
    _log_skipped,
    _read_state_dict,
    _show_keys,
)

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


def _refuse_scale_mismatch(model: nn.Module, state_dict: Mapping[str, Tensor], where: str) -> None:
    """A clear error for an HRDA checkpoint in a single-scale segmentor, and the reverse."""
    attention_keys = [k for k in state_dict if "scale_attention." in k]
    model_is_hrda = isinstance(getattr(model, "scale_attention", None), nn.Module)
    if attention_keys and not model_is_hrda:
        head_keys = len(state_dict) - len(attention_keys)
        raise RuntimeError(
            f"checkpoint {where} is an HRDA (multi-resolution) model: it holds "
            f"{len(attention_keys)} scale-attention tensors (e.g. {attention_keys[0]!r}) beside "
            f"{head_keys} encoder and head tensors, but {type(model).__name__} is a single-scale "
            "segmentor without a scale attention. Build the model with arch='hrda' (the same "
            "encoder and head) to load it; to reuse only its encoder and head in a single-scale "
            "model, drop the scale_attention.* keys and load the rest."
        )
    if model_is_hrda and not attention_keys and any(".decode_head." in f".{k}" for k in state_dict):
        wanted = sum(1 for k in model.state_dict() if k.startswith("scale_attention."))
        raise RuntimeError(
            f"checkpoint {where} is a single-scale segmentor (its {len(state_dict)} tensors hold "
            f"no scale_attention.*), but the model is HRDA, which also needs the "
            f"{wanted} scale-attention tensors. Build the model with the checkpoint's own arch "
            "(e.g. arch='daformer'); to start HRDA from it, load it into the HRDA model with "
            "model.load_state_dict(state_dict, strict=False) (the scale attention keeps its "
            "initialisation), or pass an ImageNet encoder file (mit_b5.pth) as checkpoint."
        )


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
    _refuse_scale_mismatch(model, state_dict, where)
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
    "load_checkpoint",
]
