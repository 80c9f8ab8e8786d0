"""`SourceOnlyModule`: supervised training on the source domain only (no adaptation)."""

from __future__ import annotations

from lightning_uda.methods.base import UDAModule


class SourceOnlyModule(UDAModule):
    """Source cross-entropy only; the target batch is ignored (unless ``mcc_weight > 0``).

    The lower bound of every adaptation table. GTA5→Cityscapes with DeepLabV2-R101, AdvEnt reports
    36.6 mIoU for it trained on whole 1280×720 frames (ImageNet init, full-resolution evaluation);
    the DACS crop recipe's source-only baseline is a different number (see the README's recipe
    tables).
    Trained on labelled *target* data instead (e.g. ``demo_datamodule(oracle=True)``), the same
    module gives the oracle upper bound. All arguments are those of :class:`UDAModule`.
    """
