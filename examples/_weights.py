"""The examples' initial weights: which file a recipe starts from, and what the front does
without it.

Every recipe names the paper's initial-weight file (``# Initial weights:`` in its method layer,
``model.init_args.checkpoint``). :func:`refuse_random_init` stops a run whose encoder would start
from random weights unless ``--from-scratch`` is given; :func:`weights_overrides` turns
``--checkpoint`` / ``--encoder-weights`` / ``--style`` into recipe overrides (for DeepLab-v2 with
the layout and input space that go with the weights).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from lightning_uda.recipes import lookup as get

RECIPES = Path(__file__).resolve().parent / "recipes"
_TRANSFORMS = ("source", "target", "val")
_DATA = "data.init_args"
#: Where a new paragraph of a method layer's notes starts.
_SECTION = re.compile(r"# (Head|Recipe|Model selection|Differs from|MIC|Multi-level)\b")


def weights_overrides(args: argparse.Namespace, init: dict[str, Any], out: dict[str, Any]) -> None:
    """Initial weights, and for DeepLabV2 the layout and input space that go with them."""
    model = "model.init_args"
    deeplab = init.get("arch") == "deeplabv2"
    if args.style is not None and not deeplab:
        raise SystemExit(f"--style applies to DeepLabV2 only, not to {init.get('arch')}")
    if args.checkpoint is not None:
        out[f"{model}.checkpoint"] = args.checkpoint
    elif args.encoder_weights is not None or args.from_scratch:
        out[f"{model}.checkpoint"] = None
    if args.encoder_weights is not None:
        out[f"{model}.encoder_weights"] = args.encoder_weights
    if not deeplab:
        return
    style = args.style or ("torchvision" if args.encoder_weights and not args.checkpoint else None)
    if style is not None:
        out[f"{model}.model_kwargs.style"] = style
        space = "caffe" if style == "caffe" else "imagenet"
        out[f"{model}.normalization"] = space
        for key in (*(f"{_DATA}.{name}" for name in _TRANSFORMS), "checkpoints.unlabelled"):
            out[f"{key}.init_args.transform.init_args.normalization"] = space


#: Printed when ``--from-scratch`` starts the encoder from random weights (measured: README,
#: "What a run prints").
FROM_SCRATCH_NOTE = (
    "--from-scratch: the encoder starts from random weights. The recipe's learning rates are the "
    "paper's for pretrained weights; on random features (dense, and for DeepLab-v2 with its "
    "BatchNorm scale frozen at 1) the head's steps are far too large, so the training loss "
    "typically rises over the first steps. Use it to check that a run goes through, or lower the "
    "learning rates (e.g. --model.init_args.lr=2.5e-6 for DACS)"
)


def starts_from_random_weights(recipe: dict[str, Any]) -> bool:
    """Whether the encoder would start from random weights (no ``checkpoint`` file, no
    ``encoder_weights``)."""
    init = get(recipe, "model.init_args", {})
    checkpoint = init.get("checkpoint")
    return not (init.get("encoder_weights") or (checkpoint and Path(checkpoint).is_file()))


def refuse_random_init(method: str, recipe: dict[str, Any], from_scratch: bool) -> None:
    """Exit naming the paper's initial-weight file when the encoder would start from random
    weights (no ``checkpoint`` file, no ``encoder_weights``) and ``--from-scratch`` is not given."""
    init = get(recipe, "model.init_args", {})
    checkpoint = init.get("checkpoint")
    if from_scratch or init.get("encoder_weights") or (checkpoint and Path(checkpoint).is_file()):
        return
    encoder, arch = init.get("encoder"), init.get("arch")
    start = f"{method}: the {encoder} encoder would start from random weights, which cannot come "
    start += "near the published numbers"
    if checkpoint is None:  # LSD-seg: ImageNet VGG16 through smp
        raise SystemExit(
            f"{start}. The paper starts from torchvision's ImageNet {encoder}: pass "
            "--encoder-weights imagenet (smp's, downloads) or --checkpoint FILE, or "
            "--from-scratch to insist."
        )
    name, note = Path(checkpoint).name, "\n".join(initial_weights_note(method))
    if arch == "deeplabv2":
        how = "(the Caffe layout and BGR mean-subtracted input are selected for it), or "
        how += "--encoder-weights imagenet for torchvision's ImageNet ResNet (downloads; not the "
        how += "papers' initialisation)"
    elif arch == "vfm":  # DINOv2: only the official files (no smp ImageNet weights exist)
        how = "(the official DINOv2 file as published, or timm's state dict of the same model)"
    else:
        start += " (and the ImageNet feature distance would pull towards random features)"
        how = f"or --encoder-weights imagenet for smp's ImageNet {encoder} weights (downloads)"
    raise SystemExit(
        f"{start}. The paper starts from {name} ({checkpoint} does not exist); the recipe "
        f"says:\n{note}\nPut it there or pass --checkpoint PATH/{name} {how}, or --from-scratch "
        "to insist."
    )


def initial_weights_note(method: str) -> list[str]:
    """The ``# Initial weights:`` paragraph of the method layer's notes (which file, from where)."""
    lines = (RECIPES / "methods" / f"{method}.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Initial weights:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("# ") and not _SECTION.match(lines[end]):
        end += 1
    return lines[start:end]
