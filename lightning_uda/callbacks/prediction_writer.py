"""Prediction writers: one PNG per image, in the format each benchmark's server reads.

- **Cityscapes** (:class:`CityscapesPredictionWriter`): the official evaluation
  (``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``) and the benchmark server read
  *label ids* (not train ids), one ``<frame>_pred_labelIds.png`` per image; train-id predictions
  are mapped back with the inverse table.
- **ACDC** and **Dark Zurich** (:class:`BenchmarkPredictionWriter` with ``benchmark="acdc"`` /
  ``"darkzurich"``): their servers read **train ids** (0..18) at the input resolution
  (1920×1080), one PNG named like its image. This is what MIC's code writes for them (its
  ``tools/test.py --format-only`` with ``to_label_id=False``, ``imgfile_prefix=labelTrainIds``)
  and what the ACDC submission page asks for; write Cityscapes-style label ids only for
  Cityscapes.

The maps have the original image size when the dataset yields ``orig_size`` (our datasets do with
``return_meta=True``, which ``UDADataModule.predict_dataloader`` switches on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from lightning_uda.data.labels import TRAIN_ID_TO_CITYSCAPES_ID

__all__ = [
    "BENCHMARK_FORMATS",
    "BenchmarkPredictionWriter",
    "CityscapesPredictionWriter",
    "PredictionFormat",
    "train_ids_to_label_ids",
]


def train_ids_to_label_ids(pred: torch.Tensor | np.ndarray) -> np.ndarray:
    """``H×W`` train ids (0..18, 255) → ``H×W`` uint8 Cityscapes label ids (255 → 0)."""
    ids = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    return np.asarray(TRAIN_ID_TO_CITYSCAPES_ID, dtype=np.uint8)[ids.astype(np.int64)]


class PredictionFormat(NamedTuple):
    """How one benchmark wants its predictions.

    Attributes:
        label_ids: ``True``: Cityscapes label ids; ``False``: train ids.
        strip_suffix: image-name ending removed before ``suffix`` is added.
        suffix: appended to the (stripped) image stem, before ``.png``.
    """

    label_ids: bool
    strip_suffix: str
    suffix: str


#: Benchmark → format of its server's submissions.
BENCHMARK_FORMATS: dict[str, PredictionFormat] = {
    "cityscapes": PredictionFormat(True, "_leftImg8bit", "_pred_labelIds"),
    "acdc": PredictionFormat(False, "", ""),
    "darkzurich": PredictionFormat(False, "", ""),
}


class BenchmarkPredictionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` outputs (``{"pred", "path"}``) to ``output_dir`` as a
    benchmark's server expects them (see the module docstring).

    ``GOPR0475_frame_000041_rgb_anon.png`` becomes ``output_dir/GOPR0475_frame_000041_rgb_anon.png``
    (train ids) for ``"acdc"``; ``frankfurt_000000_000294_leftImg8bit.png`` becomes
    ``output_dir/frankfurt_000000_000294_pred_labelIds.png`` (label ids) for ``"cityscapes"``.

    Args:
        output_dir: folder for the PNGs (created).
        benchmark: a key of :data:`BENCHMARK_FORMATS`.

    Raises:
        ValueError: an unknown benchmark (the known ones are listed).
    """

    def __init__(self, output_dir: str | Path, benchmark: str = "cityscapes") -> None:
        super().__init__(write_interval="batch")
        if benchmark not in BENCHMARK_FORMATS:
            raise ValueError(
                f"{type(self).__name__}: unknown benchmark {benchmark!r}; choose one of "
                f"{list(BENCHMARK_FORMATS)}"
            )
        self.output_dir = Path(output_dir)
        self.benchmark = benchmark
        self.format = BENCHMARK_FORMATS[benchmark]

    def output_name(self, path: str | None, fallback: str) -> str:
        """The PNG's name for the image at ``path`` (``fallback`` stem when there is none)."""
        if path is None:
            return f"{fallback}{self.format.suffix}.png"
        stem = Path(path).stem.removesuffix(self.format.strip_suffix)
        return f"{stem}{self.format.suffix}.png"

    def encode(self, pred: torch.Tensor) -> np.ndarray:
        """``H×W`` train-id prediction → the uint8 array written."""
        if self.format.label_ids:
            return train_ids_to_label_ids(pred)
        return pred.cpu().numpy().astype(np.uint8)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = prediction.get("path") or [None] * len(prediction["pred"])
        for i, (pred, path) in enumerate(zip(prediction["pred"], paths, strict=True)):
            name = self.output_name(path, f"rank{trainer.global_rank}_batch{batch_idx}_{i}")
            Image.fromarray(self.encode(pred)).save(self.output_dir / name)


class CityscapesPredictionWriter(BenchmarkPredictionWriter):
    """Cityscapes label-id PNGs: ``frankfurt_000000_000294_leftImg8bit.png`` becomes
    ``output_dir/frankfurt_000000_000294_pred_labelIds.png`` (label ids, full resolution when the
    dataset yields ``orig_size``, e.g. ``Cityscapes(..., return_meta=True)``).

    Args:
        output_dir: folder for the PNGs (created).
        label_ids: write Cityscapes label ids (default); ``False`` writes train ids.
    """

    def __init__(self, output_dir: str | Path, label_ids: bool = True) -> None:
        super().__init__(output_dir, benchmark="cityscapes")
        self.label_ids = label_ids
        self.format = self.format._replace(label_ids=label_ids)

    @staticmethod
    def output_name(path: str | None, fallback: str) -> str:
        """``<stem without _leftImg8bit>_pred_labelIds.png`` (``fallback`` when no path)."""
        if path is None:
            return f"{fallback}_pred_labelIds.png"
        return f"{Path(path).stem.removesuffix('_leftImg8bit')}_pred_labelIds.png"
