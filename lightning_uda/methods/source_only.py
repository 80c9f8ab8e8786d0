"""`SourceOnlyModule`: supervised training on the source domain only (no adaptation)."""

from __future__ import annotations

from lightning_uda.methods.base import UDAModule


class SourceOnlyModule(UDAModule):
    """Source cross-entropy only; the target batch is ignored (unless ``mcc_weight > 0``).

    The lower bound of every table in DESIGN.md §4 (GTA5→Cityscapes, DeepLabV2-R101: ≈36.6 mIoU).
    Trained on labelled *target* data instead (e.g. ``demo_datamodule(oracle=True)``), the same
    module gives the oracle upper bound. All arguments are those of :class:`UDAModule`.
    """
