"""Layer-wise learning-rate decay for ViT segmentors, and VFM-UDA's warm-up + linear schedule.

With N blocks, base rate ``lr``, encoder multiplier ``m`` and decay ``d`` (VFM-UDA++: 1e-5, 0.1,
0.9), the groups are:

- the head (everything outside ``model.encoder``: light or pyramid head, ViT-Adapter): ``lr``;
- ViT block i (1-based, i = N the deepest): ``lr · m · d^(N − i)``;
- the embeddings (patch embedding, position embedding, class and register tokens, the
  segmentor's mask token) and the encoder's final norm: ``lr · m · d^N``, the deepest factor.

As in VFM-UDA's code, the final norm sits with the embeddings (the
``param_defs_encoder_stems`` group there). The schedule (:func:`warmup_linear_factor`) rises
linearly from ``warmup_start`` to 1 over the warm-up steps, then falls linearly to 0 at the end.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

__all__ = ["layer_decay_param_groups", "layer_lr_multipliers", "warmup_linear_factor"]

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def layer_lr_multipliers(depth: int, encoder_lr_mult: float, decay: float) -> dict[str, float]:
    """Learning-rate multipliers of :func:`layer_decay_param_groups`' groups, by group name:
    ``"head"`` 1, ``"encoder.block{i}"`` (i = 1..N) ``m · d^(N − i)``, ``"encoder.embed"``
    ``m · d^N``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    multipliers = {"head": 1.0}
    for i in range(depth, 0, -1):
        multipliers[f"encoder.block{i}"] = encoder_lr_mult * decay ** (depth - i)
    multipliers["encoder.embed"] = encoder_lr_mult * decay**depth
    return multipliers


def layer_decay_param_groups(
    model: nn.Module, lr: float, encoder_lr_mult: float = 0.1, decay: float = 0.9
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise decay for a ViT segmentor (see the module notes).

    ``model.encoder`` must have ``blocks`` (a timm ``VisionTransformer``). Every parameter of
    ``model`` appears in exactly one group; each group carries ``"name"``, ``"lr"`` and
    ``"lr_mult"`` (its multiplier of ``lr``). A parameter named ``mask_token`` outside the
    encoder joins the embeddings.

    Raises:
        TypeError: no ``encoder.blocks``.
    """
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise TypeError(
            f"layer-wise decay needs a ViT under `.encoder` with `.blocks`; "
            f"{type(model).__name__} has none (use layer_decay=None for other segmentors)"
        )
    depth = len(blocks)
    multipliers = layer_lr_multipliers(depth, encoder_lr_mult, decay)
    members: dict[str, list[nn.Parameter]] = {name: [] for name in multipliers}
    encoder_ids = {id(p) for p in encoder.parameters()}
    for name, param in model.named_parameters():
        if id(param) in encoder_ids:
            inner = name.removeprefix("encoder.")
            match = _BLOCK.match(inner)
            group = f"encoder.block{int(match[1]) + 1}" if match else "encoder.embed"
        elif name.split(".")[-1] == "mask_token":
            group = "encoder.embed"
        else:
            group = "head"
        members[group].append(param)
    return [
        {"params": params, "lr": lr * multipliers[name], "lr_mult": multipliers[name], "name": name}
        for name, params in members.items()
        if params
    ]


def warmup_linear_factor(
    step: int, total_steps: int, warmup_steps: int = 1500, warmup_start: float = 1e-3
) -> float:
    """VFM-UDA's schedule factor at ``step`` (0-based).

    Warm-up (``step < warmup_steps``): ``warmup_start + (1 − warmup_start) · step /
    (warmup_steps − 1)``, from ``warmup_start`` to 1 at the last warm-up step; after it:
    ``1 − step / total_steps`` (0 at the end, never negative).
    """
    if warmup_steps > 0 and step < warmup_steps:
        if warmup_steps == 1:
            return 1.0
        return warmup_start + (1.0 - warmup_start) * step / (warmup_steps - 1)
    return max(0.0, 1.0 - step / max(1, total_steps))
