"""Lightning callbacks: the EMA teacher, pseudo-label thresholding, prediction export, panels."""

from lightning_uda.callbacks.ema import EMATeacher, ema_coefficient, ema_update
from lightning_uda.callbacks.pseudo_label import PseudoLabelThreshold

__all__ = ["EMATeacher", "PseudoLabelThreshold", "ema_coefficient", "ema_update"]
