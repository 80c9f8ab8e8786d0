"""``lightning-uda predict``: run a trained checkpoint on any images and look at the result.

::

    lightning-uda predict CHECKPOINT INPUT... --out DIR [--inference auto|whole|slide]
        [--window H W] [--stride H W] [--scale S] [--label-ids] [--confidence]
        [--alpha A] [--devices N] [--accelerator A] [--precision P] [--no-progress-bar]

``INPUT`` is any mix of image files, folders (their PNG/JPEG files, sub-folders kept in the
output) and glob patterns (quote them). Everything about the network comes from the checkpoint
(:class:`lightning_uda.run_info.CheckpointInfo`): architecture, classes and palette, input space,
the evaluation's inference mode and scale, and the training crop. Per image ``DIR`` receives:

- ``<name>_trainIds.png``: the predicted train ids (``0..C-1``, 8-bit), at the input's size;
- ``<name>_color.png``: the same in the class palette;
- ``<name>_overlay.png``: the colours blended over the input (``--alpha``, default 0.5);
- with ``--label-ids``, ``<name>_labelIds.png``: Cityscapes label ids (19-class checkpoints);
- with ``--confidence``, ``<name>_confidence.png``: the top softmax probability × 255.

**Inference.** The image is first resized by the checkpoint's evaluation scale (0.5 for a run
validated at 1024×512 against 2048×1024 labels; ``--scale`` overrides). ``auto`` (default) then
runs the whole image when it fits the training crop and overlapping windows of the crop size
otherwise (the checkpoint's own window and stride when it evaluated by sliding windows; else
stride ⅔ of the crop), since a network trained on crops has only seen that much context;
``--inference whole|slide`` forces one. Images are padded (edge pixels repeated) to a multiple
of 32 pixels for the network and the padding is cut from the logits; the logits are upsampled to
the input's size before the argmax.

**Robustness.** A file that cannot be read (not an image, truncated) or an input that matches
nothing is reported (``skipped: ...``) and the other images are still written; the exit status
is then 1. A file that is not a lightning_uda checkpoint stops the command with a message naming
it. Prediction runs through Lightning's ``Trainer.predict`` (``--devices``, ``--accelerator``,
``--precision``), one image at a time, with one progress bar.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_uda.inference import sliding_window_logits
from lightning_uda.losses.cross_entropy import upsample_logits
from lightning_uda.normalization import InputNormalization
from lightning_uda.predict_io import (
    InputImage,
    UnreadableImageError,
    find_inputs,
    read_rgb,
    write_outputs,
)
from lightning_uda.quiet import quiet_run
from lightning_uda.run_info import CheckpointInfo, NotALibraryCheckpointError

__all__ = [
    "ImageFiles",
    "InferenceSettings",
    "Segmenter",
    "main",
    "network_input",
    "predict",
]

#: Images are padded to a multiple of this for the network (every segmentor's largest stride).
PAD_MULTIPLE = 32


class InferenceSettings:
    """How one image is run: scale, mode rule and window (see the module docstring).

    Args:
        info: the checkpoint's info.
        inference: ``"auto"``, ``"whole"`` or ``"slide"``.
        window, stride: slide window and stride ``(h, w)`` (``None``: from the checkpoint).
        scale: input resize factor (``None``: the checkpoint's evaluation scale).
    """

    def __init__(
        self,
        info: CheckpointInfo,
        inference: str = "auto",
        window: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        scale: float | None = None,
    ) -> None:
        if inference not in ("auto", "whole", "slide"):
            raise ValueError(f"inference must be auto, whole or slide, got {inference!r}")
        own_slide = info.inference == "slide"
        default_window = info.slide_window if own_slide else info.train_crop
        self.window = tuple(int(v) for v in (window or default_window))
        if stride is not None:
            self.stride = tuple(int(v) for v in stride)
        elif own_slide and window is None:
            self.stride = info.slide_stride
        else:
            self.stride = tuple(max(1, math.ceil(2 * w / 3)) for w in self.window)
        for name, pair in (("window", self.window), ("stride", self.stride)):
            if len(pair) != 2 or min(pair) < 1:
                raise ValueError(f"--{name} must be two sizes >= 1 (height width), got {pair}")
        self.scale = info.eval_scale if scale is None else float(scale)
        if not self.scale > 0:
            raise ValueError(f"--scale must be > 0, got {self.scale}")
        self.inference = inference

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network sees for an ``height × width`` input (at least 1 pixel)."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def mode(self, height: int, width: int) -> str:
        """``"whole"`` or ``"slide"`` for an input of this size (network size vs the window)."""
        if self.inference != "auto":
            return self.inference
        h, w = self.network_size(height, width)
        return "slide" if h > self.window[0] or w > self.window[1] else "whole"


class ImageFiles(Dataset):
    """The inputs as items ``{"image": 3×h×w float (input space, resized), "rgb": H×W×3 uint8,
    "index": int}``, or ``{"error": message, "index"}`` for a file that cannot be read."""

    def __init__(
        self,
        images: Sequence[InputImage],
        normalization: InputNormalization,
        settings: InferenceSettings,
    ) -> None:
        self.images = list(images)
        self.normalization = normalization
        self.settings = settings

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.images[index].path)
        except UnreadableImageError as error:
            return {"error": str(error), "index": index}
        return {
            "image": network_input(rgb, self.normalization, self.settings),
            "rgb": rgb,
            "index": index,
        }


def network_input(
    rgb: np.ndarray, normalization: InputNormalization, settings: InferenceSettings
) -> Tensor:
    """``3×h×w`` float input of ``H×W×3`` uint8 pixels: resized to
    :meth:`InferenceSettings.network_size` (bilinear, on the uint8 pixels, as the library's
    val transforms do) and normalised into the checkpoint's input space."""
    height, width = settings.network_size(*rgb.shape[:2])
    if (height, width) != rgb.shape[:2]:
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(normalization.normalize_uint8(rgb).transpose(2, 0, 1)).float()


def _single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate of batch size 1 (images differ in size): the item, its image batched."""
    (item,) = items
    if "image" in item:
        item = {**item, "image": item["image"][None]}
    return item


class Segmenter(LightningModule):
    """A checkpoint's segmentor for ``Trainer.predict`` (one image per batch).

    ``predict_step`` returns ``{"index", "train_ids": H×W uint8 numpy, "confidence": H×W float32
    numpy}`` at the input's size, or ``{"index", "error"}`` for an unreadable file.
    """

    def __init__(
        self, model: nn.Module, settings: InferenceSettings, align_corners: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.align_corners = align_corners

    def logits(self, image: Tensor, mode: str) -> Tensor:
        """``1×C×h×w`` logits of a ``1×3×h×w`` image (padded to :data:`PAD_MULTIPLE`, cut)."""
        height, width = image.shape[-2:]
        pad_h = (-height) % PAD_MULTIPLE
        pad_w = (-width) % PAD_MULTIPLE
        padded = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image
        if mode == "slide":
            logits = sliding_window_logits(
                self.model,
                padded,
                self.settings.window,
                self.settings.stride,
                align_corners=self.align_corners,
            )
        else:
            logits = upsample_logits(
                self.model(padded), tuple(padded.shape[-2:]), align_corners=self.align_corners
            )
        return logits[..., :height, :width]

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        if "error" in batch:
            return {"index": batch["index"], "error": batch["error"]}
        rgb = batch["rgb"]
        mode = self.settings.mode(*rgb.shape[:2])
        logits = self.logits(batch["image"], mode)
        logits = upsample_logits(logits.float(), rgb.shape[:2], align_corners=self.align_corners)
        probabilities = logits.softmax(dim=1)[0]
        confidence, train_ids = probabilities.max(dim=0)
        return {
            "index": batch["index"],
            "train_ids": train_ids.to(torch.uint8).cpu().numpy(),
            "confidence": confidence.cpu().numpy(),
        }


class _Writer(BasePredictionWriter):
    """Writes each prediction as it comes (nothing is kept in memory); reports skips."""

    def __init__(self, dataset: ImageFiles, out_dir: Path, palette: np.ndarray, **options: Any):
        super().__init__(write_interval="batch")
        self.dataset, self.out_dir, self.palette, self.options = dataset, out_dir, palette, options
        self.written: list[int] = []
        self.skipped: list[str] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, *_):  # noqa: ANN001
        if "error" in prediction:
            message = f"skipped {prediction['error']}"
            self.skipped.append(message)
            _report(trainer, message)
            return
        image = self.dataset.images[prediction["index"]]
        write_outputs(
            self.out_dir,
            image.output_stem,
            rgb=batch["rgb"],
            train_ids=prediction["train_ids"],
            palette=self.palette,
            confidence=prediction["confidence"] if self.options["confidence"] else None,
            label_ids=self.options["label_ids"],
            alpha=self.options["alpha"],
        )
        self.written.append(prediction["index"])


def _report(trainer: Trainer, message: str) -> None:
    """Print above the progress bar when there is one."""
    bar = trainer.progress_bar_callback
    if bar is not None and hasattr(bar, "print"):
        bar.print(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str],
    out_dir: str | Path,
    inference: str = "auto",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scale: float | None = None,
    label_ids: bool = False,
    confidence: bool = False,
    alpha: float = 0.5,
    trainer_kwargs: dict[str, Any] | None = None,
) -> tuple[list[Path], list[str]]:
    """Predict ``inputs`` with ``checkpoint`` into ``out_dir`` (the command, as a function).

    Returns:
        ``(written, skipped)``: the input files whose outputs were written, and one message per
        input skipped (unreadable file, or a name that matched nothing).

    Raises:
        FileNotFoundError, NotALibraryCheckpointError: the checkpoint (see
            :func:`lightning_uda.run_info.load_checkpoint`).
        ValueError: bad settings, ``label_ids`` for a checkpoint whose classes are not
            Cityscapes', or two inputs with the same output name.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
    info = CheckpointInfo.from_file(checkpoint)
    if label_ids and not info.is_cityscapes:
        raise ValueError(
            f"--label-ids writes Cityscapes label ids, but {info.path} predicts "
            f"{info.num_classes} other classes ({', '.join(info.class_names[:5])}...); its train "
            "ids (*_trainIds.png) are the labels"
        )
    settings = InferenceSettings(
        info, inference=inference, window=window, stride=stride, scale=scale
    )
    model = info.build_segmentor()
    assert info.normalization is not None
    images, missing = find_inputs(inputs)
    skipped = [f"skipped {m}" for m in missing]
    for message in skipped:
        print(message, file=sys.stderr, flush=True)
    if not images:
        return [], skipped
    dataset = ImageFiles(images, info.normalization, settings)
    out = Path(out_dir)
    writer = _Writer(
        dataset, out, info.palette, confidence=confidence, label_ids=label_ids, alpha=alpha
    )
    trainer = Trainer(
        **{
            "accelerator": "auto",
            "devices": 1,
            "logger": False,
            "enable_model_summary": False,
            **(trainer_kwargs or {}),
            "callbacks": [writer],
        }
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=_single)
    trainer.predict(
        Segmenter(model, settings, align_corners=info.align_corners),
        dataloaders=loader,
        return_predictions=False,
    )
    return [images[i].path for i in sorted(writer.written)], skipped + writer.skipped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-uda predict",
        description="Segment images with a trained lightning_uda checkpoint.",
    )
    parser.add_argument("checkpoint", type=Path, help="a *.ckpt of lightning-uda fit")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--inference",
        choices=("auto", "whole", "slide"),
        default="auto",
        help="auto (default): sliding windows when the image is larger than the training crop",
    )
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="resize factor before inference "
        "(default: the checkpoint's evaluation scale, 1 when it has none)",
    )
    parser.add_argument("--label-ids", action="store_true", help="also write Cityscapes label ids")
    parser.add_argument(
        "--confidence", action="store_true", help="also write the top softmax × 255"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight (0.5)")
    parser.add_argument("--devices", default="1", help="Lightning's devices (default 1)")
    parser.add_argument("--accelerator", default="auto", help="Lightning's accelerator")
    parser.add_argument("--precision", default=None, help="Lightning's precision, e.g. bf16-mixed")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def _devices(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def lightning_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Trainer`` keyword arguments of the ``--devices``, ``--accelerator``, ``--precision``
    and ``--no-progress-bar`` flags (``predict`` and ``evaluate`` share them)."""
    flags: dict[str, Any] = {
        "devices": _devices(args.devices),
        "accelerator": args.accelerator,
        "enable_progress_bar": not args.no_progress_bar,
    }
    if args.precision is not None:
        flags["precision"] = args.precision
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-uda predict``; returns the exit status (1 when an input was skipped)."""
    parser = _parser()
    args = parser.parse_args(argv)
    trainer_kwargs = lightning_flags(args)
    try:
        with quiet_run():
            written, skipped = predict(
                args.checkpoint,
                args.inputs,
                args.out,
                inference=args.inference,
                window=args.window,
                stride=args.stride,
                scale=args.scale,
                label_ids=args.label_ids,
                confidence=args.confidence,
                alpha=args.alpha,
                trainer_kwargs=trainer_kwargs,
            )
    except (FileNotFoundError, NotALibraryCheckpointError, ValueError) as error:
        parser.exit(2, f"lightning-uda predict: error: {error}\n")
    print(
        f"wrote {len(written)} image(s) to {args.out}"
        + (f", skipped {len(skipped)}" if skipped else "")
    )
    return 1 if skipped else 0
