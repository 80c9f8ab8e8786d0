"""`VFMSegmentor`: a DINOv2 ViT (timm) with VFM-UDA's light head or VFM-UDA++'s ViT-Adapter and
pyramid head; ``build_segmentor("vfm", ...)`` builds it.

``segmentor.encoder`` *is* the timm ``VisionTransformer`` (``segmentor.encoder.forward_features``
is timm's); the adapter, the heads and the mask token are the head for the optimiser
(:func:`lightning_uda.optim.layer_decay_param_groups` puts the mask token with the embeddings).

Inputs are ``B×3×H×W`` ImageNet-normalised images whose sides are multiples of 14, or any size
with ``input_scale`` (resized inside to ``floor(scale·H/14)·14 × floor(scale·W/14)·14``: VFM-UDA
feeds 1,024² crops at 1,120², ``input_scale=1.1``). Logits come at stride 3.5 (light head) or 4
(pyramid head) of that size; the methods upsample them to the labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.mixing.token_masking import apply_token_mask
from lightning_uda.models.checkpoints import load_checkpoint
from lightning_uda.models.state_dicts import _read_state_dict
from lightning_uda.models.vfm_heads import LightHead, PyramidHead
from lightning_uda.models.vit import (
    DINOV2_ENCODERS,
    PATCH_SIZE,
    check_patch_multiple,
    create_dinov2,
    is_vit_state_dict,
    load_dinov2_weights,
    require_dinov2_file,
    run_blocks,
)
from lightning_uda.models.vit_adapter import ViTAdapter

__all__ = ["VFMSegmentor", "load_vfm_checkpoint"]

_LOGGER = logging.getLogger("lightning_uda")
Head = Literal["light", "pyramid"]


class VFMSegmentor(nn.Module):
    """DINOv2 ViT + light head (VFM-UDA) or ViT-Adapter + pyramid head (VFM-UDA++).

    Args:
        num_classes: K.
        encoder: a :data:`~lightning_uda.models.vit.DINOV2_ENCODERS` name (``dinov2_vitb14``,
            ``dinov2_vitl14_reg``, ...).
        head: ``"light"`` (VFM-UDA) or ``"pyramid"`` (ViT-Adapter + pyramid head, VFM-UDA++).
        gradient_checkpointing: recompute each ViT block's activations in the backward pass
            (less memory, more compute; see ``benchmarks/vit_memory.py``).
        drop_path_rate: stochastic depth of the ViT blocks (0 in the references).
        input_scale: ``None`` (sides must be multiples of 14) or the factor inputs are resized
            by inside the model, rounded down to multiples of 14 (1.1 in the references).

    Attributes:
        mask_token: the learned ``1×C`` token that replaces masked patch tokens (MIC's masked
            consistency for ViTs); an official DINOv2 file's ``mask_token`` initialises it.
        supports_token_masking: True; :func:`~lightning_uda.methods.mic.masked_consistency_loss`
            masks tokens instead of pixels for such models.
    """

    supports_token_masking = True
    input_normalization = "imagenet"

    def __init__(
        self,
        num_classes: int,
        encoder: str = "dinov2_vitb14",
        head: Head = "light",
        gradient_checkpointing: bool = False,
        drop_path_rate: float = 0.0,
        input_scale: float | None = None,
    ) -> None:
        super().__init__()
        if head not in ("light", "pyramid"):
            raise ValueError(
                f"head must be 'light' (VFM-UDA) or 'pyramid' (VFM-UDA++), got {head!r}"
            )
        if input_scale is not None and input_scale <= 0:
            raise ValueError(f"input_scale must be > 0 or None, got {input_scale}")
        self.encoder_name = encoder
        self.head_name = head
        self.input_scale = input_scale
        self.encoder = create_dinov2(
            encoder, gradient_checkpointing=gradient_checkpointing, drop_path_rate=drop_path_rate
        )
        width = self.encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        self.adapter = (
            ViTAdapter(width, depth=len(self.encoder.blocks)) if head == "pyramid" else None
        )
        self.head = (
            LightHead(width, num_classes) if head == "light" else PyramidHead(width, num_classes)
        )

    # ------------------------------------------------------------------ sizes
    def vit_input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the ViT sees for an ``height × width`` input (checked or rescaled)."""
        if self.input_scale is None:
            check_patch_multiple(height, width)
            return height, width
        size = tuple(
            max(PATCH_SIZE, int(self.input_scale * s) // PATCH_SIZE * PATCH_SIZE)
            for s in (height, width)
        )
        return size  # type: ignore[return-value]

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an ``height × width`` input (for token masks)."""
        h, w = self.vit_input_size(height, width)
        return h // PATCH_SIZE, w // PATCH_SIZE

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """``B×K×h×w`` logits; ``token_mask`` (bool ``B×h_t×w_t``, True = masked) replaces those
        patch tokens by :attr:`mask_token`."""
        return self.forward_features(images, token_mask=token_mask)[0]

    def forward_features(
        self, images: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits and features from one encoder pass (the segmentor feature contract).

        Features: light head ``[B×C×H/14×W/14]`` (the ViT's last-layer normalised patch tokens);
        pyramid head the adapter's ``[f1, f2, f3, f4]`` at strides 4, 8, 16, 32.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W images, got {tuple(images.shape)}")
        size = self.vit_input_size(*images.shape[-2:])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        encoder = self.encoder
        patches = encoder.patch_embed(images)  # B×h×w×C (timm's dynamic size layout)
        spm_images = images
        if token_mask is not None:
            grid = tuple(patches.shape[1:3])
            if tuple(token_mask.shape) != (images.shape[0], *grid):
                raise ValueError(
                    f"token_mask must be B×h×w = {(images.shape[0], *grid)} for input "
                    f"{tuple(images.shape)}, got {tuple(token_mask.shape)}"
                )
            patches = apply_token_mask(patches, token_mask, self.mask_token)
            if self.adapter is not None:  # the convolutional branch must not see them either
                keep = ~token_mask[:, None].repeat_interleave(PATCH_SIZE, 2)
                keep = keep.repeat_interleave(PATCH_SIZE, 3)
                spm_images = images * keep.to(images.dtype)
        tokens = encoder.norm_pre(encoder.patch_drop(encoder._pos_embed(patches)))
        grid = tuple(patches.shape[1:3])
        if self.adapter is None:
            tokens = encoder.norm(run_blocks(encoder, tokens))
            patch_tokens = tokens[:, encoder.num_prefix_tokens :]
            features = [patch_tokens.transpose(1, 2).reshape(images.shape[0], -1, *grid)]
        else:
            features = self.adapter(encoder, images, tokens, spm_images=spm_images)
        return self.head(features), features


def build_vfm(
    num_classes: int,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> VFMSegmentor:
    """``build_segmentor("vfm", ...)``: a :class:`VFMSegmentor`, then ``checkpoint`` loaded by
    :func:`load_vfm_checkpoint`. ``encoder_weights`` must be ``None`` (nothing is downloaded:
    pass the DINOv2 file as ``checkpoint``)."""
    if encoder_weights is not None:
        raise ValueError(
            f"arch='vfm' downloads nothing: encoder_weights={encoder_weights!r} is not supported. "
            "Pass the local DINOv2 file as checkpoint=PATH (e.g. dinov2_vitb14_pretrain.pth)."
        )
    name = encoder or "dinov2_vitb14"
    if name not in DINOV2_ENCODERS:
        raise ValueError(
            f"arch='vfm' encoder must be one of {sorted(DINOV2_ENCODERS)}, got {name!r}"
        )
    if checkpoint is not None:  # before building: a ViT-L takes seconds
        require_dinov2_file(checkpoint, name)
    model = VFMSegmentor(num_classes=num_classes, encoder=name, **kwargs)
    if checkpoint is not None:
        load_vfm_checkpoint(model, checkpoint)
    return model


def load_vfm_checkpoint(
    model: VFMSegmentor, checkpoint: str | os.PathLike | Mapping[str, Any]
) -> dict[str, Any]:
    """Load a DINOv2 encoder file (official or timm layout) into ``model.encoder`` (and its
    ``mask_token``), or a library checkpoint of the whole segmentor.

    Returns ``{"layout": "dinov2" | "timm" | "library", "source": ...}``.
    """
    require_dinov2_file(checkpoint, model.encoder_name)
    state, where = _read_state_dict(checkpoint)
    if is_vit_state_dict(state):
        info = load_dinov2_weights(model.encoder, state, name=model.encoder_name, source=where)
        if info["mask_token"] is not None:
            with torch.no_grad():
                model.mask_token.copy_(info["mask_token"])
        _LOGGER.info("load_vfm_checkpoint: %s (%s layout) -> encoder", where, info["layout"])
        return {"layout": info["layout"], "source": where}
    report = load_checkpoint(model, state)
    return {"layout": report.layout, "source": where}
