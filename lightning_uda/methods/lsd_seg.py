"""`LSDSegModule`: LSD-seg (Sankaranarayanan et al., "Learning from Synthetic Data: Addressing
Domain Shift for Semantic Segmentation", CVPR 2018).

A generator G reconstructs the input image from the segmentor's features, and an ACGAN-style
patch discriminator D tells, per patch, which of four kinds an image is (source-real 0,
source-fake 1, target-real 2, target-fake 3) and which class each source patch shows. Pushing
the reconstructions of one domain towards the real images of the *other* domain pulls the
segmentor's features of both domains together. Networks: :class:`~lightning_uda.models.lsd_seg.
LSDGenerator` and :class:`~lightning_uda.models.lsd_seg.LSDDiscriminator`.

Each iteration updates three networks, each on its own loss (the formulas, with the reference's
weights: :mod:`lightning_uda.methods.lsd_seg_losses`): **D** learns the four domain labels of
real and reconstructed images and the source classes; **G** reconstructs the images with D's
classes right while fooling D (each fake as a real of its own domain); the **segmentor** learns
the source CE plus *domain confusion* (a source reconstruction should look like a real target
image and vice versa) and D's classes on the source reconstructions, through G and D. G and D:
Adam, lr 1e-4, betas (0.7, 0.999), constant learning rate (the reference schedules neither).

**What each update sees, and the order** (``docs/design.md``, "LSD-seg's update order"): each
update has its own forward with the other networks frozen or their outputs detached, stepped
segmentor → G → D, so that every loss and gradient is that of the reference's single forward on
the pre-update networks (the iteration of :class:`~lightning_uda.methods.adversarial.
AdversarialMixin`, with G and D as the adversaries).

**Where the library differs from the reference.**

- Segmentor: the reference is FCN8s-VGG16, G reading fc7 / pool4 / pool3; here any segmentor
  with the feature contract of :func:`~lightning_uda.models.forward_with_features` (DeepLabV2:
  ``[layer3, layer4]``, TinyUNet, smp models, DAFormer). G reads the deepest ``feature_levels``
  (3) features, or all of them when there are fewer (DeepLabV2: 2); smp's first "feature", the
  input image itself, is never used. A DeepLabV2 auxiliary classifier is not trained.
- Segmentor optimiser and schedule: the library's (SGD or AdamW, backbone/head groups,
  per-iteration poly decay); the reference uses Adam, lr 1e-5 (biases 2×), betas (0.9, 0.999),
  a ×0.1 step every 8 epochs. ``optimizer="adamw", lr=1e-5, weight_decay=0`` comes closest.
- Pixel reduction: by default every cross-entropy is a mean over its valid pixels; the reference
  sums each over pixels and divides every loss by the batch size (``pixel_reduction="sum"``: see
  that argument for what differs and why the default is ``"mean"``).
- Networks: G and D work on RGB in [0, 1], as the reference's (real images: the batch
  de-normalised with the run's input space, clamped); G's entries and resizing differ
  (:mod:`lightning_uda.models.lsd_seg`). G's noise (``noise_channels``, 0 as the reference's
  ``nz``) is drawn from the module's own generator (reproducible, resumable, different per DDP
  rank), one draw for G's forwards of updates 1 and 2.

All three networks and their optimisers are checkpointed; ``max_steps=N`` means N iterations;
**DDP** needs ``strategy="ddp_find_unused_parameters_true"`` (:mod:`~lightning_uda.methods.
adversarial`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_uda.methods.adversarial import AdversarialMixin, check_betas, frozen
from lightning_uda.methods.base import Losses, UDAModule, check_range
from lightning_uda.methods.lsd_seg_losses import (
    PIXEL_REDUCTIONS,
    PixelReduction,
    discriminator_objective,
    generator_objective,
    patch_labels,
    segmentor_objective,
)
from lightning_uda.models.lsd_seg import (
    LSDDiscriminator,
    LSDGenerator,
    PatchOutputs,
    generator_features,
    probe_generator_features,
)
from lightning_uda.models.segmentor import forward_with_features

__all__ = ["LSDSegModule"]


@dataclass
class _Carry:
    """What the generator and discriminator updates reuse from the segmentor's forward (all
    detached: values of the pre-update segmentor)."""

    features: dict[str, list[Tensor]]
    noise: dict[str, list[Tensor] | None]
    real: dict[str, Tensor]
    labels: Tensor


class LSDSegModule(AdversarialMixin, UDAModule):
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
        pixel_reduction: how each cross-entropy term is reduced over pixels: ``"mean"``
            (default) over its valid pixels, or ``"sum"`` (the reference's) with every loss
            divided by the batch size (:mod:`~lightning_uda.methods.lsd_seg_losses`). Sums weigh
            the terms differently: at the reference's 320×640 the segmentation CE sums 204,800
            pixels and each D-map term 3,200 patches, so the adversarial terms weigh 64 times
            less against it than with means, and G's L1 (a mean) almost nothing beside its summed
            CE terms. The default stays ``"mean"``: sums tie that balance, and the size of every
            gradient, to the crop size, whereas with means the demo's small crops and any crop
            keep one balance and the library's learning rates (set for means) work. ``"sum"`` is
            for the reference's recipe (320×640 frames, Adam).
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
        pixel_reduction: PixelReduction = "mean",
        reduction: PixelReduction | None = None,
        **kwargs: Any,
    ) -> None:
        if reduction is not None:  # the argument's former name (and older checkpoints' hparams)
            warnings.warn(
                f"{type(self).__name__}(reduction={reduction!r}) is now pixel_reduction="
                f"{reduction!r}; the old name will be removed.",
                DeprecationWarning,
                stacklevel=2,
            )
            pixel_reduction = reduction
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
        check_betas(owner, "generator_betas", generator_betas)
        check_betas(owner, "discriminator_betas", discriminator_betas)
        check_range(owner, "generator_width", generator_width, 1)
        check_range(owner, "discriminator_width", discriminator_width, 1)
        check_range(owner, "feature_levels", feature_levels, 1)
        check_range(owner, "noise_channels", noise_channels, 0)
        check_range(owner, "dropout", dropout, 0, 1, high_open=True)
        if pixel_reduction not in PIXEL_REDUCTIONS:
            raise ValueError(
                f'{owner}: pixel_reduction must be one of {PIXEL_REDUCTIONS} ("sum": the '
                f"reference's pixel sums), got {pixel_reduction!r}"
            )
        #: ``"mean"`` or ``"sum"``: how every loss term is reduced over pixels.
        self.pixel_reduction: PixelReduction = pixel_reduction
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
    def _term_options(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index, "reduction": self.pixel_reduction}

    def segmentor_losses(
        self,
        logits: Tensor,
        mask: Tensor,
        fake_source: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """The segmentor's terms and total: :func:`~lightning_uda.methods.lsd_seg_losses.
        segmentor_objective` with the module's weights."""
        hp = self.hparams
        return segmentor_objective(
            logits,
            mask,
            fake_source,
            fake_target,
            labels,
            adv_weight=hp.adv_weight,
            class_weight=hp.class_weight,
            align_corners=self.align_corners,
            **self._term_options(),
        )

    def generator_losses(
        self,
        fake_source: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
        images: Mapping[str, Tensor],
        real: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """G's terms and total: :func:`~lightning_uda.methods.lsd_seg_losses.
        generator_objective` with the module's weights."""
        hp = self.hparams
        return generator_objective(
            fake_source,
            fake_target,
            labels,
            images,
            real,
            class_weight=hp.generator_class_weight,
            adv_weight=hp.generator_adv_weight,
            l1_weight=hp.l1_weight,
            **self._term_options(),
        )

    def discriminator_losses(
        self,
        real_source: PatchOutputs,
        fake_source: PatchOutputs,
        real_target: PatchOutputs,
        fake_target: PatchOutputs,
        labels: Tensor,
    ) -> dict[str, Tensor]:
        """D's terms and total: :func:`~lightning_uda.methods.lsd_seg_losses.
        discriminator_objective`."""
        return discriminator_objective(
            real_source, fake_source, real_target, fake_target, labels, **self._term_options()
        )

    # ------------------------------------------------------------------ the three forwards
    def segmentor_phase(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], _Carry]:
        """Segmentor forward on both domains, G and D frozen: ``(segmentor_losses`` (+ ``"mcc"``
        when ``mcc_weight > 0``), what updates 2–3 reuse``)``."""
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
    def training_losses(self, batch: Mapping[str, Any]) -> Losses:
        """Update 1, the segmentor's loss (back-propagated and stepped by the base); keeps what
        G's and D's updates reuse."""
        terms, self._carry = self.segmentor_phase(batch)
        batch_size = batch["source"]["image"].shape[0]
        self._log_terms({k: v for k, v in terms.items() if k != "segmentor"}, batch_size)
        yield "segmentor", terms["segmentor"]

    def adversary_updates(self, batch: Mapping[str, Any], step: bool) -> None:
        """Updates 2 and 3: G, then D, each a forward, backward and (if ``step``) step."""
        carry, self._carry = self._carry, None
        batch_size = batch["source"]["image"].shape[0]
        terms, fakes = self.generator_phase(carry)
        self.adversary_backward("generator", terms["generator"], hint="generator_lr")
        self._log_terms(terms, batch_size)
        if step:
            self.generator_optimizer_step()
        del terms
        terms = self.discriminator_phase(carry, fakes)
        self.adversary_backward("discriminator", terms["discriminator"], hint="discriminator_lr")
        self._log_terms(terms, batch_size)
        if step:
            self.discriminator_optimizer_step()
            self.check_finite_state("generator")  # the segmentor was checked after its step
            self.check_finite_state("discriminator")

    def _log_terms(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value.detach(), batch_size=batch_size)

    def generator_optimizer_step(self) -> None:
        """Step and zero G's optimiser (through the strategy: not counted in ``global_step``)."""
        self.adversary_optimizer_step(1, "generator")

    def discriminator_optimizer_step(self) -> None:
        """Step and zero D's optimiser (through the strategy: not counted in ``global_step``)."""
        self.adversary_optimizer_step(2, "discriminator")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The segmentor's optimiser and poly schedule, then G's and D's Adam (constant lr)."""
        segmentor = super().configure_optimizers()
        hp = self.hparams
        generator = self.adversary_optimizer(
            self.generator.parameters(), lr=hp.generator_lr, betas=hp.generator_betas, poly=False
        )
        discriminator = self.adversary_optimizer(
            self.discriminator.parameters(),
            lr=hp.discriminator_lr,
            betas=hp.discriminator_betas,
            poly=False,
        )
        return segmentor, generator, discriminator
