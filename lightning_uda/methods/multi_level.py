"""`MultiLevelModule`: the shared base of MinEnt and AdvEnt (optional auxiliary output).

AdvEnt's DeepLabV2 can carry a second classifier on layer3 ("multi-level", Vu et al., CVPR 2019,
§3.3). When the segmentor exposes one (``model.multi_level`` and ``model.forward_multi``), both
methods train it with the source CE at weight 0.1 (``LAMBDA_SEG_AUX`` in AdvEnt's config) and apply
their target loss to it with a smaller weight than to the main output. A single-output segmentor
(``tiny_unet``, smp models, DeepLabV2 without ``multi_level``) has the ``"main"`` level only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_uda.losses import cross_entropy, entropy_map_from_logits, upsample_logits
from lightning_uda.methods.base import UDAModule, check_range

#: Output levels of a multi-level segmentor, in the order ``forward_multi`` returns them.
LEVELS = ("main", "aux")


class MultiLevelModule(UDAModule):
    """A :class:`UDAModule` whose segmentor may have an auxiliary (multi-level) output.

    Args:
        aux_seg_weight: weight of the auxiliary output's source CE (0.1 in AdvEnt); unused for a
            single-output segmentor.
        **kwargs: the arguments of :class:`UDAModule`.
    """

    def __init__(
        self, model: nn.Module | None = None, *, aux_seg_weight: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        check_range(type(self).__name__, "aux_seg_weight", aux_seg_weight, 0)
        self.aux_seg_weight = aux_seg_weight

    @property
    def multi_level(self) -> bool:
        """Whether the segmentor exposes an auxiliary output (``model.multi_level``)."""
        return bool(getattr(self.model, "multi_level", False))

    @property
    def levels(self) -> tuple[str, ...]:
        """``("main", "aux")`` for a multi-level segmentor, else ``("main",)``."""
        return LEVELS if self.multi_level else LEVELS[:1]

    def level_logits(self, images: Tensor) -> dict[str, Tensor]:
        """Logits ``B×K×h×w`` per level (not upsampled) for normalised images ``B×3×H×W``."""
        if self.multi_level:
            return dict(zip(LEVELS, self.model.forward_multi(images), strict=True))
        return {"main": self.model(images)}

    def supervised_loss(self, logits: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """Source CE of the main output plus ``aux_seg_weight`` × the auxiliary output's CE.

        Args:
            logits: level → ``B×K×h×w`` logits (upsampled to the label size inside the CE).
            mask: ``B×H×W`` train ids (``ignore_index`` is left out of the mean).
        """
        options = {"ignore_index": self.ignore_index, "align_corners": self.align_corners}
        loss = cross_entropy(logits["main"], mask, **options)
        if "aux" in logits:
            aux = cross_entropy(logits["aux"], mask, **options)
            self.log("train/loss_source_aux", aux.detach(), batch_size=mask.shape[0])
            loss = loss + self.aux_seg_weight * aux
        return loss

    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Supervised CE on the source batch, over every output level."""
        return self.supervised_loss(self.level_logits(source["image"]), source["mask"])


def entropy_maps(
    logits: Mapping[str, Tensor], size: tuple[int, int], align_corners: bool = False
) -> dict[str, Tensor]:
    """AdvEnt's weighted self-information maps of each level at the input resolution.

    As AdvEnt: logits are interpolated to the input size first, then softmax, then
    ``I = -p·log2(p) / log2(K)`` per channel (:func:`lightning_uda.losses.entropy_map`; computed
    by :func:`~lightning_uda.losses.entropy_map_from_logits`, which keeps only the upsampled
    logits for the backward).

    Args:
        logits: level → ``B×K×h×w`` logits.
        size: ``(H, W)`` of the input images.
        align_corners: bilinear upsampling rule (AdvEnt: ``True``; see
            :func:`lightning_uda.losses.upsample_logits`).

    Returns:
        level → ``B×K×H×W`` maps (channel sums are normalised entropies in ``[0, 1]``).
    """
    return {
        level: entropy_map_from_logits(upsample_logits(z, size, align_corners=align_corners))
        for level, z in logits.items()
    }
