"""`MinEntModule`: direct entropy minimisation on the target (Vu et al., AdvEnt, CVPR 2019, §3.1).

Algorithm per step (one line per yielded loss):
1. source CE on the labelled source batch (+ 0.1 × the auxiliary output's CE for a multi-level
   segmentor);
2. target logits, interpolated to the input size, softmax P_t;
   entropy loss = λ_ent · mean over pixels of Σ_c I_t, with I_t = -P_t·log2(P_t) / log2(K)
   (+ λ_ent_aux × the same for the auxiliary output).
λ_ent = 0.001 and λ_ent_aux = 0.0002 (AdvEnt's ``LAMBDA_ENT_MAIN`` / ``LAMBDA_ENT_AUX``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_uda.losses import entropy_loss
from lightning_uda.methods.base import Losses, check_range
from lightning_uda.methods.multi_level import MultiLevelModule


class MinEntModule(MultiLevelModule):
    """Source CE + λ_ent · entropy of the target softmax (MinEnt).

    Override :meth:`target_entropy` for a variant (e.g. a weighted or thresholded entropy).

    Args:
        ent_weight: λ_ent of the main output (0.001 in AdvEnt).
        aux_ent_weight: λ_ent of the auxiliary output of a multi-level segmentor (0.0002).
        **kwargs: see :class:`MultiLevelModule` (``aux_seg_weight``) and :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        ent_weight: float = 1e-3,
        aux_ent_weight: float = 2e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        check_range(type(self).__name__, "ent_weight", ent_weight, 0)
        check_range(type(self).__name__, "aux_ent_weight", aux_ent_weight, 0)
        self.ent_weights = {"main": ent_weight, "aux": aux_ent_weight}

    def target_entropy(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Scalar MinEnt loss of ``B×K×h×w`` target logits, upsampled to ``size`` first."""
        return entropy_loss(torch.softmax(self.upsample(logits, size), dim=1))

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        yield from super().adaptation_losses(batch)
        images = batch["target"]["image"]
        size = tuple(images.shape[-2:])
        loss = torch.zeros((), device=images.device)
        for level, logits in self.level_logits(images).items():
            entropy = self.target_entropy(logits, size)
            self.log(f"train/entropy_{level}", entropy.detach(), batch_size=images.shape[0])
            loss = loss + self.ent_weights[level] * entropy
        yield "entropy", loss
