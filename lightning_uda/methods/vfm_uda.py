"""VFM-UDA (Englert et al., CVPR 2024 workshops) and VFM-UDA++ (ICCV 2025 workshops).

**VFM-UDA** (:class:`VFMUDAModule`) is MIC's self-training on a DINOv2 ViT with a light head
(``build_segmentor("vfm", head="light")``), per step:

1. source CE (mean over valid pixels);
2. EMA-teacher (α 0.999) pseudo-labels of the un-augmented target, from the mean softmax of the
   image and its horizontal flip; weight q = share of pixels with max probability ≥ 0.968;
3. DACS' mix (half of each source image's classes pasted onto a target image), colour jitter 0.2
   (p 0.8) and blur, mixed CE = mean over all pixels of weight × CE;
4. masked consistency with **token masking**: the colour-augmented target with 70% of its patch
   tokens replaced by the learned mask token, CE against the pseudo-labels of step 2;
5. AdamW, weight decay 0.01, layer-wise rates (:mod:`lightning_uda.optim.layer_decay`: head ×1,
   encoder ×0.1, decay ``layer_decay``), warm-up from 1e-3× over 1,500 steps then linear to 0.

**VFM-UDA++** (:class:`VFMUDAPlusPlusModule`) uses ViT-Adapter + pyramid head
(``head="pyramid"``), layer decay 0.9, and adds **feature distillation**: a projection of the
student's deepest features (:class:`~lightning_uda.models.vfm_heads.DistillationProjection`)
must match a frozen DINOv2 (``distill_encoder``, by default ``dinov2_vitl14_reg``) on the source
(from the forward that gives the source CE) and on the target (one more forward), weight 0.1
each, loss :func:`~lightning_uda.losses.distillation.feature_distillation_loss`. The frozen model
is never optimised and is left out of checkpoints (``checkpoint_distill_encoder=True`` keeps it).

Where this differs from the references' code: the source images get no separate weak colour
jitter and the target image is not jittered before mixing; the feature distillation reuses the
source CE forward (the reference runs one more forward on weakly jittered source images);
the reference scales its learning rate by sqrt(global batch) at run time, the recipes here
state the resulting rate; token masks mask exactly 70% of the tokens (see
:mod:`lightning_uda.mixing.token_masking`); VFM-UDA++'s code masks 64-pixel image blocks for its
ViT-Adapter model, here the adapter model masks tokens too (and blanks the masked patches in the
image its convolutional branch sees).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.checks import check_range
from lightning_uda.losses.distillation import feature_distillation_loss
from lightning_uda.methods.base import Losses
from lightning_uda.methods.dacs import DACSModule
from lightning_uda.models import forward_with_features
from lightning_uda.models.vfm_heads import DistillationProjection
from lightning_uda.models.vit import create_dinov2, load_dinov2_weights
from lightning_uda.optim.layer_decay import layer_decay_param_groups, warmup_linear_factor

__all__ = ["VFMUDAModule", "VFMUDAPlusPlusModule"]

_DISTILL_PREFIX = "distill_encoder."


class VFMUDAModule(DACSModule):
    """VFM-UDA: DACS + token-masked consistency on a DINOv2 ViT with layer-wise rates.

    Args:
        arch, encoder, model_kwargs: the segmentor (``"vfm"``, ``"dinov2_vitb14"``,
            ``{"head": "light"}``); ``checkpoint`` the DINOv2 file.
        lr: the head's rate; the encoder gets ``lr · encoder_lr_mult · layer_decay^(N − i)``.
        encoder_lr_mult: 0.1. layer_decay: 1.0 (VFM-UDA) / 0.9 (VFM-UDA++).
        warmup_steps, warmup_start: linear warm-up from ``warmup_start``× (1,500, 1e-3), then
            linear decay to 0 at ``total_steps`` (:func:`warmup_linear_factor`).
        flip_pseudo_labels: average the teacher's softmax over the image and its flip.
        head_lr_mult, poly_power, warmup_ratio, no_decay_keys: the other modules' schedule and
            group settings; the layer-wise groups and the warm-up + linear schedule replace them,
            so only their neutral values (1, 1, None, ()) are accepted.
        masked_consistency_weight, mask_ratio: token masking (1, 0.7).
        **kwargs: see :class:`DACSModule` and :class:`SelfTrainingModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        arch: str = "vfm",
        encoder: str | None = "dinov2_vitb14",
        model_kwargs: dict[str, Any] | None = None,
        optimizer: str = "adamw",
        lr: float = 1.414e-4,
        weight_decay: float = 0.01,
        encoder_lr_mult: float = 0.1,
        layer_decay: float = 1.0,
        warmup_steps: int = 1500,
        warmup_start: float = 1e-3,
        ema_alpha: float = 0.999,
        jitter_strength: float = 0.2,
        jitter_p: float = 0.8,
        flip_pseudo_labels: bool = True,
        masked_consistency_weight: float = 1.0,
        mask_ratio: float = 0.7,
        head_lr_mult: float = 1.0,
        poly_power: float = 1.0,
        warmup_ratio: float | None = None,
        no_decay_keys: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        ignored = {
            "head_lr_mult": (head_lr_mult, 1.0, "the head's rate is lr; the encoder's lr · "
                             "encoder_lr_mult · layer_decay^(N − i)"),
            "poly_power": (poly_power, 1.0, "the schedule is warm-up then linear"),
            "warmup_ratio": (warmup_ratio, None, "the warm-up starts at warmup_start"),
            "no_decay_keys": (tuple(no_decay_keys), (), "every group decays weights"),
        }  # fmt: skip
        for name, (value, neutral, why) in ignored.items():
            if value != neutral:
                raise ValueError(
                    f"{owner}: {name}={value!r} has no effect here ({why}); leave it at {neutral!r}"
                )
        check_range(owner, "encoder_lr_mult", encoder_lr_mult, 0, low_open=True)
        check_range(owner, "layer_decay", layer_decay, 0, 1, low_open=True)
        check_range(owner, "warmup_start", warmup_start, 0, 1)
        super().__init__(
            model,
            arch=arch,
            encoder=encoder,
            model_kwargs={"head": "light", **(model_kwargs or {})}
            if model is None and arch == "vfm"
            else model_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            ema_alpha=ema_alpha,
            jitter_strength=jitter_strength,
            jitter_p=jitter_p,
            masked_consistency_weight=masked_consistency_weight,
            mask_ratio=mask_ratio,
            head_lr_mult=head_lr_mult,
            poly_power=poly_power,
            warmup_ratio=warmup_ratio,
            no_decay_keys=no_decay_keys,
            **kwargs,
        )

    # ------------------------------------------------------------------ optimiser
    def segmentor_param_groups(self) -> list[dict[str, Any]]:
        """Layer-wise groups (:func:`layer_decay_param_groups`); every group decays weights."""
        return layer_decay_param_groups(
            self.model,
            lr=self.hparams.lr,
            encoder_lr_mult=self.hparams.encoder_lr_mult,
            decay=self.hparams.layer_decay,
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.segmentor_param_groups())
        total = self.total_steps()
        warmup, start = self.optim_settings.warmup_steps, self.hparams.warmup_start
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_factor(step, total, warmup, start)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        """Log of the teacher's softmax averaged over ``images`` and their horizontal flips
        (so the pseudo-labels and q come from the mean probabilities, as VFM-UDA)."""
        logits = super().teacher_logits(images)
        if not self.hparams.flip_pseudo_labels:
            return logits
        flipped = super().teacher_logits(images.flip(-1)).flip(-1)
        return ((logits.softmax(1) + flipped.softmax(1)) / 2).clamp_min(1e-12).log()


class VFMUDAPlusPlusModule(VFMUDAModule):
    """VFM-UDA++: ViT-Adapter + pyramid head, layer decay 0.9, feature distillation.

    Args:
        distill_encoder: the frozen DINOv2 (``"dinov2_vitl14_reg"``).
        distill_checkpoint: its local weight file (``dinov2_vitl14_reg4_pretrain.pth``);
            ``None`` leaves it random (tests only: distilling to random features is no recipe).
        distill_source_weight, distill_target_weight: 0.1 each (0 turns a side off).
        distill_smooth_l1_share: share of smooth-L1 in the loss (0.1 in the reference code).
        checkpoint_distill_encoder: also save the frozen model in checkpoints (off: it is
            rebuilt from ``distill_checkpoint``).
        **kwargs: see :class:`VFMUDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        encoder: str | None = "dinov2_vitl14",
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 2.828e-5,
        layer_decay: float = 0.9,
        distill_encoder: str = "dinov2_vitl14_reg",
        distill_checkpoint: str | os.PathLike | None = None,
        distill_source_weight: float = 0.1,
        distill_target_weight: float = 0.1,
        distill_smooth_l1_share: float = 0.1,
        checkpoint_distill_encoder: bool = False,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        check_range(owner, "distill_source_weight", distill_source_weight, 0)
        check_range(owner, "distill_target_weight", distill_target_weight, 0)
        check_range(owner, "distill_smooth_l1_share", distill_smooth_l1_share, 0, 1)
        super().__init__(
            model,
            encoder=encoder,
            model_kwargs={"head": "pyramid", **(model_kwargs or {})},
            lr=lr,
            layer_decay=layer_decay,
            **kwargs,
        )
        self.distill_encoder: nn.Module | None = None
        self.distill_projection: nn.Module | None = None
        if distill_source_weight > 0 or distill_target_weight > 0:
            frozen = create_dinov2(distill_encoder)
            if distill_checkpoint is not None:
                load_dinov2_weights(frozen, distill_checkpoint, name=distill_encoder)
            self.distill_encoder = frozen.requires_grad_(False).eval()
            width = getattr(self.model.encoder, "embed_dim", None)
            if width is None:
                raise TypeError(f"{owner}: the segmentor needs a ViT encoder with embed_dim")
            self.distill_projection = DistillationProjection(width, frozen.embed_dim)

    def train(self, mode: bool = True) -> VFMUDAPlusPlusModule:
        super().train(mode)
        if getattr(self, "distill_encoder", None) is not None:
            self.distill_encoder.eval()
        return self

    def segmentor_param_groups(self) -> list[dict[str, Any]]:
        """The layer-wise groups, plus the distillation projection at the head's rate."""
        groups = super().segmentor_param_groups()
        if self.distill_projection is not None:
            params = list(self.distill_projection.parameters())
            groups.append(
                {"params": params, "lr": self.hparams.lr, "lr_mult": 1.0, "name": "distill_head"}
            )
        return groups

    # ------------------------------------------------------------------ distillation
    def distillation(self, images: Tensor, student_features: Tensor) -> Tensor:
        """The distillation loss of ``student_features`` (the segmentor's deepest map for
        ``images``) against the frozen model's last-layer patch tokens of ``images``."""
        frozen = self.distill_encoder
        size = self.model.vit_input_size(*images.shape[-2:])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            tokens = frozen.forward_features(images)[:, frozen.num_prefix_tokens :]
            grid = (size[0] // 14, size[1] // 14)
            target = tokens.transpose(1, 2).reshape(images.shape[0], -1, *grid)
        projected = self.distill_projection(student_features, size=grid)
        return feature_distillation_loss(
            projected, target, smooth_l1_share=self.hparams.distill_smooth_l1_share
        )

    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Source CE plus the source distillation, from one forward of the student."""
        weight = self.hparams.distill_source_weight
        if self.distill_encoder is None or weight == 0:
            return super().source_loss(source)
        logits, features = forward_with_features(self.model, source["image"])
        loss = self.source_cross_entropy(logits, source["mask"])
        distill = self.distillation(source["image"], features[-1])
        self.log("train/distill_source", distill.detach(), batch_size=logits.shape[0])
        return loss + weight * distill

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        yield from super().adaptation_losses(batch)
        weight = self.hparams.distill_target_weight
        if self.distill_encoder is None or weight == 0:
            return
        images = batch["target"]["image"]
        _, features = forward_with_features(self.model, images)
        yield "distill_target", weight * self.distillation(images, features[-1])

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if not self.hparams.checkpoint_distill_encoder:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith(_DISTILL_PREFIX)]:
                del state[key]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, **kw: Any):
        """Checkpoints without the frozen model keep the one built from
        ``distill_checkpoint``."""
        if self.distill_encoder is not None and not any(
            k.startswith(_DISTILL_PREFIX) for k in state_dict
        ):
            frozen = {_DISTILL_PREFIX + k: v for k, v in self.distill_encoder.state_dict().items()}
            state_dict = {**state_dict, **frozen}
        return super().load_state_dict(state_dict, strict=strict, **kw)
