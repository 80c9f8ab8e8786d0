"""``lightning-uda evaluate``: score a checkpoint on Cityscapes val, the papers' way.

::

    lightning-uda evaluate CHECKPOINT --data-root CITYSCAPES [--split val] [--out DIR]
        [--scale S] [--inference whole|slide|auto] [--window H W] [--stride H W]
        [--official] [--devices N] [--accelerator A] [--precision P] [--no-progress-bar]

The protocol is the one AdvEnt, DAFormer, MIC and the official benchmark use (``"full"`` in
:mod:`lightning_uda.data.transforms`): each frame is resized by the checkpoint's evaluation
scale (recorded when it was saved; 0.5, i.e. 1024×512 for 2048×1024 frames, for checkpoints
that did not record one), the logits are upsampled to the **full-resolution labels**
(``*_gtFine_labelIds.png`` mapped to the 19 train ids, void excluded), and IoU is accumulated
over the whole split (one confusion matrix; torchmetrics' ``MulticlassJaccardIndex``). A class
absent from both the predictions and the labels has no IoU: it is printed as ``n/a`` and left out
of the mean. Inference is the checkpoint's own mode (``whole`` or ``slide`` with its window)
unless ``--inference`` says otherwise.

Every prediction is also written to ``DIR`` as ``<frame>_pred_labelIds.png`` (Cityscapes label
ids, full resolution): the files the official ``cityscapesscripts`` evaluation and the benchmark
server read. ``--official`` runs that evaluation on them too and prints its class average, which
must equal this command's mIoU; it needs the ``cityscapes`` extra
(``pip install 'lightning_uda[cityscapes]'``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_uda.callbacks.prediction_writer import (
    CityscapesPredictionWriter,
    train_ids_to_label_ids,
)
from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.files import image_size
from lightning_uda.extras import require
from lightning_uda.losses.cross_entropy import upsample_logits
from lightning_uda.predict import InferenceSettings, Segmenter, lightning_flags
from lightning_uda.quiet import quiet_run
from lightning_uda.run_info import CheckpointInfo, NotALibraryCheckpointError

__all__ = ["Evaluator", "evaluate", "format_scores", "main", "official_scores"]

#: The evaluation scale of checkpoints that did not record one: 1024×512 for 2048×1024 frames.
DEFAULT_CITYSCAPES_SCALE = 0.5


class Evaluator(Segmenter):
    """:class:`~lightning_uda.predict.Segmenter` with IoU over a labelled split (``validate``).

    Batches are Cityscapes items with ``return_meta`` (``image`` at the network size, ``mask`` at
    full resolution, ``path``); each prediction is written to ``out_dir`` as a label-id PNG.
    After ``trainer.validate``, :attr:`iou` holds the per-class IoU in percent (NaN: class
    absent from predictions and labels).
    """

    def __init__(self, *args: Any, out_dir: Path, num_classes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out_dir = Path(out_dir)
        self.metric = MulticlassJaccardIndex(
            num_classes=num_classes,
            ignore_index=IGNORE_INDEX,
            average="none",
            zero_division=float("nan"),
        )
        self.iou: torch.Tensor | None = None

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images.shape[0]):
            image = images[i : i + 1]
            logits = self.logits(image, self.settings.mode(*image.shape[-2:]))
            logits = upsample_logits(
                logits.float(), tuple(masks.shape[-2:]), align_corners=self.align_corners
            )
            prediction = logits.argmax(dim=1)
            self.metric.update(prediction, masks[i : i + 1])
            name = CityscapesPredictionWriter.output_name(
                batch["path"][i], f"rank{self.global_rank}_batch{batch_idx}_{i}"
            )
            Image.fromarray(train_ids_to_label_ids(prediction[0])).save(self.out_dir / name)

    def on_validation_epoch_end(self) -> None:
        self.iou = (self.metric.compute() * 100.0).cpu()
        self.metric.reset()


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    split: str = "val",
    scale: float | None = None,
    inference: str | None = None,
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Evaluate ``checkpoint`` on Cityscapes ``split`` under ``data_root`` (the command).

    Returns:
        ``(class names, per-class IoU in percent)``; NaN for a class absent from both the
        predictions and the labels.

    Raises:
        NotALibraryCheckpointError: not a lightning_uda checkpoint.
        ValueError: the checkpoint does not predict the 19 Cityscapes classes.
        lightning_uda.data.DatasetLayoutError: ``data_root`` is not a Cityscapes tree.
    """
    from lightning_uda.data import Cityscapes, preset

    info = CheckpointInfo.from_file(checkpoint)
    if not info.is_cityscapes:
        raise ValueError(
            f"{info.path} predicts {info.num_classes} classes ({', '.join(info.class_names[:4])}"
            "...), not the 19 Cityscapes classes; evaluate it with `lightning-uda validate` on "
            "its own dataset's config"
        )
    model = info.build_segmentor()
    assert info.normalization is not None
    if scale is None:
        scale = info.eval_scale if "eval_scale" in info.recorded else DEFAULT_CITYSCAPES_SCALE
    if not scale > 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    probe = Cityscapes(data_root, split=split, normalization=info.normalization)
    width, height = image_size(probe.samples[0][0])  # also inside the official zip
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    dataset = Cityscapes(
        data_root,
        split=split,
        transform=preset("cityscapes_val", resize=size, normalization=info.normalization),
        return_meta=True,
    )
    # the images arrive at the network size: the settings' own resize is the identity
    settings = InferenceSettings(
        info, inference=inference or info.inference, window=window, stride=stride, scale=1.0
    )
    evaluator = Evaluator(
        model,
        settings,
        align_corners=info.align_corners,
        out_dir=Path(out_dir),
        num_classes=info.num_classes,
    )
    trainer = Trainer(
        **{
            "accelerator": "auto",
            "devices": 1,
            "logger": False,
            "enable_model_summary": False,
            **(trainer_kwargs or {}),
        }
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    trainer.validate(evaluator, dataloaders=loader, verbose=False)
    assert evaluator.iou is not None
    return info.class_names, evaluator.iou


def official_scores(predictions: Path, data_root: Path, split: str = "val") -> dict[str, Any]:
    """``cityscapesscripts``' evaluation of the label-id PNGs in ``predictions`` against
    ``data_root/gtFine/<split>``: ``{"mIoU": percent, "per_class": {name: percent or NaN}}``.

    Raises:
        ImportError: the ``cityscapes`` extra is not installed (the message names it).
    """
    official = require(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        extra="cityscapes",
        feature="the official Cityscapes evaluation (--official)",
    )
    import copy

    ground_truths = sorted((Path(data_root) / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
    files = [
        predictions / f"{gt.name.removesuffix('_gtFine_labelIds.png')}_pred_labelIds.png"
        for gt in ground_truths
    ]
    args = copy.copy(official.args)  # module-level defaults, left untouched
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    args.colorized = False
    args.exportFile = str(predictions / "resultPixelLevelSemanticLabeling.json")
    scores = official.evaluateImgLists(
        [str(p) for p in files], [str(g) for g in ground_truths], args
    )
    return {
        "mIoU": 100.0 * float(scores["averageScoreClasses"]),
        "per_class": {k: 100.0 * float(v) for k, v in scores["classScores"].items()},
    }


def format_scores(names: Sequence[str], iou: torch.Tensor) -> str:
    """Per-class IoU lines (``n/a`` for a class without IoU) and the mean over the others."""
    width = max(len(n) for n in names)
    lines = [f"{'class':<{width}}  IoU (%)"]
    for name, value in zip(names, iou.tolist(), strict=True):
        lines.append(f"{name:<{width}}  {'n/a' if math.isnan(value) else f'{value:.2f}':>6}")
    scored = int((~iou.isnan()).sum())
    mean = float(torch.nanmean(iou)) if scored else math.nan
    lines.append(f"{'mIoU':<{width}}  {mean:6.2f}  (mean over {scored} of {len(names)} classes)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-uda evaluate",
        description="Evaluate a checkpoint on Cityscapes at full label resolution.",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-root", type=Path, required=True, help="the Cityscapes root")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--out", type=Path, default=None, help="label-id PNGs (default: <checkpoint>_<split>/)"
    )
    parser.add_argument("--scale", type=float, default=None, help="input resize factor")
    parser.add_argument("--inference", choices=("auto", "whole", "slide"), default=None)
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument(
        "--official", action="store_true", help="also run cityscapesscripts on the PNGs"
    )
    parser.add_argument("--devices", default="1")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-uda evaluate``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}_{args.split}")
    trainer_kwargs = lightning_flags(args)
    try:
        with quiet_run():
            names, iou = evaluate(
                args.checkpoint,
                args.data_root,
                out,
                split=args.split,
                scale=args.scale,
                inference=args.inference,
                window=args.window,
                stride=args.stride,
                trainer_kwargs=trainer_kwargs,
            )
    except (FileNotFoundError, NotALibraryCheckpointError, ValueError) as error:
        parser.exit(2, f"lightning-uda evaluate: error: {error}\n")
    print(format_scores(names, iou))
    print(f"wrote the label-id PNGs to {out}")
    if args.official:
        try:
            scores = official_scores(out, args.data_root, args.split)
        except ImportError as error:
            parser.exit(2, f"lightning-uda evaluate: error: {error}\n")
        print(f"official cityscapesscripts mIoU: {scores['mIoU']:.2f}")
    return 0
