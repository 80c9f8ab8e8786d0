"""Shared command line of the GTA5/SYNTHIA → Cityscapes examples: the papers' recipes + Trainer.

Each method has a :class:`PaperRecipe`: the paper's settings as published for one GPU (initial
weights and the input space they were trained in, DeepLabV2 head, crops, batch, optimiser,
schedule length and early stop, snapshots, EMA teacher, evaluation). :func:`resolve_recipe` turns
it into what one run does on ``devices`` processes: the paper's *global* batch is kept where it
divides by the device count (per-device batch = global ÷ N); where it does not (DACS' 2 + 2 on 4
GPUs), the per-device batch is kept and the linear scaling rule applied (learning rates × k,
iterations ÷ k, k = new global batch ÷ paper's). ``--print-recipe`` prints the resolved recipe
and exits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import Dataset, Subset

from lightning_uda.callbacks import (
    ChecksummedCheckpointIO,
    SegmentationPanels,
    UnsupervisedValidation,
)
from lightning_uda.data import Cityscapes, RareClassSampling, UDADataModule, preset
from lightning_uda.data.transforms import EVALUATION_PROTOCOLS, PRESETS
from lightning_uda.methods import (
    AdaptSegNetModule,
    AdvEntModule,
    ClassMixModule,
    DACSModule,
    DAFormerModule,
    DANNModule,
    FDAModule,
    LSDSegModule,
    MCCModule,
    MICModule,
    MinEntModule,
    SelfTrainingModule,
    SourceOnlyModule,
    UDAModule,
)
from lightning_uda.normalization import get_normalization
from lightning_uda.selection import SIGNALS

#: The papers' initial-weight files and where their code / READMEs point to them.
COCO_INIT = (
    "resnet101COCO-41f33a49.pth",
    "MS-COCO DeepLab-v2 ResNet-101 (Caffe layout); DACS' trainUDA.py (vikolss/DACS) downloads "
    "it from the AdvSemiSeg project (hfslyc/AdvSemiSeg), whose README links it",
)
MIT_B5_INIT = (
    "mit_b5.pth",
    "SegFormer's ImageNet-1k MiT-B5 (mmseg key names); the DAFormer README (lhoyer/DAFormer, "
    "'Setup') links it from SegFormer's release, expected in pretrained/",
)
ADAPTSEGNET_INIT = (
    "DeepLab_resnet_pretrained_init-f81d91e8.pth",
    "ImageNet DeepLab-v2 ResNet-101 (Caffe layout, keys 'Scale.*', as AdvEnt's file); "
    "AdaptSegNet's train_gta2cityscapes_multi.py (wasidennis/AdaptSegNet) downloads it from the "
    "authors' site (RESTORE_FROM)",
)
FDA_INIT = (
    "DeepLab_init.pth",
    "ImageNet DeepLab-v2 ResNet-101 init; the FDA README (YanchaoYang/FDA) links it and passes "
    "it as --init-weights",
)
VGG16_INIT = (
    "vgg16 ImageNet weights",
    "LSD-seg's train.py starts FCN8s from torchvision's ImageNet VGG16; here smp's vgg16 encoder "
    "takes them with --encoder-weights imagenet (downloads) or a local state dict via --checkpoint",
)
IMAGENET_INIT = (
    "DeepLab_resnet_pretrained_imagenet.pth",
    "ImageNet DeepLab-v2 ResNet-101 (Caffe layout, keys 'Scale.*'); the ADVENT README "
    "(valeoai/ADVENT, 'Pre-trained models') links it, expected in pretrained_models/",
)

#: Optimiser settings shared by every DeepLabV2 recipe here (DACS and AdvEnt): SGD, momentum
#: 0.9, weight decay 5e-4, head 10×, poly 0.9 per iteration.
SGD_RECIPE: dict[str, Any] = {
    "arch": "deeplabv2",
    "encoder": "resnet101",
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "head_lr_mult": 10.0,
    "poly_power": 0.9,
}


@dataclass(frozen=True)
class PaperRecipe:
    """A method's recipe as its paper/code runs it on one GPU (GTA5/SYNTHIA → Cityscapes)."""

    method: str
    paper: str
    module_cls: type[UDAModule]
    module_kwargs: dict[str, Any]
    dilations: tuple[int, ...]
    multi_level: bool
    init: tuple[str, str]  # (file name, where it comes from)
    batch_size: int  # global, per domain
    crop: tuple[int, int] | None  # None: whole resized frames
    lr: float
    schedule_steps: int  # length of the poly schedule (iterations)
    stop_steps: int  # training stops here (AdvEnt's EARLY_STOP)
    snapshot_every: int
    published: dict[str, str] = field(default_factory=dict)  # source → published mIoU
    discriminator_lr: float | None = None
    min_batch_per_device: int = 1  # ClassMix pairs images within a device's batch
    differences: tuple[str, ...] = ()  # what the library runs differently, named
    arch: str = "deeplabv2"
    default_encoder: str = "resnet101"
    optimizer_recipe: dict[str, Any] = field(default_factory=lambda: dict(SGD_RECIPE))
    preset_suffix: str = ""  # "_daformer": flips + cat_max_ratio source crops
    resize: tuple[int, int] | None = None  # (h, w) of both domains' frames, if not the presets'

    rare_class_sampling: bool = False


#: DACS' exactness switches (its code's semantics).
_DACS_EXACT = {
    "mix_include_ignore": True,
    "jitter_semantics": "kornia05",
    "augment_decision": "per_batch",
    "align_corners": True,
}
_SELF_TRAINING = {
    "ema_alpha": 0.99,
    "pseudo_label_threshold": 0.968,
    "pseudo_label_weighting": "uniform",
    "teacher_bn": "train",
}
_DACS_EVALUATION = (
    "Evaluation: the 'full' protocol by default (image at 1024×512, logits upsampled to the "
    "2048×1024 labels); '--eval-protocol dacs' evaluates as DACS' evaluateUDA.py."
)
_COMMON_DIFFERENCES = (
    "Images are resized with OpenCV (area when downscaling, bilinear otherwise); the references "
    "use PIL's bicubic resize. Labels are resized nearest in both.",
)

#: DAFormer's recipe (lhoyer/DAFormer gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5):
#: the DAFormerModule defaults, spelled out so that --print-recipe shows them.
_DAFORMER_OPTIMIZER: dict[str, Any] = {
    "arch": "daformer",
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "betas": (0.9, 0.999),
    "head_lr_mult": 10.0,
    "no_decay_keys": ("norm", "pos_block"),
    "poly_power": 1.0,
    "warmup_steps": 1500,
    "warmup_ratio": 1e-6,
}
_DAFORMER_METHOD: dict[str, Any] = {
    "ema_alpha": 0.999,
    "pseudo_label_threshold": 0.968,
    "pseudo_label_weighting": "uniform",
    "teacher_bn": "train",
    "pseudo_label_crop": (15, 120),
    "feature_distance_weight": 0.005,
    "mix_mode": "batch_union",
    "mix_include_ignore": True,
    "jitter_strength": 0.2,
    "jitter_p": 0.8,
    "jitter_semantics": "kornia05",
    "augment_decision": "per_batch",
}
_DAFORMER_DIFFERENCES = (
    "DAFormer's teacher pseudo-labels with its head's dropout active (train mode); the library's "
    "train-mode teacher uses batch statistics with dropout off.",
    "DAFormer re-draws target crops by cat_max_ratio on the target labels; here target crops "
    "are plain random crops (the target is unlabelled).",
    "Rare-class sampling draws per device under DDP (DAFormer ran on one GPU).",
)

RECIPES: dict[str, PaperRecipe] = {
    "source_only": PaperRecipe(
        method="source_only",
        paper="AdvEnt's baseline (Vu et al., CVPR 2019; DeepLabV2 trained on the source only)",
        module_cls=SourceOnlyModule,
        module_kwargs={"align_corners": True},
        dilations=(6, 12, 18, 24),
        multi_level=False,
        init=IMAGENET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=120_000,
        snapshot_every=2_000,
        published={"gta5": "36.6 (whole frames, ImageNet init)"},
        differences=(
            "AdvEnt picks the best of its 2k-step snapshots on the labelled target val set "
            "(TEST.MODE 'best'); here every snapshot is validated and the best kept, likewise "
            "(the last checkpoint is kept too).",
        ),
    ),
    "dacs": PaperRecipe(
        method="dacs",
        paper="DACS (Tranheden et al., WACV 2021; vikolss/DACS configUDA.json)",
        module_cls=DACSModule,
        module_kwargs={**_SELF_TRAINING, **_DACS_EXACT},
        dilations=(6, 12),
        multi_level=False,
        init=COCO_INIT,
        batch_size=2,
        crop=(512, 512),
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=250_000,
        snapshot_every=5_000,
        published={"gta5": "52.1", "synthia": "48.3 (mIoU16) / 54.8 (mIoU13)"},
        differences=(
            _DACS_EVALUATION,
            "DACS' published numbers use its own evaluation (labels nearest-resized to "
            "1024×512): pass '--eval-protocol dacs' to compare like with like.",
            "The teacher's BatchNorm running statistics are not updated by its train-mode "
            "forwards (unused by its pseudo-labels either way).",
        ),
    ),
    "classmix": PaperRecipe(
        method="classmix",
        paper="ClassMix (Olsson et al., WACV 2021) in the UDA setting, on DACS' recipe",
        module_cls=ClassMixModule,
        module_kwargs={
            **_SELF_TRAINING,
            "jitter_semantics": "kornia05",
            "augment_decision": "per_batch",
            "align_corners": True,
        },
        dilations=(6, 12),
        multi_level=False,
        init=COCO_INIT,
        batch_size=2,
        crop=(512, 512),
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=250_000,
        snapshot_every=5_000,
        min_batch_per_device=2,
        published={},
        differences=(
            _DACS_EVALUATION,
            "ClassMix is a semi-supervised method: there is no published GTA5→Cityscapes number; "
            "DACS reports naive target-target mixing as a failure mode.",
        ),
    ),
    "minent": PaperRecipe(
        method="minent",
        paper="MinEnt (Vu et al., CVPR 2019; valeoai/ADVENT minent.yml)",
        module_cls=MinEntModule,
        module_kwargs={
            "ent_weight": 1e-3,
            "aux_ent_weight": 2e-4,
            "aux_seg_weight": 0.1,
            "align_corners": True,
        },
        dilations=(6, 12, 18, 24),
        multi_level=True,
        init=IMAGENET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=120_000,
        snapshot_every=2_000,
        published={"gta5": "42.3"},
        differences=(
            "AdvEnt picks the best 2k-step snapshot on the labelled target val set; the example "
            "keeps the best by val/mIoU likewise, and the last.",
        ),
    ),
    "advent": PaperRecipe(
        method="advent",
        paper="AdvEnt (Vu et al., CVPR 2019; valeoai/ADVENT advent.yml)",
        module_cls=AdvEntModule,
        module_kwargs={
            "adv_weight": 1e-3,
            "aux_adv_weight": 2e-4,
            "aux_seg_weight": 0.1,
            "discriminator_betas": (0.9, 0.99),
            "align_corners": True,
        },
        dilations=(6, 12, 18, 24),
        multi_level=True,
        init=IMAGENET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        discriminator_lr=1e-4,
        schedule_steps=250_000,
        stop_steps=120_000,
        snapshot_every=2_000,
        published={"gta5": "43.8"},
        differences=(
            "AdvEnt picks the best 2k-step snapshot on the labelled target val set; the example "
            "keeps the best by val/mIoU likewise, and the last.",
            "The discriminator's backward runs after the segmentor's optimiser step (same update; "
            "see AdvEntModule).",
        ),
    ),
    "daformer": PaperRecipe(
        method="daformer",
        paper="DAFormer (Hoyer et al., CVPR 2022; lhoyer/DAFormer, MiT-B5, RCS, FD, warm-up)",
        module_cls=DAFormerModule,
        module_kwargs=dict(_DAFORMER_METHOD),
        dilations=(1, 6, 12, 18),
        multi_level=False,
        init=MIT_B5_INIT,
        batch_size=2,
        crop=(512, 512),
        lr=6e-5,
        schedule_steps=40_000,
        stop_steps=40_000,
        snapshot_every=4_000,
        published={"gta5": "68.3", "synthia": "60.9 (mIoU16) / 67.4 (mIoU13)"},
        differences=_DAFORMER_DIFFERENCES,
        arch="daformer",
        default_encoder="mit_b5",
        optimizer_recipe=dict(_DAFORMER_OPTIMIZER),
        preset_suffix="_daformer",
        rare_class_sampling=True,
    ),
    "mic": PaperRecipe(
        method="mic",
        paper="MIC (Hoyer et al., CVPR 2023; lhoyer/MIC) on DAFormer: masked image consistency",
        module_cls=MICModule,
        module_kwargs={
            **_DAFORMER_METHOD,
            "masked_consistency_weight": 1.0,
            "mask_block_size": 64,
            "mask_ratio": 0.7,
        },
        dilations=(1, 6, 12, 18),
        multi_level=False,
        init=MIT_B5_INIT,
        batch_size=2,
        crop=(512, 512),
        lr=6e-5,
        schedule_steps=40_000,
        stop_steps=40_000,
        snapshot_every=4_000,
        published={"gta5": "70.6 (on DAFormer; 75.9 on HRDA, not implemented here)"},
        differences=(
            *_DAFORMER_DIFFERENCES,
            "MIC's headline numbers use HRDA's multi-resolution training; this recipe is MIC on "
            "DAFormer (the paper's Table 1 row).",
        ),
        arch="daformer",
        default_encoder="mit_b5",
        optimizer_recipe=dict(_DAFORMER_OPTIMIZER),
        preset_suffix="_daformer",
        rare_class_sampling=True,
    ),
    "adaptseg": PaperRecipe(
        method="adaptseg",
        paper="AdaptSegNet (Tsai et al., CVPR 2018; wasidennis/AdaptSegNet "
        "train_gta2cityscapes_multi.py)",
        module_cls=AdaptSegNetModule,
        module_kwargs={
            "adv_weight": 1e-3,
            "aux_adv_weight": 2e-4,
            "aux_seg_weight": 0.1,
            "discriminator_betas": (0.9, 0.99),
            "align_corners": True,
        },
        dilations=(6, 12, 18, 24),
        multi_level=True,
        init=ADAPTSEGNET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        discriminator_lr=1e-4,
        schedule_steps=250_000,
        stop_steps=150_000,
        snapshot_every=5_000,
        published={"gta5": "42.4 (multi-level)"},
        differences=(
            "AdaptSegNet reports the best of its 5k-step snapshots on the labelled target val; "
            "the example keeps the best by val/mIoU likewise, and the last.",
            "One Adam over both discriminators (the same update as AdaptSegNet's two); the "
            "discriminators' backward runs after the segmentor's step (same update).",
        ),
    ),
    "dann": PaperRecipe(
        method="dann",
        paper="DANN (Ganin & Lempitsky, ICML 2015) on per-pixel encoder features, on AdvEnt's "
        "training recipe",
        module_cls=DANNModule,
        module_kwargs={
            "adv_weight": 1.0,
            "grl_schedule": True,
            "grl_gamma": 10.0,
            "align_corners": True,
        },
        dilations=(6, 12, 18, 24),
        multi_level=False,
        init=IMAGENET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=120_000,
        snapshot_every=2_000,
        published={},
        differences=(
            "DANN was published for classification: there is no DeepLabV2 GTA5→Cityscapes recipe "
            "or number; the domain classifier (1×1 convs, 256 wide) runs on layer4 at every "
            "position, through gradient reversal with the paper's λ_p schedule (γ 10).",
        ),
    ),
    "fda": PaperRecipe(
        method="fda",
        paper="FDA (Yang & Soatto, CVPR 2020; YanchaoYang/FDA train.py, β from --fda-beta)",
        module_cls=FDAModule,
        module_kwargs={
            "fda_beta": 0.01,
            "ent_weight": 0.005,
            "charbonnier_eta": 2.0,
            "ent_start_step": 0,
            "align_corners": True,
        },
        dilations=(6, 12, 18, 24),
        multi_level=False,
        init=FDA_INIT,
        batch_size=1,
        crop=(512, 1024),
        lr=2.5e-4,
        schedule_steps=150_000,
        stop_steps=100_000,
        snapshot_every=2_500,
        published={
            "gta5": "50.45 (three β = 0.01/0.05/0.09 runs ensembled + self-training rounds)"
        },
        differences=(
            "The paper's best number ensembles the three β models and adds self-training rounds "
            "on their pseudo-labels; one run here trains one β (--fda-beta).",
            "The entropy term starts at step 0, as the FDA README's command "
            "(--switch2entropy=0); the code's own default is 50,000.",
        ),
    ),
    "lsd_seg": PaperRecipe(
        method="lsd_seg",
        paper="LSD-seg (Sankaranarayanan et al., CVPR 2018; swamiviv/LSD-seg train.py)",
        module_cls=LSDSegModule,
        module_kwargs={
            "adv_weight": 0.1,
            "class_weight": 0.1,
            "l1_weight": 1.0,
            "generator_lr": 1e-4,
            "generator_betas": (0.7, 0.999),
            "discriminator_lr": 1e-4,
            "discriminator_betas": (0.7, 0.999),
        },
        dilations=(),
        multi_level=False,
        init=VGG16_INIT,
        batch_size=1,
        crop=None,
        lr=1e-5,
        schedule_steps=100_000,
        stop_steps=100_000,
        snapshot_every=500,
        published={"gta5": "37.1 (FCN8s-VGG16)"},
        differences=(
            "The reference's FCN8s-VGG16 is not in the library: the recipe runs smp's FPN on a "
            "VGG16 encoder (the closest skip-fusion network on the same backbone).",
            "The reference's Adam gives biases 2× the learning rate and decays it ×0.1 every 8 "
            "epochs; here Adam (AdamW without decay) at a constant 1e-5 for every parameter.",
            "Losses are averaged over pixels (the reference sums them and divides by the batch; "
            "LSDSegModule(reduction='sum') reproduces that).",
        ),
        arch="fpn",
        default_encoder="vgg16",
        optimizer_recipe={
            "arch": "fpn",
            "optimizer": "adamw",
            "weight_decay": 0.0,
            "betas": (0.9, 0.999),
            "head_lr_mult": 1.0,
            "poly_power": 0.0,
        },
        resize=(320, 640),
    ),
    "mcc": PaperRecipe(
        method="mcc",
        paper="MCC (Jin et al., ECCV 2020) as a target regulariser, on AdvEnt's training recipe",
        module_cls=MCCModule,
        module_kwargs={"mcc_weight": 1.0, "mcc_temperature": 2.5, "align_corners": True},
        dilations=(6, 12, 18, 24),
        multi_level=False,
        init=IMAGENET_INIT,
        batch_size=1,
        crop=None,
        lr=2.5e-4,
        schedule_steps=250_000,
        stop_steps=120_000,
        snapshot_every=2_000,
        published={},
        differences=(
            "MCC was published for classification: no DeepLabV2 GTA5→Cityscapes recipe or number "
            "exists; MCC's samples are 4,096 target pixels per batch.",
        ),
    ),
}

#: Source dataset → (train preset, source frame size as the papers resize it).
SOURCE_PRESETS = {"gta5": "gta5_train", "synthia": "synthia_train"}


@dataclass
class ResolvedRecipe:
    """What one run does: the recipe on ``devices`` processes, with its initial weights."""

    recipe: PaperRecipe
    source: str
    devices: int
    batch_per_device: int
    global_batch: int
    scale: float  # k of the linear scaling rule (1 = the paper's global batch)
    lr: float
    discriminator_lr: float | None
    schedule_steps: int
    stop_steps: int
    snapshot_every: int
    val_every: int
    style: str  # DeepLabV2 ResNet layout
    normalization: str
    init: str  # what the weights start from
    eval_protocol: str
    sync_batchnorm: bool
    encoder: str = "resnet101"
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # method settings from the CLI
    inference: str = "whole"
    slide_window: tuple[int, int] = (512, 512)
    slide_stride: tuple[int, int] = (341, 341)

    @property
    def warmup_steps(self) -> int:
        """The recipe's warm-up, scaled like the schedule (0 = none)."""
        steps = self.recipe.optimizer_recipe.get("warmup_steps", 0)
        return max(1, round(steps / self.scale)) if steps else 0

    def module_kwargs(self) -> dict[str, Any]:
        kwargs = {
            **self.recipe.optimizer_recipe,
            **self.recipe.module_kwargs,
            **self.overrides,
            "encoder": self.encoder,
            "lr": self.lr,
            "total_steps": self.schedule_steps,
            "normalization": self.normalization,
            "inference": self.inference,
            "slide_window": self.slide_window,
            "slide_stride": self.slide_stride,
        }
        if self.recipe.arch == "deeplabv2":
            kwargs["model_kwargs"] = {
                "dilations": self.recipe.dilations,
                "multi_level": self.recipe.multi_level,
                "style": self.style,
            }
        if self.warmup_steps:
            kwargs["warmup_steps"] = self.warmup_steps
        if self.discriminator_lr is not None:
            kwargs["discriminator_lr"] = self.discriminator_lr
        return kwargs

    @property
    def source_preset(self) -> str:
        return SOURCE_PRESETS[self.source] + self.recipe.preset_suffix

    @property
    def target_preset(self) -> str:
        return "cityscapes_train" + self.recipe.preset_suffix

    def _optimiser_line(self) -> str:
        opt = self.recipe.optimizer_recipe
        head = opt["head_lr_mult"]
        lrs = f"backbone {self.lr:g}, head {self.lr * head:g}"
        if self.discriminator_lr is not None:
            lrs += f", discriminator {self.discriminator_lr:g} (Adam)"
        if opt["optimizer"] == "adamw" and not opt.get("warmup_steps"):
            decay = "constant" if opt["poly_power"] == 0 else f"poly {opt['poly_power']}"
            return f"{lrs}; Adam betas {tuple(opt['betas'])}, wd {opt['weight_decay']:g}, {decay}"
        if opt["optimizer"] == "sgd":
            return (
                f"{lrs}; SGD momentum {opt['momentum']}, wd {opt['weight_decay']:g}, poly "
                f"{opt['poly_power']} per iteration"
            )
        no_decay = ", ".join(opt.get("no_decay_keys", ())) or "none"
        return (
            f"{lrs}; AdamW betas {tuple(opt['betas'])}, wd {opt['weight_decay']:g} (0 on "
            f"parameters named {no_decay}); linear warm-up over {self.warmup_steps:,} "
            f"iterations from {opt['warmup_ratio']:g}× (mmcv), then poly {opt['poly_power']}"
        )

    def _architecture_line(self) -> str:
        r = self.recipe
        if r.arch == "deeplabv2":
            return (
                f"DeepLabV2-{self.encoder} ({self.style} layout), ASPP dilations "
                f"{r.dilations}, multi-level {'on' if r.multi_level else 'off'}"
            )
        if r.arch != "daformer":
            return f"segmentation-models-pytorch {r.arch} with a {self.encoder} encoder"
        return (
            f"DAFormer: {self.encoder} encoder + DAFormer head (256-d embeddings, depthwise-"
            f"separable ASPP fusion, dilations {r.dilations}, no pooling, dropout 0.1)"
        )

    def lines(self) -> list[tuple[str, str]]:
        r = self.recipe
        batch = f"{self.batch_per_device} + {self.batch_per_device} per device × {self.devices}"
        batch += f" = {self.global_batch} + {self.global_batch} global"
        batch += f" (paper: {r.batch_size} + {r.batch_size})"
        source_preset = PRESETS[self.source_preset]
        source_resize = r.resize or source_preset["resize"]
        target_resize = r.resize or PRESETS[self.target_preset]["resize"]
        crops = (
            f"random {r.crop[1]}×{r.crop[0]} crops" if r.crop else "whole resized frames (no crop)"
        )
        if source_preset.get("cat_max_ratio", 1.0) < 1.0:
            crops += (
                f" (source crops re-drawn while one class covers > "
                f"{source_preset['cat_max_ratio']:.0%})"
            )
        flips = "horizontal flips p 0.5" if source_preset["flip"] else "no flip"
        frames = (
            f"{self.source} resized to {source_resize[1]}×{source_resize[0]}, Cityscapes to "
            f"{target_resize[1]}×{target_resize[0]}; {crops}; {flips}"
        )
        if r.rare_class_sampling:
            frames += (
                "; rare-class sampling of the source (T 0.01, > 3,000 px per image, crop re-drawn "
                "until > 1,500 px of the class)"
            )
        extra = {**r.module_kwargs, **self.overrides}
        teacher = (
            f"EMA α {extra.pop('ema_alpha')}, BatchNorm {extra.pop('teacher_bn')} mode, "
            f"τ {extra.pop('pseudo_label_threshold')} ({extra.pop('pseudo_label_weighting')} q)"
            if "ema_alpha" in extra
            else "none"
        )
        return [
            ("method", f"{r.method} — {r.paper}"),
            ("architecture", self._architecture_line()),
            ("initial weights", self.init),
            ("input normalisation", str(get_normalization(self.normalization))),
            ("frames", frames),
            ("batch", batch),
            ("learning rates", self._optimiser_line()),
            (
                "iterations",
                f"schedule {self.schedule_steps:,}, training stops at "
                f"{self.stop_steps:,} (paper: {r.schedule_steps:,} / {r.stop_steps:,})",
            ),
            (
                "snapshots / validation",
                f"every {self.snapshot_every:,} / {self.val_every:,} iterations",
            ),
            ("teacher", teacher),
            ("method settings", ", ".join(f"{k}={v}" for k, v in extra.items()) or "—"),
            ("evaluation", self._evaluation_line()),
            (
                "devices",
                f"{self.devices} (SyncBatchNorm "
                + ("on; not on CPU, where PyTorch has none)" if self.sync_batchnorm else "off)"),
            ),
            ("published mIoU", r.published.get(self.source, "—")),
        ]

    def _evaluation_line(self) -> str:
        line = f"{self.eval_protocol}: {EVALUATION_PROTOCOLS[self.eval_protocol]}"
        if self.inference == "slide":
            line += (
                f"; sliding windows {self.slide_window[1]}×{self.slide_window[0]} every "
                f"{self.slide_stride[1]}×{self.slide_stride[0]} px"
            )
        else:
            line += "; whole-image inference"
        return line

    def format(self) -> str:
        width = max(len(k) for k, _ in self.lines())
        out = [f"{k:<{width}}  {v}" for k, v in self.lines()]
        out += [f"note: {n}" for n in self.notes]
        out += [
            f"differs from the paper: {d}" for d in (*self.recipe.differences, *_COMMON_DIFFERENCES)
        ]
        return "\n".join(out)


def resolve_recipe(
    method: str,
    devices: int = 1,
    source: str = "gta5",
    checkpoint: str | None = None,
    encoder_weights: str | None = None,
    style: str | None = None,
    eval_protocol: str = "full",
    val_every: int | None = None,
    max_steps: int | None = None,
    encoder: str | None = None,
    inference: str = "whole",
    slide_window: tuple[int, int] = (512, 512),
    slide_stride: tuple[int, int] = (341, 341),
    overrides: dict[str, Any] | None = None,
) -> ResolvedRecipe:
    """The recipe of ``method`` on ``devices`` processes (see the module docstring).

    ``checkpoint`` (a local file, e.g. the paper's init file) selects the Caffe layout and input
    space unless ``style`` says otherwise; ``encoder_weights="imagenet"`` selects torchvision's
    layout, ImageNet normalisation and torchvision's ImageNet weights (downloaded; not the
    papers' initialisation).
    """
    recipe = RECIPES[method]
    encoder = encoder or recipe.default_encoder
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    notes: list[str] = []
    per_device = recipe.batch_size // devices if recipe.batch_size % devices == 0 else 0
    if per_device >= recipe.min_batch_per_device:
        scale = 1.0
    else:
        per_device = max(recipe.batch_size, recipe.min_batch_per_device)
        scale = per_device * devices / recipe.batch_size
        notes.append(
            f"the paper's global batch of {recipe.batch_size} + {recipe.batch_size} does not split "
            f"into {devices} device batches of at least {recipe.min_batch_per_device}: keeping "
            f"{per_device} + {per_device} per device (global {per_device * devices}) and applying "
            f"the linear scaling rule with k = {scale:g}: learning rates × {scale:g}, iterations "
            f"÷ {scale:g} (snapshots likewise, so they fall after the same number of images)"
        )
    global_batch = per_device * devices
    schedule = max(1, round(recipe.schedule_steps / scale))
    stop = max(1, round(recipe.stop_steps / scale))
    snapshot = max(1, round(recipe.snapshot_every / scale))
    if encoder != recipe.default_encoder:
        notes.append(
            f"encoder {encoder}: not the paper's {recipe.default_encoder} (and not its init file)"
        )
    if max_steps is not None:
        stop = min(stop, max_steps)
        notes.append(f"--max-steps {max_steps}: training stops at {stop} (schedule unchanged)")
    if recipe.arch != "deeplabv2":
        resolved_style = "pytorch"  # no Caffe variant: ImageNet-normalised RGB
        if style is not None:
            raise ValueError(f"--style applies to DeepLabV2 only, not to {recipe.arch}")
        if encoder_weights is not None:
            init = f"smp's ImageNet {encoder} weights ('{encoder_weights}', downloaded)"
        elif checkpoint is not None:
            init = f"{checkpoint} (paper: {recipe.init[0]})"
        else:
            init = (
                f"random (refused without --from-scratch); the paper starts from "
                f"{recipe.init[0]}: {recipe.init[1]}"
            )
    elif encoder_weights is not None:
        resolved_style = style or "torchvision"
        init = f"torchvision ImageNet weights ('{encoder_weights}', downloaded; not the papers')"
    elif checkpoint is not None:
        resolved_style = style or "caffe"
        init = f"{checkpoint} (paper: {recipe.init[0]})"
    else:
        resolved_style = style or "caffe"
        init = (
            f"random (refused without --from-scratch); the paper starts from {recipe.init[0]}: "
            f"{recipe.init[1]}"
        )
    if eval_protocol not in EVALUATION_PROTOCOLS:
        raise ValueError(
            f"unknown evaluation protocol {eval_protocol!r}; "
            f"choose from {sorted(EVALUATION_PROTOCOLS)}"
        )
    return ResolvedRecipe(
        recipe=recipe,
        source=source,
        devices=devices,
        batch_per_device=per_device,
        global_batch=global_batch,
        scale=scale,
        lr=recipe.lr * scale,
        discriminator_lr=(
            recipe.discriminator_lr * scale if recipe.discriminator_lr is not None else None
        ),
        schedule_steps=schedule,
        stop_steps=stop,
        snapshot_every=snapshot,
        val_every=val_every or snapshot,
        style=resolved_style,
        normalization="caffe" if resolved_style == "caffe" else "imagenet",
        init=init,
        eval_protocol=eval_protocol,
        # DeepLabV2's BatchNorm normalises with batch statistics in training (its affine
        # parameters are frozen, its statistics are not): share them across devices.
        sync_batchnorm=devices > 1,
        notes=notes,
        encoder=encoder,
        inference=inference,
        slide_window=tuple(slide_window),
        slide_stride=tuple(slide_stride),
        overrides=dict(overrides or {}),
    )


#: ``--select-by`` choices: the labelled target metric, or a label-free signal on unlabelled
#: Cityscapes train images (:mod:`lightning_uda.selection`).
SELECT_BY = ("val/mIoU", *(f"val_unsup/{name}" for name in SIGNALS))
#: Unlabelled Cityscapes train images scored by ``--select-by val_unsup/<name>`` (a fixed random
#: subset, the same for every run and seed, so that runs are scored on the same images).
SELECT_IMAGES = 500
SELECT_SEED = 0
LABELLED_SELECTION_WARNING = (
    "warning: selecting by labelled target val (val/mIoU): that is target supervision; pass "
    "--select-by val_unsup/<name> to select without target labels"
)


def selection_line(select_by: str, method: str, val_every: int) -> str:
    """How the run keeps its best checkpoint (printed with the recipe); exits for a signal the
    method cannot give (``agreement`` without an EMA teacher)."""
    if select_by == "val/mIoU":
        return LABELLED_SELECTION_WARNING
    name = select_by.split("/", 1)[1]
    mode, description = SIGNALS[name]
    if name == "agreement" and not issubclass(RECIPES[method].module_cls, SelfTrainingModule):
        raise SystemExit(
            f"--select-by {select_by}: {method} has no EMA teacher, so there is no student-teacher "
            "agreement to select by; choose another signal (e.g. val_unsup/im)"
        )
    return (
        f"model selection: best checkpoint by {select_by} ({'higher' if mode == 'max' else 'lower'}"
        f" is better: {description}) on {SELECT_IMAGES} unlabelled Cityscapes train images, "
        f"every signal logged as val_unsup/<name>; checkpoints ranked and saved at each "
        f"validation (every {val_every:,} iterations); val/mIoU is logged for reporting only"
    )


def unlabelled_selection_images(
    root: Path, transform: Any, normalization: str, count: int = SELECT_IMAGES
) -> Dataset:
    """A fixed random subset of ``count`` Cityscapes train images, without labels, for the
    label-free signals (seeded with :data:`SELECT_SEED`, in file order)."""
    images = Cityscapes(
        root, split="train", transform=transform, return_mask=False, normalization=normalization
    )
    if len(images) <= count:
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SELECT_SEED))
    return Subset(images, sorted(order[:count].tolist()))


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-root", type=Path, help="folder with the datasets (for training)")
    parser.add_argument("--method", choices=sorted(RECIPES), default="dacs")
    parser.add_argument(
        "--encoder",
        default=None,
        help="backbone; default the paper's: resnet101 for the DeepLabV2 recipes (resnet18/50 "
        "for quick checks), mit_b5 for daformer/mic (mit_b0..b4)",
    )
    parser.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on Ampere+")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop earlier than the recipe (schedule kept)"
    )
    parser.add_argument("--val-every", type=int, default=None, help="default: the snapshot rate")
    parser.add_argument("--log-every", type=int, default=50, help="steps between logged scalars")
    parser.add_argument(
        "--eval-protocol",
        choices=sorted(EVALUATION_PROTOCOLS),
        default="full",
        help="'full' (labels at full resolution) or 'dacs' (labels resized to 1024×512)",
    )
    parser.add_argument("--logger", choices=["csv", "wandb"], default="csv")
    parser.add_argument("--project", default="lightning_uda", help="W&B project")
    parser.add_argument(
        "--encoder-weights",
        default=None,
        help="'imagenet': torchvision's ImageNet ResNet (downloads; torchvision layout)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="local initial weights, e.g. the paper's init file"
    )
    parser.add_argument(
        "--style",
        choices=["caffe", "torchvision"],
        default=None,
        help="DeepLabV2 ResNet layout (default: caffe with --checkpoint, torchvision with "
        "--encoder-weights)",
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="allow random initial weights (not a recipe)"
    )
    parser.add_argument(
        "--inference",
        choices=["whole", "slide"],
        default="whole",
        help="evaluation: the whole (resized) image at once, or sliding windows (for images "
        "larger than the training crop, e.g. with --eval-size 1024 2048)",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="network input size at evaluation (default 512 1024, as the papers)",
    )
    parser.add_argument("--slide-window", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--slide-stride", type=int, nargs=2, default=(341, 341), metavar=("H", "W"))
    parser.add_argument(
        "--class-stats",
        default=None,
        help="rare-class sampling (daformer, mic): .npz cache of the source class statistics "
        "(default: under $LIGHTNING_UDA_CACHE, ~/.cache/lightning_uda)",
    )
    parser.add_argument(
        "--fda-beta",
        type=float,
        choices=[0.01, 0.05, 0.09],
        default=None,
        help="fda: the low-frequency window β (the paper trains 0.01, 0.05 and 0.09)",
    )
    parser.add_argument(
        "--select-by",
        choices=SELECT_BY,
        default="val_unsup/entropy",
        help="metric that picks the best checkpoint: a label-free signal 'val_unsup/<name>' "
        f"computed on {SELECT_IMAGES} unlabelled Cityscapes train images (default "
        "val_unsup/entropy, the signal that tracked target mIoU best on the demo for every "
        "method family; see the README) or 'val/mIoU' (labelled target val, i.e. target "
        "supervision); val/mIoU is logged for reporting either way",
    )
    parser.add_argument(
        "--monitor-pseudo-labels",
        action="store_true",
        help="read the Cityscapes train labels to log the pseudo-labels' accuracy and mIoU "
        "beside their coverage (pseudo/*; monitoring only, never trained on)",
    )
    parser.add_argument("--print-recipe", action="store_true", help="print the recipe and exit")
    parser.add_argument("--output", type=Path, default=Path("outputs"))
    parser.add_argument("--resume", action="store_true", help="resume from output/last.ckpt")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.print_recipe and args.data_root is None:
        parser.error("--data-root is required (unless --print-recipe)")
    return args


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Method settings given on the command line (``--fda-beta``), checked against ``--method``."""
    overrides: dict[str, Any] = {}
    if getattr(args, "fda_beta", None) is not None:
        if args.method != "fda":
            raise SystemExit(f"--fda-beta applies to --method fda, not {args.method}")
        overrides["fda_beta"] = args.fda_beta
    return overrides


def refuse_random_init(resolved: ResolvedRecipe, args: argparse.Namespace) -> None:
    """Exit with the papers' files when DeepLabV2 would start from random weights."""
    if args.checkpoint is not None or args.encoder_weights is not None or args.from_scratch:
        return
    name, where = resolved.recipe.init
    if resolved.recipe.arch != "deeplabv2":
        pulls = (
            " (and the ImageNet feature distance would pull towards random features)"
            if resolved.recipe.arch == "daformer"
            else ""
        )
        target = f"{name}" if name.endswith(".pth") else "a state dict file"
        sys.exit(
            f"{resolved.recipe.method}: the {resolved.encoder} encoder would start from random "
            f"weights, which cannot come near the published numbers{pulls}. The paper starts "
            f"from {name} — {where}. Pass a local file with --checkpoint PATH ({target}), or "
            f"--encoder-weights imagenet for smp's ImageNet {resolved.encoder} weights "
            "(downloads), or --from-scratch to insist."
        )
    sys.exit(
        f"{resolved.recipe.method}: the {resolved.encoder} encoder would start from random "
        f"weights, which cannot come near the published numbers (and the ImageNet feature "
        f"distance would pull towards random features). The paper starts from {name} — "
        f"{where}. Pass it with --checkpoint PATH/{name}, or --encoder-weights imagenet for "
        "smp's ImageNet MiT weights (downloads), or --from-scratch to insist."
    )
    sys.exit(
        f"{resolved.recipe.method}: DeepLabV2 would start from random weights, which cannot "
        f"come near the published numbers. The paper starts from {name} — {where}. Pass it with "
        f"--checkpoint PATH/{name} (the Caffe layout and BGR mean-subtracted input are selected "
        "for it), or --encoder-weights imagenet for torchvision's ImageNet ResNet (downloads; "
        "not the papers' initialisation), or --from-scratch to insist."
    )


def run(
    args: argparse.Namespace,
    source_factory: Callable[..., Dataset],
    source_name: str,
) -> None:
    """Resolve the method's recipe for ``args.devices``, print it, then build data and fit."""
    resolved = resolve_recipe(
        args.method,
        devices=args.devices,
        source=source_name,
        checkpoint=args.checkpoint,
        encoder_weights=args.encoder_weights,
        style=args.style,
        eval_protocol=args.eval_protocol,
        val_every=args.val_every,
        max_steps=args.max_steps,
        encoder=args.encoder,
        inference=args.inference,
        slide_window=tuple(args.slide_window),
        slide_stride=tuple(args.slide_stride),
        overrides=method_overrides(args),
    )
    print(resolved.format(), flush=True)
    select_by = getattr(args, "select_by", "val_unsup/entropy")
    print(selection_line(select_by, args.method, resolved.val_every), flush=True)
    if args.print_recipe:
        return
    refuse_random_init(resolved, args)
    run_name = f"{source_name}2cityscapes-{args.method}"
    checkpoint_dir = args.output / run_name / "checkpoints"
    resume_from = resume_checkpoint(checkpoint_dir) if args.resume else None
    seed_everything(args.seed, workers=True)
    recipe = resolved.recipe
    space = resolved.normalization
    frames = {} if recipe.resize is None else {"resize": recipe.resize}
    source = source_factory(
        args.data_root,
        transform=preset(resolved.source_preset, crop=recipe.crop, normalization=space, **frames),
        normalization=space,
    )
    target = Cityscapes(
        args.data_root / "cityscapes",
        split="train",
        transform=preset(resolved.target_preset, crop=recipe.crop, normalization=space, **frames),
        # labels only for monitoring the pseudo-labels (never trained on)
        return_mask=args.monitor_pseudo_labels,
        normalization=space,
    )
    eval_size = {} if args.eval_size is None else {"resize": tuple(args.eval_size)}
    val_transform = preset(
        "cityscapes_val", protocol=args.eval_protocol, normalization=space, **eval_size
    )
    val = Cityscapes(
        args.data_root / "cityscapes",
        split="val",
        transform=val_transform,
        normalization=space,
    )
    datamodule = UDADataModule(
        source=source,
        target=target,
        val=val,
        batch_size=resolved.batch_per_device,
        val_batch_size=1,
        num_workers=args.num_workers,
        seed=args.seed,
        target_monitor_labels=args.monitor_pseudo_labels,
        rare_class_sampling=(
            RareClassSampling(stats_file=args.class_stats) if recipe.rare_class_sampling else None
        ),
    )
    module = recipe.module_cls(
        num_classes=datamodule.num_classes,
        encoder_weights=args.encoder_weights,
        checkpoint=args.checkpoint,
        seed=args.seed,
        **resolved.module_kwargs(),
    )
    if args.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project=args.project, name=run_name, save_dir=args.output)
    else:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(args.output, name=run_name)
    selection: list[Any] = []
    mode = "max"
    if select_by != "val/mIoU":
        name = select_by.split("/", 1)[1]
        mode = SIGNALS[name][0]
        unlabelled = unlabelled_selection_images(
            args.data_root / "cityscapes", val_transform, space
        )
        # every signal is logged (for comparison with val/mIoU); the selected one ranks
        selection.append(UnsupervisedValidation(unlabelled, num_workers=args.num_workers))
    score = (
        "miou{val/mIoU:.1f}"
        if select_by == "val/mIoU"
        else (f"{select_by.split('/', 1)[1]}{{{select_by}:.4f}}-miou{{val/mIoU:.1f}}")
    )
    # Saved and ranked at the end of each validation (every --val-every steps), so each
    # checkpoint carries its own validation's score; with every_n_train_steps it would be saved
    # in the training step before that validation runs, ranked by the previous one's.
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        monitor=select_by,
        mode=mode,
        save_last=True,
        save_on_train_epoch_end=False,
        filename=f"step{{step}}-{score}",
        auto_insert_metric_name=False,
    )
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=_strategy(args),
        sync_batchnorm=resolved.sync_batchnorm and _on_gpu(args.accelerator),
        precision=args.precision,
        max_steps=resolved.stop_steps,
        log_every_n_steps=args.log_every,
        max_epochs=-1,
        val_check_interval=resolved.val_every,
        check_val_every_n_epoch=None,
        logger=logger,
        callbacks=[checkpoints, LearningRateMonitor(), SegmentationPanels(), *selection],
        # a SHA-256 digest beside every checkpoint, verified when a run resumes from it
        plugins=[ChecksummedCheckpointIO()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)


def resume_checkpoint(directory: Path) -> str:
    """``directory/last.ckpt``, or exit naming ``directory`` when there is none to resume."""
    last = directory / "last.ckpt"
    if not last.is_file():
        found = sorted(p.name for p in directory.glob("*.ckpt")) if directory.is_dir() else []
        sys.exit(
            f"--resume: no last.ckpt in {directory} "
            f"({'it holds ' + ', '.join(found) if found else 'no checkpoint there'}). Pass the "
            "--output (and --method) of the run to resume, or start without --resume."
        )
    return str(last)


def _on_gpu(accelerator: str) -> bool:
    """Whether the run will use GPUs (SyncBatchNorm has no CPU implementation in PyTorch)."""
    if accelerator == "auto":
        import torch

        return torch.cuda.is_available()
    return accelerator in ("gpu", "cuda")


def _strategy(args: argparse.Namespace) -> str:
    if args.devices <= 1:
        return "auto"
    # AdvEnt back-propagates the segmentor and discriminator losses separately, so each backward
    # leaves some parameters without gradients; DDP must be told (the module checks this).
    adversarial = ("advent", "adaptseg", "lsd_seg")
    return "ddp_find_unused_parameters_true" if args.method in adversarial else "ddp"
