"""`MCCModule`: Minimum Class Confusion (Jin et al., ECCV 2020) for segmentation.

Algorithm per step (one line per yielded loss):
1. source CE on the labelled source batch;
2. target logits Z on a random subset of target pixels (``mcc_num_pixels`` per batch);
   Ŷ = softmax(Z / T), T = 2.5; per-pixel entropy H_i; weights
   w_i = N (1 + e^{-H_i}) / Σ_k (1 + e^{-H_k}) (detached); class confusion C = Ŷᵀ diag(w) Ŷ;
   C̃ = C with rows normalised to sum 1; MCC loss = λ · (Σ C̃ − tr C̃) / K.
λ = 1 (the paper's default for the UDA benchmarks).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_uda.methods.base import UDAModule


class MCCModule(UDAModule):
    """Source CE + λ · MCC on target pixels.

    MCC is implemented once, in :class:`UDAModule` (``mcc_weight``), so that any method can add
    it as a regulariser; this module is that base with MCC switched on at the paper's weight.

    Args:
        mcc_weight: λ (1.0). Must be positive (with 0 this would be :class:`SourceOnlyModule`).
        mcc_temperature: T (2.5 in the paper).
        mcc_num_pixels: target pixels sampled per batch (bounds the memory of the K×K confusion).
        **kwargs: the arguments of :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        mcc_weight: float = 1.0,
        mcc_temperature: float = 2.5,
        mcc_num_pixels: int = 4096,
        **kwargs: Any,
    ) -> None:
        if mcc_weight <= 0:
            raise ValueError(
                f"MCCModule needs mcc_weight > 0, got {mcc_weight}; use SourceOnlyModule for "
                "source-only training."
            )
        super().__init__(
            model,
            mcc_weight=mcc_weight,
            mcc_temperature=mcc_temperature,
            mcc_num_pixels=mcc_num_pixels,
            **kwargs,
        )
