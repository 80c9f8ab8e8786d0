"""`LSDSegModule`: LSD-seg (Sankaranarayanan et al., "Learning from Synthetic Data: Addressing
Domain Shift for Semantic Segmentation", CVPR 2018).

A generator G reconstructs the input image from the segmentor's features, and an ACGAN-style
patch discriminator D tells, per patch, which of four kinds an image is (source-real 0,
source-fake 1, target-real 2, target-fake 3) and which class each source patch shows. Pushing
the reconstructions of one domain towards the real images of the *other* domain pulls the
segmentor's features of both domains together. Networks: :class:`~lightning_uda.models.lsd_seg.
LSDGenerator` and :class:`~lightning_uda.models.lsd_seg.LSDDiscriminator`.

Losses of one iteration (CE: cross-entropy; ``D_dom(x)``: D's ``B×4×h×w`` domain map, constant
label per image; ``D_cls(x)``: D's ``B×K×h×w`` class map against the source labels resized to it
(nearest, void 255 ignored); ``ŝ = G(features(source))``, ``t̂`` likewise; real images and
reconstructions in RGB [0, 1]):

1. **D**: ``CE(D_dom(s), 0) + CE(D_dom(ŝ), 1) + CE(D_dom(t), 2) + CE(D_dom(t̂), 3)
   + CE(D_cls(s), y)``;
2. **G**: ``1 · CE(D_cls(ŝ), y) + 0.1 · [CE(D_dom(ŝ), 0) + CE(D_dom(t̂), 2)]
   + 1 · [L1(ŝ, s) + L1(t̂, t)]`` (fool D: each fake as a real of its own domain);
3. **segmentor**: ``CE(seg(s), y_full) + 0.1 · [CE(D_dom(ŝ), 2) + CE(D_dom(t̂), 0)]
   + 0.1 · CE(D_cls(ŝ), y)`` (domain confusion: a source reconstruction should look like a real
   target image and vice versa), through G and D; plus the base's optional MCC term.

Weights (module arguments, the reference's values): D's terms 1; G's ``generator_class_weight``
1, ``generator_adv_weight`` 0.1, ``l1_weight`` 1; the segmentor's ``adv_weight`` 0.1 and
``class_weight`` 0.1. G and D: Adam, lr 1e-4, betas (0.7, 0.999), constant learning rate (the
reference schedules neither).

**What each update sees, and the order.** The reference computes every output once per
iteration (segmentor, G, D on the four images), before any update, then steps D, G and the
segmentor in turn, each on the gradient of its own loss (it zeroes the other networks'
gradients before each backward, and detaches nothing). So every loss is a loss of the
*pre-update* networks. Modern autograd does not allow back-propagating through weights an
optimiser has changed in place, and DDP needs each backward to reach only the network it
updates, so here each update has its own forward, with the other networks frozen
(``requires_grad`` off, :func:`~lightning_uda.methods.advent.frozen`) or their outputs
detached, and the networks are stepped in the order segmentor → G → D, which keeps every forward
on the pre-update weights:

1. segmentor forward on both domains; G and D frozen: reconstructions and D's maps; segmentor
   loss; backward (segmentor gradients only); segmentor step;
2. G on the *detached* features (computed before the segmentor's step), D frozen; G loss;
   backward (G only); G step;
3. D on the real images and the *detached* reconstructions of step 2; D loss; backward (D only);
   D step.

Each network is stepped after every forward that uses it (the segmentor is used in step 1, G in
1–2, D in 1–3), so all three losses and gradients are those of the reference's single forward,
and the updates are the reference's D → G → segmentor updates (the optimisers are independent,
so their order does not change the result). Two details of the reference are not reproduced:
(a) with PyTorch 0.x's untracked in-place ``.data`` updates, its G and segmentor gradients are
back-propagated through D's (and G's) *already updated* weights while its forward values are the
old ones; here every gradient is the gradient of the computed loss; (b) its three losses share
one dropout mask per network, here each forward draws its own (G and D have dropout 0.5 in their
residual blocks). Each backward is followed at once by its own optimiser's step, so under
``16-mixed`` every gradient is unscaled with the loss scale it was scaled with (with
``accumulate_grad_batches > 1`` the caveat of :class:`~lightning_uda.methods.AdvEntModule`
applies).

**Where the library differs from the reference.**

- Segmentor: the reference is FCN8s-VGG16, G reading fc7 / pool4 / pool3; here any segmentor
  with the feature contract of :func:`~lightning_uda.models.forward_with_features` (DeepLabV2:
  ``[layer3, layer4]``, TinyUNet, smp models, DAFormer). G reads the deepest ``feature_levels``
  (3) features, or all of them when there are fewer (DeepLabV2: 2); smp's first "feature", the
  input image itself, is never used. A DeepLabV2 auxiliary classifier is not trained.
- Segmentor optimiser and schedule: the library's (SGD or AdamW, backbone/head groups,
  per-iteration poly decay); the reference uses Adam, lr 1e-5 (biases 2×), betas (0.9, 0.999),
  a ×0.1 step every 8 epochs. ``optimizer="adamw", lr=1e-5, weight_decay=0`` comes closest.
- Reduction: ``reduction="mean"`` (default, the library's convention): every CE is a mean over
  its (valid) pixels, L1 a mean over pixels. The reference (``reduction="sum"``) *sums* each CE
  over pixels, averages L1 over pixels, and divides every loss by the batch size, which weights
  the terms very differently: at 320×640 the segmentation CE sums 204,800 pixels and each D-map
  term 3,200 patches, so the adversarial terms weigh about 64 times less against the
  segmentation CE than with means, and G's L1 (a mean) is almost nothing beside its summed CE
  terms. With the library's SGD learning rates ``"sum"`` diverges; it is meant for Adam
  (scale-invariant) runs that want the reference's balance.
- Pixel space: G and D work on RGB in [0, 1] (the reference's: it feeds D un-normalised images
  and ends G in a sigmoid); the real images are the batch de-normalised with the run's input space
  and clamped to [0, 1]. :meth:`LSDSegModule.reconstruct` gives the reconstruction in the input
  space.
- Noise: G concatenates ``noise_channels`` channels of N(0, 1) noise to each stage's input, as
  the reference's ``_netG`` can; its ``nz`` is 0, so the default here is 0 too. The noise is
  drawn from the module's own generator (reproducible, resumable, different per DDP rank) and
  the same draw is used by G's forwards of steps 1 and 2.
- Sizes: see :mod:`lightning_uda.models.lsd_seg` (D as the reference: 128 channels, 9 residual
  blocks, output stride about 8; G with the reference's stage widths, 1×1 entries and bilinear
  resizing instead of FCN8s-specific transposed convolutions).

All three networks are submodules (``model``, ``generator``, ``discriminator``), so they move to
the device and are saved in / restored from checkpoints together; the three optimisers (and the
segmentor's poly schedule) are Lightning optimisers and are checkpointed too. ``max_steps=N``
means N iterations: only the segmentor's optimiser steps through ``LightningOptimizer.step()``,
G's and D's through ``trainer.strategy.optimizer_step()`` (see AdvEnt's docstring).

**DDP** needs ``strategy="ddp_find_unused_parameters_true"``: each backward reaches one network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.losses import upsample_logits
from lightning_uda.methods.advent import frozen
from lightning_uda.methods.base import UDAModule, check_range
from lightning_uda.models.lsd_seg import (
    LSDDiscriminator,
    LSDGenerator,
    PatchOutputs,
    generator_features,
    probe_generator_features,
)
from lightning_uda.models.segmentor import forward_with_features

__all__ = [
    "DOMAIN_LABELS",
    "REDUCTIONS",
    "SOURCE_FAKE",
    "SOURCE_REAL",
    "TARGET_FAKE",
    "TARGET_REAL",
    "LSDSegModule",
    "domain_cross_entropy",
    "patch_cross_entropy",
    "patch_labels",
    "reconstruction_l1",
    "segmentation_cross_entropy",
]

#: The four classes of the discriminator's domain map (the reference's domain labels).
SOURCE_REAL = 0
SOURCE_FAKE = 1
TARGET_REAL = 2
TARGET_FAKE = 3
DOMAIN_LABELS = {
    "source_real": SOURCE_REAL,
    "source_fake": SOURCE_FAKE,
    "target_real": TARGET_REAL,
    "target_fake": TARGET_FAKE,
}
#: ``"mean"``: means over (valid) pixels; ``"sum"``: the reference's per-image pixel sums.
REDUCTIONS = ("mean", "sum")


def _reduce(per_pixel: Tensor, valid: Tensor | None, reduction: str) -> Tensor:
    """Mean over the valid pixels (``"mean"``; 0, still attached, when none is valid) or sum
    divided by the batch size (``"sum"``)."""
    if reduction == "sum":
        return per_pixel.sum() / per_pixel.shape[0]
    count = per_pixel.numel() if valid is None else valid.sum().clamp_min(1)
    return per_pixel.sum() / count


def domain_cross_entropy(logits: Tensor, label: int, reduction: str = "mean") -> Tensor:
    """CE of a ``B×4×h×w`` domain map against the constant domain ``label`` (0–3) everywhere."""
    target = torch.full(
        (logits.shape[0], *logits.shape[-2:]), int(label), dtype=torch.long, device=logits.device
    )
    return _reduce(F.cross_entropy(logits, target, reduction="none"), None, reduction)


def patch_labels(mask: Tensor, size: Sequence[int]) -> Tensor:
    """``B×H×W`` train ids resized to the patch map ``size`` by nearest neighbour (the pixel at
    each patch's centre, as the reference's PIL ``NEAREST`` resize); void stays void."""
    size = tuple(int(s) for s in size)
    if tuple(mask.shape[-2:]) == size:
        return mask.long()
    resized = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].round().long()


def patch_cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> Tensor:
    """CE of a ``B×K×h×w`` class map against ``B×h×w`` patch labels (void ignored)."""
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, labels != ignore_index, reduction)


def segmentation_cross_entropy(
    logits: Tensor,
    mask: Tensor,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """The segmentor's CE: logits upsampled to the labels, void ignored; ``"mean"`` equals
    :func:`lightning_uda.losses.cross_entropy`."""
    logits = upsample_logits(logits, tuple(mask.shape[-2:]), align_corners=align_corners)
    per_pixel = F.cross_entropy(logits, mask, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, mask != ignore_index, reduction)


def reconstruction_l1(fake: Tensor, real: Tensor, reduction: str = "mean") -> Tensor:
    """Mean absolute difference of two images; divided by the batch size too with ``"sum"`` (the
    reference divides its whole generator loss, L1 mean included, by the batch size)."""
    loss = F.l1_loss(fake, real)
    return loss / fake.shape[0] if reduction == "sum" else loss


@dataclass
class _Carry:
    """What the generator and discriminator updates reuse from the segmentor's forward (all
    detached: values of the pre-update segmentor)."""

    features: dict[str, list[Tensor]]
    noise: dict[str, list[Tensor] | None]
    real: dict[str, Tensor]
    labels: Tensor


def _no_closure() -> None:
    """Closure for a manual optimiser step: the gradients are already there."""
    return None


class LSDSegModule(UDAModule):
    """LSD-seg: adapt the segmentor's features through an image generator and an ACGAN
    discriminator (see the module docstring for the losses, the update order and the
    differences from the reference).

    Overridable pieces: :meth:`segmentor_losses`, :meth:`generator_losses`,
    :meth:`discriminator_losses` (the objectives, from network outputs), :meth:`pixels` (what the
    discriminator sees of a real image).

    Args:
        adv_weight: weight of the segmentor's domain-confusion terms (0.1, the reference's
            ``adv_weight``).
        class_weight: weight of the segmentor's class loss on the source reconstructions (0.1,
            the reference's ``c_weight``).
        l1_weight: weight of G's L1 reconstruction loss, both domains (1, ``l1_weight``).
        generator_adv_weight: weight of G's fooling terms (0.1, fixed in the reference).
        generator_class_weight: weight of G's class loss on the source reconstructions (1, fixed
            in the reference).
        generator_lr: Adam learning rate of G (1e-4), constant.
        generator_betas: Adam betas of G ((0.7, 0.999)).
        discriminator_lr: Adam learning rate of D (1e-4), constant.
        discriminator_betas: Adam betas of D ((0.7, 0.999)).
        generator_width: G's refinement width; its stages are 2, 4, 8 times wider (64, the
            reference's ``ngf``).
        discriminator_width: channels of every layer of D (128, the reference's ``2 · ndf``).
        feature_levels: how many of the segmentor's deepest features G reads (3, the reference's
            fc7, pool4, pool3; all of them when the segmentor has fewer).
        noise_channels: noise channels G concatenates to each stage's input (0, the reference's
            ``nz``).
        dropout: dropout of G's and D's residual blocks (0.5, as the reference).
        reduction: ``"mean"`` (default) or ``"sum"`` (the reference's; see the module docstring).
        **kwargs: see :class:`UDAModule` (the segmentor, its optimiser, MCC, ...).

    Raises:
        ValueError: an argument is out of range, or ``model`` does not expose its features.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        adv_weight: float = 0.1,
        class_weight: float = 0.1,
        l1_weight: float = 1.0,
        generator_adv_weight: float = 0.1,
        generator_class_weight: float = 1.0,
        generator_lr: float = 1e-4,
        generator_betas: tuple[float, float] = (0.7, 0.999),
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.7, 0.999),
        generator_width: int = 64,
        discriminator_width: int = 128,
        feature_levels: int = 3,
        noise_channels: int = 0,
        dropout: float = 0.5,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        owner = type(self).__name__
        for name, value in (
            ("adv_weight", adv_weight),
            ("class_weight", class_weight),
            ("l1_weight", l1_weight),
            ("generator_adv_weight", generator_adv_weight),
            ("generator_class_weight", generator_class_weight),
        ):
            check_range(owner, name, value, 0)
        check_range(owner, "generator_lr", generator_lr, 0, low_open=True)
        check_range(owner, "discriminator_lr", discriminator_lr, 0, low_open=True)
        for name, betas in (
            ("generator_betas", generator_betas),
            ("discriminator_betas", discriminator_betas),
        ):
            if len(betas) != 2:
                raise ValueError(f"{owner}: {name} must be a pair (beta1, beta2), got {betas!r}")
            for i, beta in enumerate(betas):
                check_range(owner, f"{name}[{i}]", beta, 0, 1, high_open=True)
        check_range(owner, "generator_width", generator_width, 1)
        check_range(owner, "discriminator_width", discriminator_width, 1)
        check_range(owner, "feature_levels", feature_levels, 1)
        check_range(owner, "noise_channels", noise_channels, 0)
        check_range(owner, "dropout", dropout, 0, 1, high_open=True)
        if reduction not in REDUCTIONS:
            raise ValueError(f"{owner}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.feature_levels = int(feature_levels)
        try:
            probe = probe_generator_features(self.model, self.feature_levels)
        except TypeError as error:
            raise ValueError(
                f"{owner}: model must expose its features for the generator: {error}"
            ) from error
        #: Largest stride of the features G reads (for the input-size check).
        self.generator_stride = probe.stride
        #: G: segmentor features -> RGB image in [0, 1].
        self.generator = LSDGenerator(
            probe.channels, width=generator_width, noise_channels=noise_channels, dropout=dropout
        )
        #: D: RGB image in [0, 1] -> (4-way domain map, K-way class map).
        self.discriminator = LSDDiscriminator(
            self.num_classes, width=discriminator_width, dropout=dropout
        )

    # ------------------------------------------------------------------ checks
    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """The discriminator needs images of at least 16×16 pixels, and the generator's deepest
        feature map more than one position (its InstanceNorm normalises over positions)."""
        super().check_batch(batch)
        minimum = LSDDiscriminator.MIN_INPUT
        stride = self.generator_stride
        for domain in ("source", "target"):
            size = tuple(batch[domain]["image"].shape[-2:])
            if min(size) < minimum:
                raise ValueError(
                    f"LSD-seg's discriminator needs images of at least {minimum}×{minimum} "
                    f"pixels; the {domain} batch has {size}. Use larger crops."
                )
            if (size[0] // stride) * (size[1] // stride) < 2:
                raise ValueError(
                    f"LSD-seg's generator reads segmentor features down to stride {stride:g}, "
                    f"which are a single position for the {domain} batch's {size} images; use "
                    f"crops of at least {int(2 * stride)} pixels."
                )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.require_unused_parameter_detection(
            "back-propagates the segmentor, generator and discriminator losses separately, so "
            "each backward leaves the other networks without gradients"
        )

    # ------------------------------------------------------------------ networks
    def pixels(self, images: Tensor) -> Tensor:
        """Batch images (input space) -> RGB in [0, 1], what D sees of a real image and what G
        reconstructs (clamped: G's sigmoid cannot leave [0, 1])."""
        return self.normalization.denormalize(images).clamp(0.0, 1.0)

    def generator_inputs(self, features: Sequence[Tensor], images: Tensor) -> list[Tensor]:
        """The features G reads (the deepest ``feature_levels``, never the input image)."""
        return generator_features(features, images, self.feature_levels)

    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """G's reconstruction of ``images`` in the run's input space (for inspection/panels).

        Runs in the module's current mode (dropout is active in training mode); G's noise, if
        any, comes from ``generator`` (default: a fresh one seeded 0), never from the training
        streams, so calling it does not change a run.
        """
        _, features = forward_with_features(self.model, images)
        inputs = self.generator_inputs(features, images)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        noise = self.generator.sample_noise(inputs, generator=generator)
        rgb = self.generator(inputs, tuple(images.shape[-2:]), noise)
        return self.normalization.normalize(rgb)

    # ------------------------------------------------------------------ losses (from outputs)
    def segmentor_losses(
        self,
        logits: Tensor,
        mask: Tensor,
        fake_source: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """Step 3 of the reference: source CE, domain confusion, class loss on source fakes.

        Args:
            logits: the segmentor's source logits ``B×K×h×w``.
            mask: source train ids ``B×H×W``.
            fake_source: D's maps of the source reconstructions.
            fake_target: D's maps of the target reconstructions.
            labels: source labels at the patch-map size (:func:`patch_labels`).

        Returns:
            ``{"source", "confusion", "fake_class"}`` (unweighted) and ``"segmentor"``, the
            weighted total ``source + adv_weight · confusion + class_weight · fake_class``.
        """
        hp, reduction = self.hparams, self.reduction
        terms = {
            "source": segmentation_cross_entropy(
                logits, mask, self.ignore_index, self.align_corners, reduction
            ),
            # source fakes labelled target-real, target fakes labelled source-real
            "confusion": domain_cross_entropy(fake_source.domain, TARGET_REAL, reduction)
            + domain_cross_entropy(fake_target.domain, SOURCE_REAL, reduction),
            "fake_class": patch_cross_entropy(
                fake_source.classes, labels, self.ignore_index, reduction
            ),
        }
        terms["segmentor"] = (
            terms["source"]
            + hp.adv_weight * terms["confusion"]
            + hp.class_weight * terms["fake_class"]
        )
        return terms

    def generator_losses(
        self,
        fake_source: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
        images: Mapping[str, Tensor],
        real: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """Step 2: class loss on source fakes, fooling D, L1 reconstruction.

        Args:
            fake_source: D's maps of the source reconstructions.
            fake_target: D's maps of the target reconstructions.
            labels: source labels at the patch-map size.
            images: ``{"source", "target"}`` reconstructions (RGB [0, 1]).
            real: ``{"source", "target"}`` real images (RGB [0, 1], :meth:`pixels`).

        Returns:
            ``{"generator_class", "generator_adversarial", "reconstruction"}`` (unweighted) and
            ``"generator"``, the weighted total.
        """
        hp, reduction = self.hparams, self.reduction
        terms = {
            "generator_class": patch_cross_entropy(
                fake_source.classes, labels, self.ignore_index, reduction
            ),
            # each fake labelled as a real image of its own domain
            "generator_adversarial": domain_cross_entropy(
                fake_source.domain, SOURCE_REAL, reduction
            )
            + domain_cross_entropy(fake_target.domain, TARGET_REAL, reduction),
            "reconstruction": reconstruction_l1(images["source"], real["source"], reduction)
            + reconstruction_l1(images["target"], real["target"], reduction),
        }
        terms["generator"] = (
            hp.generator_class_weight * terms["generator_class"]
            + hp.generator_adv_weight * terms["generator_adversarial"]
            + hp.l1_weight * terms["reconstruction"]
        )
        return terms

    def discriminator_losses(
        self,
        real_source: PatchOutputs,
        fake_source: PatchOutputs,
        real_target: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """Step 1: the four domain terms (labels 0–3) and the class loss on source-real patches.

        Returns:
            ``{"discriminator_domain", "discriminator_class"}`` and their sum
            ``"discriminator"``.
        """
        reduction = self.reduction
        terms = {
            "discriminator_domain": domain_cross_entropy(real_source.domain, SOURCE_REAL, reduction)
            + domain_cross_entropy(fake_source.domain, SOURCE_FAKE, reduction)
            + domain_cross_entropy(real_target.domain, TARGET_REAL, reduction)
            + domain_cross_entropy(fake_target.domain, TARGET_FAKE, reduction),
            "discriminator_class": patch_cross_entropy(
                real_source.classes, labels, self.ignore_index, reduction
            ),
        }
        terms["discriminator"] = terms["discriminator_domain"] + terms["discriminator_class"]
        return terms

    # ------------------------------------------------------------------ the three forwards
    def segmentor_phase(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], _Carry]:
        """Segmentor forward on both domains, G and D frozen; its losses and what steps 2–3 reuse.

        Returns:
            ``(segmentor_losses (+ "mcc" when mcc_weight > 0), carry)``.
        """
        features: dict[str, list[Tensor]] = {}
        noise: dict[str, list[Tensor] | None] = {}
        real: dict[str, Tensor] = {}
        fakes: dict[str, PatchOutputs] = {}
        logits: dict[str, Tensor] = {}
        for domain in ("source", "target"):
            images = batch[domain]["image"]
            logits[domain], all_features = forward_with_features(self.model, images)
            inputs = self.generator_inputs(all_features, images)
            noise[domain] = self.generator.sample_noise(inputs, generator=self.rng)
            with frozen(self.generator), frozen(self.discriminator):
                fake = self.generator(inputs, tuple(images.shape[-2:]), noise[domain])
                fakes[domain] = self.discriminator(fake)
            features[domain] = [f.detach() for f in inputs]
            with torch.no_grad():
                real[domain] = self.pixels(images)
        mask = batch["source"]["mask"]
        labels = patch_labels(mask, fakes["source"].classes.shape[-2:])
        terms = self.segmentor_losses(
            logits["source"], mask, fakes["source"], fakes["target"], labels
        )
        if self.mcc_loss is not None:
            terms["mcc"] = self.mcc_loss(logits["target"], generator=self.rng)
            terms["segmentor"] = terms["segmentor"] + self.hparams.mcc_weight * terms["mcc"]
        return terms, _Carry(features=features, noise=noise, real=real, labels=labels)

    def generator_phase(self, carry: _Carry) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """G on the detached features, D frozen; G's losses and the detached reconstructions."""
        images: dict[str, Tensor] = {}
        outputs: dict[str, PatchOutputs] = {}
        for domain in ("source", "target"):
            size = tuple(carry.real[domain].shape[-2:])
            images[domain] = self.generator(carry.features[domain], size, carry.noise[domain])
            with frozen(self.discriminator):
                outputs[domain] = self.discriminator(images[domain])
        terms = self.generator_losses(
            outputs["source"], outputs["target"], carry.labels, images, carry.real
        )
        return terms, {domain: image.detach() for domain, image in images.items()}

    def discriminator_phase(self, carry: _Carry, fakes: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """D on the real images and the detached reconstructions (one call per domain)."""
        outputs: dict[str, tuple[PatchOutputs, PatchOutputs]] = {}
        for domain in ("source", "target"):
            real = carry.real[domain]
            both = self.discriminator(torch.cat([real, fakes[domain]]))
            n = real.shape[0]
            outputs[domain] = (
                PatchOutputs(both.domain[:n], both.classes[:n]),
                PatchOutputs(both.domain[n:], both.classes[n:]),
            )
        (real_source, fake_source), (real_target, fake_target) = (
            outputs["source"],
            outputs["target"],
        )
        return self.discriminator_losses(
            real_source, fake_source, real_target, fake_target, carry.labels
        )

    # ------------------------------------------------------------------ algorithm
    def _backward(
        self, total: str, terms: Mapping[str, Tensor], hint: str, batch_size: int
    ) -> None:
        """Check, log and back-propagate one network's loss ``terms[total]``."""
        loss = terms[total]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{type(self).__name__}: the '{total}' loss is {loss.item()} at step "
                f"{self.uda_step}; lower {hint} or check the inputs."
            )
        self.manual_backward(loss / self.hparams.accumulate_grad_batches)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value.detach(), batch_size=batch_size)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """One iteration: segmentor, then G, then D, each a forward, backward and step (the
        steps every ``accumulate_grad_batches`` batches)."""
        self._restore_rank_buffers()
        if not getattr(self, "_batch_checked", True):
            self.check_batch(batch)
            self._batch_checked = True
        stepping = self._accumulated + 1 >= self.hparams.accumulate_grad_batches
        batch_size = batch["source"]["image"].shape[0]

        terms, carry = self.segmentor_phase(batch)
        self._backward("segmentor", terms, "lr", batch_size)
        if stepping:
            self.segmentor_optimizer_step()
        total = terms["segmentor"].detach()
        del terms

        terms, fakes = self.generator_phase(carry)
        self._backward("generator", terms, "generator_lr", batch_size)
        if stepping:
            self.generator_optimizer_step()
        del terms

        terms = self.discriminator_phase(carry, fakes)
        self._backward("discriminator", terms, "discriminator_lr", batch_size)
        if stepping:
            self.discriminator_optimizer_step()

        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        if stepping:
            self._accumulated = 0
            self.uda_step += 1
            self.after_optimizer_step()
            self.check_finite_state()
        else:
            self._accumulated += 1
        return total

    def segmentor_optimizer_step(self) -> None:
        """Step (through ``LightningOptimizer``: one ``global_step``) and zero the segmentor's
        optimiser, step its poly schedule."""
        optimizer = self.optimizers()[0]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedulers = self.lr_schedulers()
        scheduler = schedulers[0] if isinstance(schedulers, list) else schedulers
        if scheduler is not None:
            scheduler.step()
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=1)

    def _adversary_step(self, index: int, name: str) -> None:
        optimizer = self.optimizers(use_pl_optimizer=False)[index]
        self.trainer.strategy.optimizer_step(optimizer, _no_closure, model=self)
        optimizer.zero_grad(set_to_none=True)
        self.log(f"train/lr_{name}", optimizer.param_groups[0]["lr"], batch_size=1)

    def generator_optimizer_step(self) -> None:
        """Step and zero G's optimiser (through the strategy: not counted in ``global_step``)."""
        self._adversary_step(1, "generator")

    def discriminator_optimizer_step(self) -> None:
        """Step and zero D's optimiser (through the strategy: not counted in ``global_step``)."""
        self._adversary_step(2, "discriminator")

    def optimizer_steps(self) -> None:
        """Step all three optimisers (segmentor, G, D); :meth:`training_step` steps each right
        after its own backward instead."""
        self.segmentor_optimizer_step()
        self.generator_optimizer_step()
        self.discriminator_optimizer_step()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The segmentor's optimiser and poly schedule, then G's and D's Adam (constant lr)."""
        segmentor = super().configure_optimizers()
        hp = self.hparams
        generator = torch.optim.Adam(
            self.generator.parameters(), lr=hp.generator_lr, betas=tuple(hp.generator_betas)
        )
        discriminator = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=hp.discriminator_lr,
            betas=tuple(hp.discriminator_betas),
        )
        return segmentor, {"optimizer": generator}, {"optimizer": discriminator}
