"""`AdaptSegNetModule`: output-space adversarial alignment (Tsai et al., CVPR 2018).

AdaptSegNet is AdvEnt's direct ancestor: the same two-step iteration (segmentor step with the
target's discriminator output labelled as source; discriminator step on detached source and
target maps, ``½ BCE(D(s), 0) + ½ BCE(D(t), 1)``), multi-level with a discriminator per output,
but the discriminators see the **softmax** of the logits interpolated to the input size instead
of the entropy maps. So the module is :class:`~lightning_uda.methods.AdvEntModule` with one hook,
:meth:`~lightning_uda.methods.AdvEntModule.discriminator_inputs`, overridden; the optimisation,
step counting, checkpointing and DDP notes are those of
:class:`~lightning_uda.methods.adversarial.AdversarialMixin`.

The paper's weights (GTA5 → Cityscapes, multi-level DeepLabV2-ResNet101, published 42.4 mIoU):
λ_adv 0.001 on the main output and 0.0002 on the auxiliary one, λ_seg 0.1 on the auxiliary CE,
discriminators (AdvEnt's fully convolutional D, 64 → 512 channels) trained with Adam 1e-4, betas
(0.9, 0.99), both learning rates poly-decayed over 250k iterations (stopped at 150k), source
frames 1280×720 and target frames 1024×512, batch 1. Where the library differs from AdaptSegNet's
code: one Adam over both discriminators (the same update as two, Adam being per parameter); the
discriminators' backward runs after the segmentor's step (the same update, see
:mod:`lightning_uda.methods.adversarial`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_uda.losses import channel_softmax, upsample_logits
from lightning_uda.methods.advent import AdvEntModule

__all__ = ["AdaptSegNetModule"]


class AdaptSegNetModule(AdvEntModule):
    """AdvEnt's machinery with discriminators on softmax maps (AdaptSegNet's output space).

    Args:
        adv_weight: λ_adv of the main output (0.001).
        aux_adv_weight: λ_adv of the auxiliary output (0.0002).
        **kwargs: see :class:`~lightning_uda.methods.AdvEntModule` (discriminator optimiser and
            width, ``aux_seg_weight`` 0.1) and :class:`~lightning_uda.methods.UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        adv_weight: float = 1e-3,
        aux_adv_weight: float = 2e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, adv_weight=adv_weight, aux_adv_weight=aux_adv_weight, **kwargs)

    def discriminator_inputs(
        self, logits: Mapping[str, Tensor], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Level → softmax of the logits interpolated to the input size (``B×K×H×W``)."""
        self._check_size(size)
        return {
            level: channel_softmax(upsample_logits(z, size, align_corners=self.align_corners))
            for level, z in logits.items()
        }
