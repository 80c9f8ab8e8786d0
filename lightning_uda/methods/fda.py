"""`FDAModule`: Fourier Domain Adaptation with robust entropy (Yang & Soatto, CVPR 2020).

Algorithm per step (one line per yielded loss):
1. translate the source images into the target "style": de-normalise both batches to 0–255
   pixels (in the input space's channel order), give each source image the low-frequency
   Fourier amplitude of its paired target image (window β), normalise again; CE on the
   translated source batch (``train/loss_seg``);
2. from step ``ent_start_step`` on: λ_ent × the Charbonnier-penalised entropy of the target
   predictions (``train/loss_ent``): per pixel the normalised entropy
   ``e = -Σ_c p_c log p_c / log K``, then ``mean((e² + 1e-8)^η)`` over pixels.
β = 0.01, λ_ent = 0.005, η = 2 (the authors' GTA5 → Cityscapes recipe, single β).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.methods.base import Losses, UDAModule, check_range
from lightning_uda.mixing import fda_window_size, fourier_domain_adaptation

__all__ = ["CHARBONNIER_EPSILON", "FDAModule", "robust_entropy"]

#: ε of the Charbonnier penalty ``(x² + ε²)^η``: the authors' code adds ``1e-8 = (1e-4)²``.
CHARBONNIER_EPSILON = 1e-4


def robust_entropy(
    logits: Tensor, eta: float = 2.0, epsilon: float = CHARBONNIER_EPSILON
) -> Tensor:
    """FDA's robust entropy: ``mean over pixels of (e² + ε²)^η``, ``e`` the normalised entropy.

    ``e = -Σ_c p_c log p_c / log K`` per pixel (in [0, 1]), ``p = softmax(logits)`` over the K
    channels, at the logits' resolution. As in the authors' code (``ent ** 2.0 + 1e-8``, then
    ``** ita``, then ``.mean()``), except that it divides by ``log K`` where the code hard-codes
    ``2.9444`` (≈ ln 19, "change when classes is not 19"). Computed in float32.

    Args:
        logits: ``B×K×H×W`` scores (``K >= 2``).
        eta: η of the Charbonnier penalty (the code's ``ita``; 2.0 in the recipe).
        epsilon: ε (1e-4, i.e. the code's 1e-8 added to ``e²``).

    Returns:
        Scalar loss.

    Example:
        >>> round(float(robust_entropy(torch.zeros(1, 2, 1, 1), eta=1.0)), 6)  # e = 1
        1.0
    """
    num_classes = logits.shape[1]
    if logits.dim() != 4 or num_classes < 2:
        raise ValueError(f"robust_entropy needs B×K×H×W logits, K >= 2; got {tuple(logits.shape)}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1) / math.log(num_classes)
    return ((entropy**2 + epsilon**2) ** eta).mean()


class FDAModule(UDAModule):
    """FDA: source CE on source images in the target's Fourier "style" + robust target entropy.

    **Pixel space.** The authors' loaders yield raw 0–255 BGR images (mean 0); their training
    script applies FDA to them and subtracts the Caffe mean afterwards, and their README warns to
    apply FDA to the original images before any mean subtraction or normalisation. The reason is
    the zero frequency: FDA gives it the target's amplitude and keeps the source's phase (its
    sign), and subtracting a mean first can make the two signs differ (a source darker than the
    mean, a target brighter), which inverts the translated image's mean brightness. Images reach
    the module normalised in the run's input space (:attr:`normalization`), so :meth:`translate`
    de-normalises both batches to 0–255 pixels in the space's channel order (BGR for
    ``"caffe"``: exactly the reference's input), applies
    :func:`~lightning_uda.mixing.fourier_domain_adaptation` and normalises the result again. For
    ``"imagenet"`` (RGB) the channel order and the scale make no difference (FDA works per
    channel and is scale-homogeneous); the mean does. Nothing is clamped, as in the reference.

    **Pairing.** Each source image takes the amplitude of the target image at the same batch
    index (the reference trains with batch size 1); a target batch of one serves every source
    image. Other target batch sizes, and crops of different sizes, are rejected on the first
    batch (FDA swaps spectra of equal size).

    **Entropy.** :func:`robust_entropy` on the target logits at the segmentor's output
    resolution (the reference computes it before upsampling), normalised by ``log K``. It is on
    from optimiser step ``ent_start_step`` (``uda_step >= ent_start_step``); the reference
    switches it on when its 0-based iteration ``i > switch2entropy``, i.e.
    ``ent_start_step = switch2entropy + 1``. Its option default is 50,000 (of a 150,000-step poly
    schedule stopped at 100,000); the README's training command uses ``--switch2entropy=0``, the
    default here (0: on from the first step). Set ``ent_start_step`` (and ``total_steps``) to
    follow the option default instead. Before it, the target batch is not forwarded and
    ``train/loss_ent`` is logged as 0.

    **Other differences from the reference.** The CE and the entropy are back-propagated one
    after the other (the same gradient as their summed backward); the source entropy, computed
    but unused there, is not computed; its CE class weights are all 1 (plain CE here); its
    ``--LB`` option defaults to 0.1, but the paper and README use β = 0.01 (also 0.05 and 0.09,
    for the multi-band ensemble, which, like the self-supervised rounds, is not part of this
    module); FDA itself uses :func:`torch.fft.fft2` (see its docstring for the window edge).

    Args:
        fda_beta: β, the half-size of the swapped window relative to the shorter image side
            (0.01; ``floor(β · min(H, W))`` frequencies, so 0 on small crops: no translation).
        ent_weight: λ_ent of the robust entropy (0.005; 0 = no entropy term).
        charbonnier_eta: η of the Charbonnier penalty (2.0; the reference's ``ita``).
        ent_start_step: optimiser steps before the entropy term is switched on (0).
        **kwargs: the arguments of :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        fda_beta: float = 0.01,
        ent_weight: float = 0.005,
        charbonnier_eta: float = 2.0,
        ent_start_step: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        owner = type(self).__name__
        check_range(owner, "fda_beta", fda_beta, 0, 0.5)
        check_range(owner, "ent_weight", ent_weight, 0)
        check_range(owner, "charbonnier_eta", charbonnier_eta, 0, low_open=True)
        check_range(owner, "ent_start_step", ent_start_step, 0)
        if isinstance(ent_start_step, bool) or int(ent_start_step) != ent_start_step:
            raise ValueError(f"{owner}: ent_start_step must be an int, got {ent_start_step!r}")
        self.fda_beta = float(fda_beta)
        self.ent_weight = float(ent_weight)
        self.charbonnier_eta = float(charbonnier_eta)
        self.ent_start_step = int(ent_start_step)

    # ------------------------------------------------------------------ checks
    def _check_pair(self, source: Tensor, target: Tensor) -> None:
        if target.shape[0] not in (1, source.shape[0]) or source.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"{type(self).__name__}: FDA gives each source image the amplitude spectrum of "
                "its paired target image, so the target batch must hold as many images as the "
                "source batch (or 1) and both crops must have the same size; got source "
                f"{tuple(source.shape)} and target {tuple(target.shape)}. Use target_batch_size "
                "equal to batch_size (or 1) and equal crop sizes."
            )

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """The base checks, then FDA's pairing (target batch 1 or the source's, equal sizes)."""
        super().check_batch(batch)
        self._check_pair(batch["source"]["image"], batch["target"]["image"])

    # ------------------------------------------------------------------ pixel space
    def to_pixels(self, images: Tensor) -> Tensor:
        """Normalised ``B×3×H×W`` images → 0–255 pixels in the input space's channel order."""
        rgb = self.normalization.denormalize(images)
        ordered = rgb.flip(1) if self.normalization.channel_order == "bgr" else rgb
        return ordered * 255.0

    def from_pixels(self, pixels: Tensor) -> Tensor:
        """Inverse of :meth:`to_pixels` (float32)."""
        ordered = pixels / 255.0
        rgb = ordered.flip(1) if self.normalization.channel_order == "bgr" else ordered
        return self.normalization.normalize(rgb)

    def translate(self, source: Tensor, target: Tensor) -> Tensor:
        """Source images with their paired target images' low-frequency amplitude (in pixel
        space, see the class docstring), normalised like the inputs, without gradient.

        Args:
            source: ``B×3×H×W`` normalised source images.
            target: ``B×3×H×W`` or ``1×3×H×W`` normalised target images.

        Returns:
            ``B×3×H×W`` in ``source``'s dtype; ``source`` itself when the window is empty
            (``floor(β · min(H, W)) = 0``).
        """
        self._check_pair(source, target)
        height, width = source.shape[-2:]
        if fda_window_size(height, width, self.fda_beta) == 0:
            return source
        with torch.no_grad():
            pixels = fourier_domain_adaptation(
                self.to_pixels(source), self.to_pixels(target), self.fda_beta
            )
            return self.from_pixels(pixels).to(source.dtype)

    # ------------------------------------------------------------------ losses
    def entropy_active(self) -> bool:
        """Whether the entropy term is on at this step."""
        return self.ent_weight > 0 and self.uda_step >= self.ent_start_step

    def training_losses(self, batch: Mapping[str, Any]) -> Losses:
        """``"seg"``: CE on the translated source batch; then :meth:`adaptation_losses`."""
        source = batch["source"]
        translated = self.translate(source["image"], batch["target"]["image"])
        yield "seg", self.source_loss({**source, "image": translated})
        yield from self.adaptation_losses(batch)

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        """The base's terms (MCC), then ``"ent"``: λ_ent × robust entropy of the target, once
        :meth:`entropy_active`."""
        yield from super().adaptation_losses(batch)
        images = batch["target"]["image"]
        if not self.entropy_active():
            self.log("train/loss_ent", 0.0, batch_size=images.shape[0])
            return
        entropy = robust_entropy(self.model(images), eta=self.charbonnier_eta)
        self.log("train/entropy", entropy.detach(), batch_size=images.shape[0])
        yield "ent", self.ent_weight * entropy
