"""Lightning callbacks: the EMA teacher, pseudo-label thresholding, prediction export, panels,
label-free validation signals, the whole-run progress bar, the last-step validation and SLURM's
requeue at a step boundary."""

from lightning_uda.callbacks.checkpoint import (
    CheckpointError,
    ChecksummedCheckpointIO,
    file_digest,
    verify_checkpoint,
)
from lightning_uda.callbacks.ema import EMATeacher, ema_coefficient, ema_update
from lightning_uda.callbacks.last_step import ValidateLastStep
from lightning_uda.callbacks.panels import SegmentationPanels
from lightning_uda.callbacks.prediction_writer import (
    BenchmarkPredictionWriter,
    CityscapesPredictionWriter,
    train_ids_to_label_ids,
)
from lightning_uda.callbacks.preemption import SlurmRequeue
from lightning_uda.callbacks.progress import RunProgressBar
from lightning_uda.callbacks.pseudo_label import PseudoLabelThreshold
from lightning_uda.callbacks.unsupervised_validation import UnsupervisedValidation

__all__ = [
    "CheckpointError",
    "ChecksummedCheckpointIO",
    "file_digest",
    "verify_checkpoint",
    "BenchmarkPredictionWriter",
    "CityscapesPredictionWriter",
    "EMATeacher",
    "PseudoLabelThreshold",
    "RunProgressBar",
    "SegmentationPanels",
    "SlurmRequeue",
    "UnsupervisedValidation",
    "ValidateLastStep",
    "ema_coefficient",
    "ema_update",
    "train_ids_to_label_ids",
]
