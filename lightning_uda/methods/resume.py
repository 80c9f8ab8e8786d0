"""`ExactResume`: what a checkpoint carries so that a resumed run continues bit-identically.

Lightning checkpoints the weights, optimisers, schedulers and the loop position. A UDA run needs
more to continue exactly where it stopped:

- the module's step counter and the number of batches accumulated into the current step;
- the random state of every rank: the module's own generator (mixing masks, augmentation) and
  torch's global one (dropout), gathered from all ranks because the checkpoint is written by
  rank 0 only;
- every rank's BatchNorm statistics: under DDP each rank updates its running statistics from its
  own shard, so the ranks' buffers differ and the state dict holds rank 0's only (with
  ``SyncBatchNorm`` the copies are equal and this costs one small gather).

They are stored under ``checkpoint["uda"]``. A checkpoint without that entry (e.g. of a plain
LightningModule) loads its weights only.

A mixin of :class:`~lightning_uda.methods.UDAModule`, which owns ``uda_step``, ``_accumulated``
and ``rng``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_uda.optim import FoldingSGD


class ExactResume:
    """Mixin of :class:`~lightning_uda.methods.UDAModule`: the ``"uda"`` checkpoint entry."""

    def _gather_rank_states(self, state: Tensor) -> list[Tensor]:
        """Every rank's copy of a CPU ``uint8`` RNG state (the checkpoint is written by rank 0).

        Each state is cloned into its own storage: ``all_gather`` returns one stacked tensor, and
        its rows saved as they are come back from ``torch.load`` as views of one shared storage,
        which ``torch.Generator.set_state`` misreads (``Invalid mt19937 state``, or a segfault).
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return [state.clone()]
        gathered = self.all_gather(state.to(self.device))
        return [s.cpu().clone() for s in gathered]

    def _gather_rank_buffers(self) -> dict[str, Any] | None:
        """Every rank's floating-point segmentor buffers (BatchNorm statistics), flattened."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        named = [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]
        if not named:
            return None
        flat = torch.cat([b.detach().reshape(-1).float() for _, b in named])
        gathered = self.all_gather(flat)
        return {"names": [n for n, _ in named], "values": [v.cpu().clone() for v in gathered]}

    def resume_state(self) -> dict[str, Any]:
        """The ``checkpoint["uda"]`` entry (called on every rank: it gathers across them)."""
        return {
            "uda_step": self.uda_step,
            "accumulated": self._accumulated,
            "rng": self._gather_rank_states(self.rng.get_state()),
            "torch_rng": self._gather_rank_states(torch.get_rng_state()),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "rank_buffers": self._gather_rank_buffers(),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse non-finite folded gradients, then write :meth:`resume_state` (every rank)."""
        trainer = self._trainer
        for optimizer in trainer.optimizers if trainer is not None else []:
            # between accumulated batches the momentum buffers hold folded partial sums
            if isinstance(optimizer, FoldingSGD) and not optimizer.folded_sums_finite():
                raise FloatingPointError(
                    f"{type(self).__name__}: the gradients folded since optimiser step "
                    f"{self.uda_step} hold NaN or inf, so this checkpoint is not written. "
                    f"{self.last_good_checkpoint()} Lower the learning rate or check the "
                    "inputs, and resume from that checkpoint."
                )
        checkpoint["uda"] = self.resume_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("uda")
        if state is None:  # e.g. a checkpoint of a plain LightningModule: weights only
            return
        self.uda_step = int(state["uda_step"])
        self._accumulated = int(state["accumulated"])
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank < len(state["rng"]):
            # clone: a state loaded from an older checkpoint may still be a view (see above)
            self.rng.set_state(state["rng"][rank].clone().contiguous())
            torch.set_rng_state(state["torch_rng"][rank].clone().contiguous())
            self._rng_restored = True
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        buffers = state.get("rank_buffers")
        if buffers is not None and rank < len(buffers["values"]):
            # Applied at the start of the first training step: DDP broadcasts rank 0's buffers
            # when it wraps the module and again in its first forward, both after this hook.
            self._pending_rank_buffers = (buffers["names"], buffers["values"][rank])

    def restore_rank_buffers(self) -> None:
        """Apply this rank's BatchNorm statistics from the checkpoint (first training step)."""
        pending = getattr(self, "_pending_rank_buffers", None)
        if pending is None:
            return
        self._pending_rank_buffers = None
        names, flat = pending
        own = dict(self.model.named_buffers())
        if [n for n in names if n not in own] or sum(own[n].numel() for n in names) != len(flat):
            return  # a different architecture: keep the state dict's (rank 0's) statistics
        offset = 0
        with torch.no_grad():
            for name in names:
                buffer = own[name]
                size = buffer.numel()
                buffer.copy_(flat[offset : offset + size].view_as(buffer).to(buffer))
                offset += size
