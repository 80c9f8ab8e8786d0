"""`EMATeacher`: keeps ``pl_module.teacher`` an exponential moving average of the student."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

BufferMode = Literal["copy", "average", "none"]


def ema_coefficient(update: int, alpha: float, warmup: bool = True) -> float:
    """Teacher weight of the ``update``-th EMA update (0-based).

    With warm-up (DACS' ``update_ema_variables``) the coefficient is ``min(1 - 1/(t+1), alpha)``:
    0 at the first update (the teacher becomes a copy of the student), then 1/2, 2/3, ... until it
    reaches ``alpha``. Without warm-up it is ``alpha`` throughout.
    """
    return min(1.0 - 1.0 / (update + 1), alpha) if warmup else alpha


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, coefficient: float, buffers: BufferMode = "copy"
) -> None:
    """In-place ``teacher = coefficient * teacher + (1 - coefficient) * student``.

    Parameters are averaged with ``torch._foreach_*`` (one fused kernel per list rather than a
    Python loop of small kernels). Buffers (BatchNorm statistics) are copied from the student,
    averaged like parameters (floating-point buffers only; counters are copied), or left alone.
    """
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            "EMATeacher: teacher and student have different parameter lists "
            f"({len(teacher_params)} vs {len(student_params)}); the teacher must be a copy of "
            "pl_module.model (e.g. copy.deepcopy(model))."
        )
    torch._foreach_mul_(teacher_params, coefficient)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - coefficient)
    if buffers == "none":
        return
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        if buffers == "average" and t_buf.is_floating_point():
            t_buf.mul_(coefficient).add_(s_buf, alpha=1.0 - coefficient)
        else:
            t_buf.copy_(s_buf)


class EMATeacher(Callback):
    """Update ``pl_module.teacher`` from ``pl_module.model`` after each real optimiser step.

    A "real" step is one where the segmentor's optimiser stepped: the callback follows
    ``pl_module.uda_step`` (the step counter of :class:`~lightning_uda.methods.UDAModule`) or, for
    other modules, ``trainer.global_step``; so gradient accumulation (no step on most batches) and
    several optimisers (several global steps per batch) each give exactly one update per segmentor
    step. The teacher lives on the module (checkpointed and moved with it, never trained); this
    callback only stores its update count.

    Args:
        alpha: EMA decay (0.99 in DACS, 0.999 in DAFormer).
        warmup: use ``min(1 - 1/(t+1), alpha)`` (DACS) instead of a constant ``alpha``.
        buffers: "copy" student buffers, "average" them like parameters, or "none".
    """

    def __init__(self, alpha: float = 0.99, warmup: bool = True, buffers: BufferMode = "copy"):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMATeacher alpha must be in [0, 1), got {alpha}")
        if buffers not in ("copy", "average", "none"):
            raise ValueError(
                f"EMATeacher buffers must be 'copy', 'average' or 'none', got {buffers!r}"
            )
        self.alpha = alpha
        self.warmup = warmup
        self.buffers = buffers
        self.updates = 0
        self._last_step = 0

    @staticmethod
    def _step(trainer: Trainer, pl_module: LightningModule) -> int:
        return int(getattr(pl_module, "uda_step", trainer.global_step))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if not isinstance(teacher, nn.Module) or not isinstance(
            getattr(pl_module, "model", None), nn.Module
        ):
            raise TypeError(
                f"EMATeacher needs pl_module.model and pl_module.teacher (nn.Modules); "
                f"{type(pl_module).__name__} has no teacher. Use a self-training method "
                "(DACSModule, ClassMixModule) or create self.teacher = copy.deepcopy(self.model) "
                "with requires_grad_(False) in your module's __init__."
            )
        if any(p.requires_grad for p in teacher.parameters()):
            raise ValueError(
                "pl_module.teacher has parameters with requires_grad=True; call "
                "teacher.requires_grad_(False) in __init__ so it never receives gradients and "
                "DDP leaves it out of its gradient buckets."
            )
        self._last_step = self._step(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._step(trainer, pl_module)
        if step <= self._last_step:
            return  # accumulating: no optimiser step on this batch
        self._last_step = step
        coefficient = ema_coefficient(self.updates, self.alpha, self.warmup)
        ema_update(pl_module.teacher, pl_module.model, coefficient, buffers=self.buffers)
        if self.buffers != "none" and trainer.world_size > 1:
            self._broadcast_buffers(pl_module.teacher)
        # The student was checked after its step; the teacher is checked here, before Lightning's
        # checkpoint callbacks (always run last) can save it.
        check = getattr(pl_module, "check_finite_state", None)
        if check is not None:
            check("teacher")
        self.updates += 1
        pl_module.log("train/ema_alpha", coefficient, batch_size=1)

    @staticmethod
    @torch.no_grad()
    def _broadcast_buffers(teacher: nn.Module) -> None:
        # Parameters are identical on every rank (DDP all-reduces gradients), but each rank's
        # student BatchNorm statistics come from its own shard. DDP treats rank 0's buffers as
        # the truth (broadcast_buffers); do the same for the teacher so ranks never disagree.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for buffer in teacher.buffers():
                dist.broadcast(buffer, src=0)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self._last_step = int(state_dict["last_step"])
