"""What a checkpoint says about its run, for ``lightning-uda predict`` and ``evaluate``.

A Lightning checkpoint of a :class:`~lightning_uda.methods.UDAModule` holds the module's
constructor arguments (``hyper_parameters``: ``arch``, ``encoder``, ``num_classes``,
``model_kwargs``, ``normalization``, ``inference``, ``slide_window``, ``slide_stride``,
``align_corners``, ``class_names``) and its weights (``state_dict``, the student under
``model.``). What it does not hold is what the data told the run: the class names and palette
when they came from the datamodule, the input space when it came from the segmentor, the training
crop, and the scale at which the network saw its validation images. Those are written under
``checkpoint["run_info"]`` (:func:`run_info`, called when a checkpoint is saved) and read back
by :class:`CheckpointInfo`, which falls back to what older checkpoints hold: the hyper-parameters,
Cityscapes' names and palette for 19 classes, the slide window as the training crop, scale 1.

Depends on torch, numpy and the data tables only; nothing here imports Lightning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_uda.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from lightning_uda.normalization import InputNormalization, get_normalization

__all__ = [
    "RUN_INFO_KEY",
    "CheckpointInfo",
    "NotALibraryCheckpointError",
    "default_palette",
    "load_checkpoint",
    "run_info",
]

#: The checkpoint entry :func:`run_info` writes.
RUN_INFO_KEY = "run_info"
#: Hyper-parameters every UDAModule checkpoint holds; a file without them is not ours.
_REQUIRED_HPARAMS = ("num_classes", "arch")


class NotALibraryCheckpointError(ValueError):
    """A file that is not a checkpoint of a lightning_uda method (named in the message)."""


def default_palette(num_classes: int) -> np.ndarray:
    """``num_classes × 3`` uint8 colours: Cityscapes' for 19 classes, else evenly spread hues."""
    if num_classes == len(CITYSCAPES_PALETTE):
        return np.array(CITYSCAPES_PALETTE)
    from lightning_uda.data.folder import _default_palette

    return _default_palette(num_classes)


def _item_hw(item: Any, key: str) -> tuple[int, int] | None:
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, torch.Tensor) or value.ndim < 2:
        return None
    return int(value.shape[-2]), int(value.shape[-1])


def _data_info(datamodule: Any) -> dict[str, Any]:
    """Training crop and evaluation scale, read from one source and one val item."""
    info: dict[str, Any] = {}
    source, val = getattr(datamodule, "source", None), getattr(datamodule, "val", None)
    try:
        crop = _item_hw(source[0], "image") if source is not None else None
        if crop is not None:
            info["train_crop"] = list(crop)
        item = val[0] if val is not None else None
        image, mask = _item_hw(item, "image"), _item_hw(item, "mask")
        if image is not None and mask is not None and min(mask) > 0:
            # the val transform's resize: image rows per label row (0.5 for Cityscapes "full")
            info["eval_scale"] = image[0] / mask[0]
    except Exception:  # noqa: BLE001 (a dataset that cannot be read here must not stop a save)
        pass
    return info


def run_info(module: Any) -> dict[str, Any]:
    """The ``checkpoint["run_info"]`` entry of a :class:`~lightning_uda.methods.UDAModule`.

    Keys: ``class_names`` (list), ``palette`` (``C × 3`` ints), ``normalization`` (the fields of
    the module's :class:`~lightning_uda.normalization.InputNormalization`), and, when the module
    is attached to a trainer with a datamodule, ``train_crop`` (``[h, w]`` of a source training
    image) and ``eval_scale`` (val image height / val label height). The data part is computed
    once per module and kept (one source and one val item are read).
    """
    info: dict[str, Any] = {
        "class_names": list(module.class_names),
        "normalization": asdict(module.normalization),
    }
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    palette = getattr(datamodule, "palette", None) if datamodule is not None else None
    if palette is not None and len(palette) == len(info["class_names"]):
        info["palette"] = np.asarray(palette, dtype=np.uint8).tolist()
    if datamodule is not None:
        cached = getattr(module, "_run_data_info", None)
        if cached is None:
            cached = _data_info(datamodule)
            module._run_data_info = cached
        info.update(cached)
    return info


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint of a lightning_uda method (on the CPU).

    A checkpoint is a pickle: load only files you trust (as with Lightning itself).

    Raises:
        FileNotFoundError: no such file.
        NotALibraryCheckpointError: not a PyTorch file, or a checkpoint of something else (no
            ``state_dict`` with ``model.`` weights, or no ``num_classes``/``arch``
            hyper-parameters); the message names the file and what was missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 (pickle, zip and torch errors alike)
        raise NotALibraryCheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}: {error}). Pass a "
            "checkpoint written by `lightning-uda fit` or the example scripts (*.ckpt)."
        ) from None
    hint = (
        "predict and evaluate read checkpoints that Lightning writes for a lightning_uda method "
        "(`lightning-uda fit`, the example scripts, or Trainer.fit of a UDAModule)"
    )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise NotALibraryCheckpointError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' entry; a bare state dict or "
            f"another library's file?); {hint}."
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [k for k in _REQUIRED_HPARAMS if k not in hparams]
    if missing or not any(k.startswith("model.") for k in checkpoint["state_dict"]):
        what = f"hyper-parameters {missing}" if missing else "segmentor weights (model.*)"
        raise NotALibraryCheckpointError(
            f"{path} is a Lightning checkpoint but not of a lightning_uda method (no {what}); "
            f"{hint}."
        )
    return checkpoint


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pair(value: Any, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    values = [int(v) for v in value]
    return (values[0], values[1])


@dataclass
class CheckpointInfo:
    """Everything predict and evaluate need from a checkpoint, with fallbacks for old files.

    Attributes:
        path: the checkpoint file.
        hparams: its ``hyper_parameters``.
        class_names: ``C`` names indexed by train id.
        palette: ``C × 3`` uint8 colours.
        normalization: the input space (``None``: the segmentor's, else ImageNet; resolved by
            :meth:`build_segmentor`).
        inference: ``"whole"`` or ``"slide"`` (the module's evaluation mode).
        slide_window, slide_stride: the module's slide settings ``(h, w)``.
        train_crop: ``(h, w)`` of the training images (the slide window when not recorded).
        eval_scale: factor from label resolution to network input in the run's validation
            (1.0 when not recorded).
        align_corners: how logits are upsampled.
        recorded: the keys that came from ``checkpoint["run_info"]`` (the rest are fallbacks).
    """

    path: Path
    hparams: dict[str, Any]
    class_names: list[str]
    palette: np.ndarray
    normalization: InputNormalization | None
    inference: str
    slide_window: tuple[int, int]
    slide_stride: tuple[int, int]
    train_crop: tuple[int, int]
    eval_scale: float
    align_corners: bool
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    recorded: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.class_names)

    @property
    def is_cityscapes(self) -> bool:
        """Whether the classes are Cityscapes' 19 train classes (label-id export possible)."""
        return self.class_names == CITYSCAPES_CLASSES

    @classmethod
    def from_file(cls, path: str | Path) -> CheckpointInfo:
        """Read ``path`` (see :func:`load_checkpoint` for the errors)."""
        checkpoint = load_checkpoint(path)
        return cls.from_checkpoint(checkpoint, Path(path))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], path: Path) -> CheckpointInfo:
        """The info of a loaded checkpoint (``run_info`` where recorded, else fallbacks)."""
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        recorded_info = dict(checkpoint.get(RUN_INFO_KEY) or {})
        num_classes = int(hparams["num_classes"])
        names = recorded_info.get("class_names") or hparams.get("class_names")
        if names is None or len(names) != num_classes:
            names = (
                list(CITYSCAPES_CLASSES)
                if num_classes == len(CITYSCAPES_CLASSES)
                else [f"class {i}" for i in range(num_classes)]
            )
        names = [str(n) for n in names]
        palette = recorded_info.get("palette")
        if palette is None or len(palette) != num_classes:
            palette = (
                np.array(CITYSCAPES_PALETTE)
                if names == CITYSCAPES_CLASSES
                else default_palette(num_classes)
            )
        space = recorded_info.get("normalization")
        normalization = (
            InputNormalization(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()}
            )
            if isinstance(space, dict)
            else (
                get_normalization(hparams["normalization"])
                if hparams.get("normalization") is not None
                else None
            )
        )
        window = _pair(hparams.get("slide_window"), (512, 512))
        stride = _pair(hparams.get("slide_stride"), (341, 341))
        scale = float(recorded_info.get("eval_scale", 1.0))
        if not math.isfinite(scale) or scale <= 0:
            scale = 1.0
        return cls(
            path=path,
            hparams=hparams,
            class_names=names,
            palette=np.asarray(palette, dtype=np.uint8).reshape(-1, 3),
            normalization=normalization,
            inference=str(hparams.get("inference", "whole")),
            slide_window=window,
            slide_stride=stride,
            train_crop=_pair(recorded_info.get("train_crop"), window),
            eval_scale=scale,
            align_corners=bool(hparams.get("align_corners", False)),
            state_dict=checkpoint["state_dict"],
            recorded=tuple(sorted(recorded_info)),
        )

    def build_segmentor(self) -> nn.Module:
        """The student segmentor with the checkpoint's weights (``model.*``), in eval mode.

        Built from ``arch``/``encoder``/``model_kwargs`` with no initial weights (nothing is
        downloaded or read besides the checkpoint); :attr:`normalization` is resolved from the
        segmentor when the run took its space from it.

        Raises:
            NotALibraryCheckpointError: the weights do not fit the architecture (e.g. a run that
                passed its own ``model=`` object, which a checkpoint cannot rebuild).
        """
        from lightning_uda.models import build_segmentor

        hp = self.hparams
        model = build_segmentor(
            hp["arch"],
            num_classes=self.num_classes,
            encoder=hp.get("encoder"),
            encoder_weights=None,
            checkpoint=None,
            **dict(hp.get("model_kwargs") or {}),
        )
        weights = {
            k[len("model.") :]: v for k, v in self.state_dict.items() if k.startswith("model.")
        }
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise NotALibraryCheckpointError(
                f"{self.path}: its weights do not fit the {hp['arch']!r} segmentor its "
                f"hyper-parameters describe ({first}). A run started with its own model= object "
                "cannot be rebuilt from the checkpoint: build that model in Python and load the "
                "'model.' weights of the state dict."
            ) from None
        if self.normalization is None:
            self.normalization = get_normalization(getattr(model, "input_normalization", None))
        return model.eval()
