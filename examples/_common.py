"""Shared command line of the GTA5/SYNTHIA → Cityscapes examples: paper recipes + Trainer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import Dataset

from lightning_uda.callbacks import SegmentationPanels
from lightning_uda.data import Cityscapes, UDADataModule, preset
from lightning_uda.methods import (
    AdvEntModule,
    ClassMixModule,
    DACSModule,
    MCCModule,
    MinEntModule,
    SourceOnlyModule,
    UDAModule,
)

#: The optimiser recipe shared by DACS and AdvEnt (DeepLabV2-ResNet101): SGD 2.5e-4, momentum
#: 0.9, weight decay 5e-4, head 10×, poly 0.9 per iteration.
SGD_RECIPE: dict[str, Any] = {
    "arch": "deeplabv2",
    "encoder": "resnet101",
    "optimizer": "sgd",
    "lr": 2.5e-4,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "head_lr_mult": 10.0,
    "poly_power": 0.9,
}

#: method → (module class, extra arguments, DeepLabV2 ASPP dilations, batch size per domain,
#: train on 512×512 crops?). DACS' head sums the 6/12 branches, AdvEnt's all four (DESIGN.md §4);
#: AdvEnt/MinEnt train on whole resized frames with batch 1, DACS on 512² crops with batch 2.
METHODS: dict[str, tuple[type[UDAModule], dict[str, Any], tuple[int, ...], int, bool]] = {
    "source_only": (SourceOnlyModule, {}, (6, 12), 2, True),
    "dacs": (
        DACSModule,
        {"ema_alpha": 0.99, "pseudo_label_threshold": 0.968},
        (6, 12),
        2,
        True,
    ),
    "classmix": (ClassMixModule, {"ema_alpha": 0.99}, (6, 12), 2, True),
    "minent": (MinEntModule, {"ent_weight": 1e-3}, (6, 12, 18, 24), 1, False),
    "advent": (
        AdvEntModule,
        {"adv_weight": 1e-3, "aux_adv_weight": 2e-4},
        (6, 12, 18, 24),
        1,
        False,
    ),
    "mcc": (MCCModule, {"mcc_weight": 1.0, "mcc_temperature": 2.5}, (6, 12, 18, 24), 2, True),
}


def parse_args(description: str, default_steps: int = 250_000) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-root", type=Path, required=True, help="folder with the datasets")
    parser.add_argument("--method", choices=sorted(METHODS), default="dacs")
    parser.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on Ampere+")
    parser.add_argument("--max-steps", type=int, default=default_steps)
    parser.add_argument("--val-every", type=int, default=5000, help="validate every N steps")
    parser.add_argument("--logger", choices=["csv", "wandb"], default="csv")
    parser.add_argument("--project", default="lightning_uda", help="W&B project")
    parser.add_argument("--encoder-weights", default=None, help="'imagenet' to opt in (downloads)")
    parser.add_argument("--checkpoint", default=None, help="local state dict to start from")
    parser.add_argument("--output", type=Path, default=Path("outputs"))
    parser.add_argument("--resume", action="store_true", help="resume from output/last.ckpt")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _strategy(args: argparse.Namespace) -> str:
    if args.devices <= 1:
        return "auto"
    # AdvEnt back-propagates the segmentor and discriminator losses separately, so each backward
    # leaves some parameters without gradients; DDP must be told (the module checks this).
    return "ddp_find_unused_parameters_true" if args.method == "advent" else "ddp"


def run(
    args: argparse.Namespace,
    source_factory: Callable[[Path, Any], Dataset],
    source_preset: str,
    source_name: str,
) -> None:
    """Build the source→Cityscapes datamodule and the method's paper recipe, then fit."""
    seed_everything(args.seed, workers=True)
    module_cls, extra, dilations, batch_size, crop = METHODS[args.method]
    crop_size = (512, 512) if crop else None
    source = source_factory(args.data_root, preset(source_preset, crop=crop_size))
    target = Cityscapes(
        args.data_root / "cityscapes",
        split="train",
        transform=preset("cityscapes_train", crop=crop_size),
        return_mask=False,
    )
    val = Cityscapes(args.data_root / "cityscapes", split="val", transform=preset("cityscapes_val"))
    datamodule = UDADataModule(
        source=source,
        target=target,
        val=val,
        batch_size=batch_size,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    module = module_cls(
        num_classes=datamodule.num_classes,
        encoder_weights=args.encoder_weights,
        checkpoint=args.checkpoint,
        model_kwargs={"dilations": dilations},
        seed=args.seed,
        **SGD_RECIPE,
        **extra,
    )
    run_name = f"{source_name}2cityscapes-{args.method}"
    if args.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project=args.project, name=run_name, save_dir=args.output)
    else:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(args.output, name=run_name)
    checkpoints = ModelCheckpoint(
        dirpath=args.output / run_name / "checkpoints",
        monitor="val/mIoU",
        mode="max",
        save_last=True,
        every_n_train_steps=args.val_every,
        filename="step{step}-miou{val/mIoU:.1f}",
        auto_insert_metric_name=False,
    )
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=_strategy(args),
        precision=args.precision,
        max_steps=args.max_steps,
        max_epochs=-1,
        val_check_interval=args.val_every,
        check_val_every_n_epoch=None,
        logger=logger,
        callbacks=[checkpoints, LearningRateMonitor(), SegmentationPanels()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path="last" if args.resume else None)
