"""`CityscapesPredictionWriter`: write predictions as Cityscapes labelId PNGs.

The official Cityscapes evaluation (``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``) and
the benchmark server read one PNG per image holding *label ids* (not train ids), named after the
image. This writer maps the module's train-id predictions back with the inverse table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from lightning_uda.data.labels import TRAIN_ID_TO_CITYSCAPES_ID


def train_ids_to_label_ids(pred: torch.Tensor | np.ndarray) -> np.ndarray:
    """``H×W`` train ids (0..18, 255) → ``H×W`` uint8 Cityscapes label ids (255 → 0)."""
    ids = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    return np.asarray(TRAIN_ID_TO_CITYSCAPES_ID, dtype=np.uint8)[ids.astype(np.int64)]


class CityscapesPredictionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` outputs (``{"pred", "path"}``) to ``output_dir``.

    ``frankfurt_000000_000294_leftImg8bit.png`` becomes
    ``output_dir/frankfurt_000000_000294_pred_labelIds.png`` (label ids, full resolution when the
    dataset yields ``orig_size``, e.g. ``Cityscapes(..., return_meta=True)``).

    Args:
        output_dir: folder for the PNGs (created).
        label_ids: write Cityscapes label ids (default); ``False`` writes train ids.
    """

    def __init__(self, output_dir: str | Path, label_ids: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.label_ids = label_ids

    @staticmethod
    def output_name(path: str | None, fallback: str) -> str:
        """``<stem without _leftImg8bit>_pred_labelIds.png`` (``fallback`` when no path)."""
        if path is None:
            return f"{fallback}_pred_labelIds.png"
        stem = Path(path).stem.removesuffix("_leftImg8bit")
        return f"{stem}_pred_labelIds.png"

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
            array = (
                train_ids_to_label_ids(pred)
                if self.label_ids
                else pred.cpu().numpy().astype(np.uint8)
            )
            name = self.output_name(path, f"rank{trainer.global_rank}_batch{batch_idx}_{i}")
            Image.fromarray(array).save(self.output_dir / name)
