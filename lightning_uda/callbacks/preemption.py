"""`SlurmRequeue`: SLURM's pre-emption signal checkpoints at a step boundary, then requeues.

Lightning detects SLURM itself (``SLURMEnvironment``, with ``auto_requeue=True`` by default) and
installs a handler for its requeue signal (``SIGUSR1``; ``#SBATCH --signal=USR1@120`` asks SLURM
to send it two minutes before the time limit): the handler writes ``hpc_ckpt_<n>.ckpt`` into
``trainer.default_root_dir`` and runs ``scontrol requeue $SLURM_JOB_ID``. When the requeued job
starts, ``Trainer.fit`` without a ``ckpt_path`` finds the newest ``hpc_ckpt_<n>.ckpt`` there and
resumes from it (Lightning's ``ckpt_path="hpc"``) — no ``--resume`` needed.

Left as it is, that handler runs wherever the signal interrupts Python: in the middle of a
training step (the weights updated but not the EMA teacher, the step counter, or the data
position), and on each rank at a different point — while the checkpoint gathers every rank's
random state (exact resume, ``checkpoint["uda"]``), a collective that then deadlocks or mixes
steps. This callback keeps Lightning's handler but runs it at the next batch boundary, on every
rank at once:

1. on the signal it only notes it (the handler Lightning installed is kept aside);
2. at the end of each training batch — after every other callback's end of batch, the EMA
   teacher's update and the checkpoint callbacks included (it moves itself to the end of
   ``trainer.callbacks`` in ``setup``) — the ranks agree whether any of them got it (one boolean
   all-reduce per step, only in SLURM runs with auto-requeue);
3. then every parameter and buffer is checked finite (a diverged state is never written: the
   error names the first bad tensor), and Lightning's handler runs: the checkpoint goes through
   the Trainer's checkpoint plugin (``ChecksummedCheckpointIO`` in the recipes: a SHA-256 digest
   beside it, verified on resume) with the exact-resume state of a finished step, and rank 0
   requeues the job. The run goes on until SLURM stops it (as with Lightning's own handler: if the
   requeue failed, nothing is lost by training on).

Outside SLURM (or with ``SLURMEnvironment(auto_requeue=False)``) it does nothing.
"""

from __future__ import annotations

import signal
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["SlurmRequeue"]


def _cluster_environment(trainer: Trainer) -> Any:
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:  # single-device strategies keep it on the connector only
        environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    return environment


class SlurmRequeue(Callback):
    """Defers Lightning's SLURM requeue handler (checkpoint + ``scontrol requeue``) to the next
    training-batch boundary, agreed across ranks, after checking the state finite."""

    def __init__(self) -> None:
        self._signal: int | None = None
        self._handler: Any = None
        self._signum: int | None = None

    @property
    def active(self) -> bool:
        """Whether the signal is being watched (a SLURM run with auto-requeue, during fit)."""
        return self._signum is not None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Last, after the module's own callbacks (EMATeacher) and the checkpoint callbacks that
        # Lightning puts at the end. A new list: the loop calling this hook keeps the old one.
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        environment = _cluster_environment(trainer)
        if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        signum = environment.requeue_signal or signal.SIGUSR1
        handler = signal.getsignal(signum)
        if not callable(handler):  # Lightning installed none (e.g. another handler was there)
            return
        self._signum, self._handler, self._signal = int(signum), handler, None
        signal.signal(signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self._signal = signum

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.active:
            return
        received = self._signal is not None
        if not trainer.strategy.reduce_boolean_decision(received, all=False):
            return
        self._signal = None
        from lightning_uda.methods.guards import first_non_finite  # methods import callbacks

        bad = first_non_finite(pl_module)
        if bad is not None:
            raise FloatingPointError(
                f"SLURM requeue signal at step {trainer.global_step}: {bad} holds NaN or inf, so "
                "no checkpoint is written and the job is not requeued. Resume from the newest "
                "checkpoint in the run's folder with a lower learning rate."
            )
        rank_zero_info(
            f"SLURM requeue signal: checkpointing step {trainer.global_step} in "
            f"{trainer.default_root_dir} and requeueing the job"
        )
        self._handler(self._signum, None)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active and signal.getsignal(self._signum) == self._note:
            signal.signal(self._signum, self._handler)
        self._signum = self._handler = None
