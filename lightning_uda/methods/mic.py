"""`MICModule`: Masked Image Consistency (Hoyer et al., CVPR 2023) on DACS-style self-training.

Algorithm per step (one line per yielded loss), on top of :class:`DACSModule`:
1. source CE;
2. teacher pseudo-labels ŷ and weight q on the un-augmented target (as DACS);
3. DACS' mixed loss on source classes pasted onto the target;
4. MIC: the target images, colour-augmented on their own, are blanked on random square blocks
   (block 64 px, 70% of the blocks masked); the student's weighted CE against ŷ (weights q) on
   the masked images, λ = 1.
The EMA teacher uses DAFormer's α = 0.999 and class choice (each image draws among the classes of
the whole batch, void included).

Where this differs from MIC's code: MIC runs on DAFormer (MiT-B5, rare-class sampling, ImageNet
feature distance, pseudo-label crop, AdamW with warm-up), which this module does not bring by
itself — it is the masked consistency on the library's DACS. Any self-training module gets the
same loss with ``masked_consistency_weight=...``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_uda.methods.dacs import DACSModule


class MICModule(DACSModule):
    """DACS + MIC's masked image consistency loss (weight 1, block 64, ratio 0.7, α 0.999).

    Args:
        masked_consistency_weight: λ of the masked loss (1 in MIC).
        mask_block_size: block side in pixels (64 at 512×512 crops; scale it with the crop).
        mask_ratio: masked fraction of the blocks (0.7).
        ema_alpha: teacher EMA decay (DAFormer/MIC: 0.999).
        mix_mode: class choice (DAFormer/MIC: "batch_union").
        mix_include_ignore: void among the class candidates (DAFormer/MIC: True).
        **kwargs: see :class:`DACSModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        masked_consistency_weight: float = 1.0,
        mask_block_size: int = 64,
        mask_ratio: float = 0.7,
        ema_alpha: float = 0.999,
        mix_mode: str = "batch_union",
        mix_include_ignore: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            masked_consistency_weight=masked_consistency_weight,
            mask_block_size=mask_block_size,
            mask_ratio=mask_ratio,
            ema_alpha=ema_alpha,
            mix_mode=mix_mode,
            mix_include_ignore=mix_include_ignore,
            **kwargs,
        )
