"""DINOv2 encoders on timm's :class:`~timm.models.vision_transformer.VisionTransformer`.

:func:`create_dinov2` builds a DINOv2 ViT by the names the DINOv2 authors use
(``"dinov2_vitb14"``, ``"dinov2_vitl14_reg"``, ...) as the timm model of the same architecture
(``vit_base_patch14_dinov2``, ``vit_large_patch14_reg4_dinov2``, ...), randomly initialised;
nothing is downloaded. :func:`load_dinov2_weights` fills it from a local file in either layout:

- **official DINOv2** (the ``.pth`` files the DINOv2 authors publish, e.g.
  ``dinov2_vitb14_pretrain.pth``, ``dinov2_vitl14_reg4_pretrain.pth``): ``cls_token``,
  ``pos_embed`` (the class token's position included), ``register_tokens`` (``_reg`` models),
  ``mask_token``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn,ls1.gamma,norm2,mlp,ls2.gamma}``,
  ``norm.*``; converted with timm's own DINOv2 filter (``checkpoint_filter_fn``);
- **timm** state dicts of the same model (``reg_token`` instead of ``register_tokens``, the class
  token's position folded into ``cls_token`` for register models).

The encoder keeps DINOv2's 37×37 position grid (518² images) and resamples it for any input whose
sides are multiples of 14 (timm's ``dynamic_img_size``: bicubic, antialiased; DINOv2's own code
interpolates bicubically without antialiasing, so features at other sizes differ slightly).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from lightning_uda.models.state_dicts import _read_state_dict

__all__ = [
    "DINOV2_ENCODERS",
    "DINOV2_FILES",
    "PATCH_SIZE",
    "check_patch_multiple",
    "create_dinov2",
    "dinov2_depth",
    "load_dinov2_weights",
]

#: DINOv2's patch side in pixels.
PATCH_SIZE = 14
#: Our encoder names -> timm model names (random init; the architecture only).
DINOV2_ENCODERS: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}
#: Our encoder names -> the official weight files as their authors publish them.
DINOV2_FILES: dict[str, str] = {
    name: f"{name.removesuffix('_reg')}{'_reg4' if name.endswith('_reg') else ''}_pretrain.pth"
    for name in DINOV2_ENCODERS
}
#: Embedding width -> variant letter, to name the model a file was saved from.
_WIDTHS = {384: "s", 768: "b", 1024: "l", 1536: "g"}
_WHERE = (
    "The official files are published by Meta AI in the facebookresearch/dinov2 GitHub "
    "repository (README, 'Pretrained models'; backbone files "
    + ", ".join(sorted(set(DINOV2_FILES.values())))
    + "), and as timm weights on the Hugging Face Hub (timm/vit_<size>_patch14[_reg4]_dinov2"
    ".lvd142m); download one yourself and pass its local path."
)


def dinov2_depth(name: str) -> int:
    """Number of blocks of DINOv2 encoder ``name`` (ViT-S/B 12, ViT-L 24, ViT-g 40)."""
    if name not in DINOV2_ENCODERS:
        raise ValueError(f"unknown DINOv2 encoder {name!r}; valid: {sorted(DINOV2_ENCODERS)}")
    return {"s": 12, "b": 12, "l": 24, "g": 40}[name.removeprefix("dinov2_vit")[0]]


def create_dinov2(
    name: str, *, gradient_checkpointing: bool = False, drop_path_rate: float = 0.0
) -> VisionTransformer:
    """The timm ViT of DINOv2 encoder ``name`` (a :data:`DINOV2_ENCODERS` key), random weights.

    No classifier (``num_classes=0``), ``dynamic_img_size=True`` (positions resampled per input
    size). ``gradient_checkpointing`` recomputes each block's activations in the backward pass
    (timm's ``set_grad_checkpointing``), trading compute for memory.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in DINOV2_ENCODERS:
        raise ValueError(
            f"unknown DINOv2 encoder {name!r}; valid: {sorted(DINOV2_ENCODERS)} ('_reg': the "
            "models with 4 register tokens)"
        )
    model = timm.create_model(
        DINOV2_ENCODERS[name],
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )
    model.set_grad_checkpointing(gradient_checkpointing)
    return model


def check_patch_multiple(height: int, width: int, what: str = "input") -> None:
    """Raise a ``ValueError`` unless both sides are positive multiples of :data:`PATCH_SIZE`."""
    if height % PATCH_SIZE or width % PATCH_SIZE or min(height, width) <= 0:
        near = [max(PATCH_SIZE, round(s / PATCH_SIZE) * PATCH_SIZE) for s in (height, width)]
        raise ValueError(
            f"the {what} size {height}×{width} (H×W) is not a multiple of DINOv2's {PATCH_SIZE}-"
            f"pixel patches: crop or resize to e.g. {near[0]}×{near[1]}, or build the segmentor "
            "with input_scale=1.0 (or the references' 1.1) to resize inside the model"
        )


def _variant(state: Mapping[str, Tensor]) -> tuple[int | None, int, bool]:
    """``(width, depth, registers)`` of a DINOv2/timm ViT state dict."""
    cls = state.get("cls_token")
    width = int(cls.shape[-1]) if cls is not None else None
    depth = len({m[1] for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    registers = "register_tokens" in state or "reg_token" in state
    return width, depth, registers


def _describe(width: int | None, depth: int, registers: bool) -> str:
    letter = _WIDTHS.get(width or 0)
    name = f"dinov2_vit{letter}14{'_reg' if registers else ''}" if letter else "an unknown ViT"
    return f"{name} (width {width}, {depth} blocks, {'4' if registers else 'no'} registers)"


def is_vit_state_dict(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` looks like a plain ViT encoder (official DINOv2 or timm layout)."""
    return "cls_token" in state and "patch_embed.proj.weight" in state and "pos_embed" in state


def require_dinov2_file(checkpoint: str | os.PathLike | Mapping[str, Any], name: str) -> None:
    """Raise ``FileNotFoundError`` (naming the official files and where they are published)
    unless ``checkpoint`` is a mapping or an existing file."""
    if not isinstance(checkpoint, Mapping) and not os.path.isfile(os.fspath(checkpoint)):
        raise FileNotFoundError(
            f"DINOv2 checkpoint not found: {os.fspath(checkpoint)}. Expected a local file with "
            f"{name}'s weights: an official DINOv2 backbone file (keys cls_token, pos_embed, "
            "[register_tokens], mask_token, patch_embed.*, blocks.N.*, norm.*) or a timm state "
            f"dict of the same model. {_WHERE}"
        )


def load_dinov2_weights(
    encoder: VisionTransformer,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    name: str = "the encoder",
    source: str | None = None,
) -> dict[str, Any]:
    """Load an official DINOv2 file or a timm state dict into ``encoder`` (every tensor).

    Args:
        encoder: a :func:`create_dinov2` model.
        checkpoint: a local file (plain state dict, or under ``"state_dict"``/``"model"``) or
            an already loaded mapping.
        name: the encoder's name, for messages.
        source: what to call an already loaded mapping in messages (its file).

    Returns:
        ``{"layout": "dinov2" | "timm", "source": path, "mask_token": 1×C tensor or None}``
        (the official files' learned mask token, which the timm model has no slot for).

    Raises:
        FileNotFoundError: no such file (the message names the official files and where they
            are published).
        RuntimeError: not a ViT state dict, or one of another size or register count than
            ``encoder`` (the message names both and the fix).
    """
    require_dinov2_file(checkpoint, name)
    state, where = _read_state_dict(checkpoint)
    where = source or where
    if not is_vit_state_dict(state):
        raise RuntimeError(
            f"{where} is not a DINOv2 ViT state dict (no cls_token / pos_embed / "
            f"patch_embed.proj.weight; first keys {list(state)[:5]}). Expected an official "
            f"DINOv2 backbone file or a timm ViT state dict. {_WHERE}"
        )
    expected = _variant(encoder.state_dict())
    found = _variant(state)
    if found != expected:
        raise RuntimeError(
            f"{where} holds {_describe(*found)}, but {name} is {_describe(*expected)}. Build the "
            f"segmentor with the file's encoder (encoder='{_describe(*found).split(' ')[0]}'), or "
            f"pass the file for {name}: {DINOV2_FILES.get(name, 'see the list below')}. {_WHERE}"
        )
    official = "mask_token" in state or "register_tokens" in state
    mask_token = state.get("mask_token")
    converted = checkpoint_filter_fn(dict(state), encoder) if official else dict(state)
    # a file saved at another position grid (timm layout) is resampled by the same filter
    if not official and converted["pos_embed"].shape != encoder.pos_embed.shape:
        converted = checkpoint_filter_fn(converted, encoder)
    missing, unexpected = encoder.load_state_dict(converted, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("head.")]
    if missing or unexpected:
        raise RuntimeError(
            f"{where} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            f"{_WHERE}"
        )
    return {
        "layout": "dinov2" if official else "timm",
        "source": where,
        "mask_token": None if mask_token is None else mask_token.reshape(1, -1).clone(),
    }


def patch_token_grid(height: int, width: int) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of an ``height × width`` input (sides multiples of 14)."""
    check_patch_multiple(height, width)
    return height // PATCH_SIZE, width // PATCH_SIZE


def run_blocks(encoder: VisionTransformer, tokens: Tensor, blocks: Any = None) -> Tensor:
    """``tokens`` through ``blocks`` (default all of ``encoder.blocks``), each block's
    activations recomputed in the backward pass when the encoder's ``grad_checkpointing`` is on
    and gradients are being recorded."""
    blocks = encoder.blocks if blocks is None else blocks
    checkpointing = encoder.grad_checkpointing and torch.is_grad_enabled()
    for block in blocks:
        if checkpointing:
            tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
        else:
            tokens = block(tokens)
    return tokens
