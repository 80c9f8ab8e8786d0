"""`DAFormerModule`: DAFormer (Hoyer et al., CVPR 2022), DACS' self-training with today's recipe.

DAFormer keeps DACS' algorithm (source CE; EMA-teacher pseudo-labels weighted by the confident
fraction q at τ 0.968; source classes pasted onto target images; colour jitter and blur) and
changes the network and the training strategies. What this module sets, as DAFormer's GTA5 →
Cityscapes configuration does:

- **Network**: MiT-B5 encoder + DAFormer head (``build_segmentor("daformer", encoder="mit_b5")``),
  started from SegFormer's ImageNet ``mit_b5.pth`` (``checkpoint=PATH``).
- **Optimiser**: AdamW, learning rate 6e-5, head ×10, weight decay 0.01 but 0 on parameters whose
  name holds ``norm`` or ``pos_block``.
- **Schedule**: linear warm-up over 1,500 iterations from 1e-6 × the learning rate (mmcv's rule),
  then poly decay with power 1.0 to 0 at 40k iterations (``Trainer(max_steps=40_000)``).
- **Teacher**: EMA α 0.999, BatchNorm in train mode (as DACS), dropout and drop-path off while
  pseudo-labelling (as DAFormer's teacher).
- **Pseudo-label crop**: weights 0 on the top 15 and bottom 120 rows of the target image (the
  rectification artefacts and the ego-car of Cityscapes).
- **ImageNet feature distance** (:func:`source_loss_with_feature_distance`): 0.005 × the mean
  L2 distance between the student's and the frozen ImageNet encoder's last-stage source
  features, on thing-class cells (ids 6, 7, 11–18), from the source forward that gives the CE.
  The frozen copy (``imnet_encoder``) is the encoder as built, so start the model from the
  ImageNet weights; it is checkpointed and never optimised.
- **Source CE**: the mean over all pixels, void counting 0 (mmseg's ``cross_entropy``;
  ``source_ce_mean_over="all"``).
- **Mixing**: each image draws half of the classes present in the whole source batch, void
  included (``mix_mode="batch_union"``, ``mix_include_ignore=True``); colour jitter strength
  0.2 with probability 0.8 and blur, one draw per batch, kornia 0.5's jitter.
- **Data** (not the module's; see the example recipes): rare-class sampling
  (``UDADataModule(rare_class_sampling=RareClassSampling())``), flips, source crops with
  ``cat_max_ratio`` 0.75 (``preset("gta5_train_daformer")``), plain random target crops, batch
  2 + 2 at 512×512.

Where the library differs from DAFormer's code: the teacher's train-mode forward does not update
its running statistics (DAFormer's has no BatchNorm in MiT, so this only matters on DeepLab-v2);
under DDP the recipe keeps DAFormer's global batch (see the examples); RCS draws are per rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_uda.losses import CITYSCAPES_THING_CLASSES, feature_distance
from lightning_uda.methods.dacs import DACSModule
from lightning_uda.models import forward_with_features

if TYPE_CHECKING:
    from lightning_uda.methods.self_training import SelfTrainingModule

__all__ = ["DAFormerModule", "source_loss_with_feature_distance", "weighted_feature_distance"]


def source_loss_with_feature_distance(
    module: SelfTrainingModule, source: Mapping[str, Tensor]
) -> Tensor:
    """Source CE plus λ_FD × DAFormer's ImageNet feature distance, from one encoder pass.

    The distance is the mean L2 distance between the student's deepest encoder features of the
    source images and those of ``module.imnet_encoder`` (the frozen initial encoder), over the
    feature cells whose downscaled source label is one of ``feature_distance_classes`` (a cell
    takes its majority class when it covers at least ``feature_distance_min_ratio`` of it); 0
    when none is present (:func:`lightning_uda.losses.feature_distance`). Logged as
    ``train/feature_distance``.
    """
    images, labels = source["image"], source["mask"]
    logits, features = forward_with_features(module.model, images)
    loss = module.source_cross_entropy(logits, labels)
    return loss + weighted_feature_distance(module, features[-1], images, labels)


def weighted_feature_distance(
    module: SelfTrainingModule, student_features: Tensor, images: Tensor, labels: Tensor
) -> Tensor:
    """λ_FD × the ImageNet feature distance between ``student_features`` (the student's deepest
    encoder features of ``images``) and ``module.imnet_encoder``'s of the same ``images``, over
    the cells of ``feature_distance_classes`` in ``labels``; logged as ``train/feature_distance``.
    DAFormer passes the source crop; HRDA its context view (the crop at half resolution)."""
    with torch.no_grad():
        reference = list(module.imnet_encoder(images))[-1]
    hp = module.hparams
    distance = feature_distance(
        student_features,
        reference,
        labels,
        classes=hp.feature_distance_classes,
        num_classes=module.num_classes,
        min_ratio=hp.feature_distance_min_ratio,
        ignore_index=module.ignore_index,
    )
    module.log("train/feature_distance", distance.detach(), batch_size=images.shape[0])
    return hp.feature_distance_weight * distance


class DAFormerModule(DACSModule):
    """DACS with DAFormer's network and training strategies (defaults: DAFormer's recipe).

    Every argument is :class:`DACSModule`'s; only the defaults differ (see the module
    docstring). Pass ``checkpoint=`` SegFormer's ``mit_b5.pth`` for the paper's ImageNet start;
    the feature distance's frozen encoder is a copy of the encoder as built, so it is the
    ImageNet one only then. On another architecture (``arch="deeplabv2"``) the strategies still
    apply; turn the feature distance off (``feature_distance_weight=0``) for a model without
    ImageNet weights.

    Args:
        arch, encoder: the segmentor (DAFormer: ``"daformer"``, whose default encoder is
            ``"mit_b5"``).
        optimizer, lr, weight_decay, betas, head_lr_mult: AdamW 6e-5, decay 0.01, head ×10.
        no_decay_keys: parameter-name substrings without weight decay (``norm``, ``pos_block``).
        poly_power, warmup_steps, warmup_ratio: poly 1.0 after 1,500 warm-up steps from 1e-6.
        ema_alpha: teacher EMA decay (0.999).
        pseudo_label_crop: target rows ``(top, bottom)`` with pseudo-label weight 0 (15, 120).
        source_ce_mean_over: ``"all"`` (mmseg's mean over all pixels, void counting 0).
        feature_distance_weight: λ_FD (0.005); ``feature_distance_classes``: thing classes.
        mix_mode, mix_include_ignore: DAFormer's class choice (``"batch_union"``, void kept).
        jitter_strength, jitter_p, jitter_semantics, augment_decision: 0.2, 0.8, kornia 0.5's
            jitter, one draw per batch.
        **kwargs: see :class:`DACSModule`, :class:`ClassMixModule`, :class:`SelfTrainingModule`
            and :class:`UDAModule` (e.g. ``masked_consistency_weight`` for MIC).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        arch: str = "daformer",
        encoder: str | None = None,
        optimizer: str = "adamw",
        lr: float = 6e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        head_lr_mult: float = 10.0,
        no_decay_keys: Sequence[str] = ("norm", "pos_block"),
        poly_power: float = 1.0,
        warmup_steps: int = 1500,
        warmup_ratio: float | None = 1e-6,
        ema_alpha: float = 0.999,
        pseudo_label_crop: tuple[int, int] = (15, 120),
        feature_distance_weight: float = 0.005,
        feature_distance_classes: Sequence[int] | None = CITYSCAPES_THING_CLASSES,
        mix_mode: str = "batch_union",
        mix_include_ignore: bool = True,
        jitter_strength: float = 0.2,
        jitter_p: float = 0.8,
        jitter_semantics: str = "kornia05",
        augment_decision: str = "per_batch",
        source_ce_mean_over: str = "all",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            arch=arch,
            encoder=encoder,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            head_lr_mult=head_lr_mult,
            no_decay_keys=no_decay_keys,
            poly_power=poly_power,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
            ema_alpha=ema_alpha,
            pseudo_label_crop=pseudo_label_crop,
            feature_distance_weight=feature_distance_weight,
            feature_distance_classes=feature_distance_classes,
            mix_mode=mix_mode,
            mix_include_ignore=mix_include_ignore,
            jitter_strength=jitter_strength,
            jitter_p=jitter_p,
            jitter_semantics=jitter_semantics,
            augment_decision=augment_decision,
            source_ce_mean_over=source_ce_mean_over,
            **kwargs,
        )
