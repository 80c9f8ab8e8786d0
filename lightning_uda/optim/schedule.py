"""The per-iteration poly learning-rate schedule with an optional linear warm-up."""

from __future__ import annotations


def poly_lr_factor(
    step: int,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
) -> float:
    """Learning-rate multiplier of the poly schedule, ``(1 - step/total)**power``.

    DACS and AdvEnt decay the learning rate per iteration with power 0.9. ``warmup_steps`` adds a
    linear warm-up, in one of two forms:

    - ``warmup_ratio=None`` (default): the factor is ``(step + 1) / warmup_steps`` for the first
      ``warmup_steps`` steps, then the poly factor of the *current* step (so the peak is slightly
      below 1 when the warm-up ends: ``(1 - warmup/total)**power``).
    - ``warmup_ratio=r``: mmcv's linear warm-up (DAFormer's ``poly10warm``: 1,500 steps,
      r = 1e-6, power 1): the poly factor of the current step times
      ``1 - (1 - step/warmup_steps) · (1 - r)``, which starts at ``r`` and reaches the poly value
      exactly at the end of the warm-up.

    Args:
        step: optimiser steps taken so far (0-based).
        total_steps: the number of steps of the whole run.
        power: the poly exponent.
        warmup_steps: length of the linear warm-up (0 = none).
        warmup_ratio: starting fraction of mmcv's warm-up, or ``None`` for the first form.
    """
    poly = max(0.0, 1.0 - step / max(1, total_steps)) ** power
    if warmup_steps > 0 and step < warmup_steps:
        if warmup_ratio is None:
            return (step + 1) / warmup_steps
        return poly * (1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio))
    return poly
