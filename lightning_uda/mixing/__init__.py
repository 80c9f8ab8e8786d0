"""Mixing (torch only): ClassMix masks and mixing, DACS strong augmentation, MIC masks, ViT
token masks, FDA."""

from __future__ import annotations

from lightning_uda.mixing.augment import (
    AUGMENT_DECISIONS,
    JITTER_SEMANTICS,
    AugmentParams,
    StrongAugment,
    blur_kernel_size,
)
from lightning_uda.mixing.classmix import MIX_MODES, class_mix_mask, mix
from lightning_uda.mixing.fda import (
    fda_low_frequency_mask,
    fda_window_size,
    fourier_domain_adaptation,
)
from lightning_uda.mixing.masking import block_mask
from lightning_uda.mixing.token_masking import apply_token_mask, random_token_mask

__all__ = [
    "AUGMENT_DECISIONS",
    "JITTER_SEMANTICS",
    "MIX_MODES",
    "AugmentParams",
    "StrongAugment",
    "apply_token_mask",
    "block_mask",
    "blur_kernel_size",
    "class_mix_mask",
    "fda_low_frequency_mask",
    "fda_window_size",
    "fourier_domain_adaptation",
    "mix",
    "random_token_mask",
]
