"""VFM-UDA++'s feature distillation loss: student features against a frozen foundation model."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["feature_distillation_loss"]


def feature_distillation_loss(
    student: Tensor, teacher: Tensor, smooth_l1_share: float = 0.0
) -> Tensor:
    """Mean over pixels of ``(1 − s)·(1 − cos(student, teacher)) + s·smoothL1`` (channel mean).

    Args:
        student: ``B×C×h×w`` projected student features.
        teacher: ``B×C×h×w`` frozen features (no gradient flows into them).
        smooth_l1_share: s. 0 gives the plain ``1 − cosine similarity``; VFM-UDA++'s code uses
            0.1 (a 0.1 share of the smooth-L1 distance, averaged over channels).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and frozen features "
            f"{tuple(teacher.shape)} differ in shape"
        )
    teacher = teacher.detach().to(student.dtype)
    cosine = 1.0 - F.cosine_similarity(student, teacher, dim=1)
    if smooth_l1_share == 0:
        return cosine.mean()
    l1 = F.smooth_l1_loss(student, teacher, reduction="none").mean(dim=1)
    return ((1.0 - smooth_l1_share) * cosine + smooth_l1_share * l1).mean()
