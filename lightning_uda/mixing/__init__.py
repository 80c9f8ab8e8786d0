"""Mixing (torch only): ClassMix masks, mask-based mixing, DACS strong augmentation."""

from __future__ import annotations

from lightning_uda.mixing.augment import AugmentParams, StrongAugment, blur_kernel_size
from lightning_uda.mixing.classmix import class_mix_mask, mix

__all__ = ["AugmentParams", "StrongAugment", "blur_kernel_size", "class_mix_mask", "mix"]
