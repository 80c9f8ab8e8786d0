"""`DANNModule`: domain-adversarial training through gradient reversal (Ganin & Lempitsky, 2015).

Algorithm per step (labels: source = 0, target = 1; BCE-with-logits averaged over positions):
1. source forward (one encoder pass, :func:`~lightning_uda.models.forward_with_features`):
   logits and encoder features ``f_s``; target forward: encoder features ``f_t``;
2. loss = CE(source) + λ_adv · ½ (BCE(D(GRL_λp(f_s)), 0) + BCE(D(GRL_λp(f_t)), 1)), back-propagated
   once: the domain classifier ``D`` descends its BCE while the gradient reversal layer hands the
   segmentor ``-λ_p`` times that gradient, so the features learn to confuse ``D``;
3. one optimiser step for the segmentor and ``D`` together (``D`` is one extra parameter group).
λ_p = 2 / (1 + exp(-γ p)) - 1 with γ = 10 and p = step / total_steps (the paper's schedule);
λ_adv = 1.

``D`` is per position: 1×1 convolutions on the deepest encoder feature map, so every feature
vector of the map is classified on its own (a fully convolutional version of the DANN domain
classifier, which sees one pooled feature vector per image in classification).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_uda.losses import cross_entropy
from lightning_uda.methods.adversarial import (
    SOURCE_DOMAIN,
    TARGET_DOMAIN,
    discriminator_loss,
    domain_accuracy,
)
from lightning_uda.methods.base import Losses, UDAModule, check_range
from lightning_uda.models import dann_coefficient, forward_with_features, gradient_reversal
from lightning_uda.models.discriminator import PixelDomainClassifier

__all__ = ["DANNModule", "PixelDomainClassifier", "SOURCE_DOMAIN", "TARGET_DOMAIN"]

#: Side of the blank image the segmentor is probed with to find its feature channels.
PROBE_SIZE = 64


def _probe_feature_channels(model: nn.Module) -> list[int]:
    """Channels of each feature map of ``model``, from a forward of one blank image (eval mode,
    no gradient; the model's mode is restored)."""
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else None
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=device, dtype=dtype)
            _, features = forward_with_features(model, image)
    finally:
        model.train(was_training)
    return [int(f.shape[1]) for f in features]


class DANNModule(UDAModule):
    """DANN for segmentation: a per-position domain classifier on encoder features, trained
    through gradient reversal in the same backward as the source cross-entropy.

    **One backward.** :meth:`training_losses` yields a single loss, ``"dann"`` = source CE +
    λ_adv · domain loss (logged as ``train/loss_dann``; its parts as ``train/loss_source``,
    ``train/loss_adversarial`` (weighted) and ``train/domain_loss`` (unweighted, ln 2 ≈ 0.693
    when ``D`` is at chance)). The source logits and features come from one forward; the
    target's features from one forward (its logits are not used). Both graphs are alive at the
    backward, so peak memory is that of a forward/backward of both batches (like tllib's DANN,
    which concatenates them); other methods back-propagate each domain's loss separately. Every
    segmentor parameter gets a gradient (from the CE), and so does ``D``, so plain DDP works
    (no ``find_unused_parameters``).

    **Optimiser.** ``D``'s parameters are one extra group (``"domain_classifier"``, learning
    rate ``lr · domain_lr_mult``) of the segmentor's optimiser, poly-decayed and clipped
    (``gradient_clip_val``) with it; ``D`` is a submodule, so checkpoints carry its weights and
    optimiser state. tllib likewise puts its discriminator in the one SGD optimiser, at the
    head's learning rate (10× the backbone's), with the same decay.

    **Defaults and the references.** The loss is ½ (BCE_s + BCE_t), as tllib's
    ``DomainAdversarialLoss``. λ_adv = 1: tllib's trade-off is 1 and its schedule multiplies
    the gradient reversal coefficient, not the loss; the paper's objective is the same (the
    annealed λ_p sits in the reversal layer). The schedule here is the paper's (γ = 10 over the
    run, ``p = uda_step / total_steps()``, clipped at 1); tllib's default reversal layer uses
    ``α = 1`` over ``i / 1000`` iterations instead, i.e. ``grl_gamma = total_steps / 1000``
    here. ``D``'s BCE is never scaled by λ_p (only the gradient reaching the features is), so
    ``D`` learns from step 0 while the features receive no adversarial gradient (λ_0 = 0).
    tllib labels the source 1 and the target 0; with the symmetric loss that only flips the
    sign of ``D``'s logit.

    **Segmentors.** Features come from :func:`~lightning_uda.models.forward_with_features`
    (DeepLabV2: ``[layer3, layer4]``; TinyUNet; smp models; DAFormer's MiT stages), so no
    architecture-specific code is needed. ``feature_channels`` defaults to a probe: one forward
    of a blank 64×64 image at construction. A multi-level DeepLabV2's auxiliary classifier is not
    trained (build it with ``multi_level=False``).

    Args:
        adv_weight: λ_adv, weight of the domain loss in the segmentor's objective (1.0); ``D``'s
            own gradient is scaled by it too.
        grl_schedule: True: the reversal coefficient follows λ_p (0 at step 0, → 1); False: 1.
        grl_gamma: γ of the schedule (10).
        hidden: width of ``D``'s hidden 1×1 convolutions (256).
        feature_level: which encoder feature map ``D`` classifies (index into the
            shallow → deep list; -1 = the deepest).
        feature_channels: channels of that map (default: probed from the segmentor).
        domain_lr_mult: learning rate of ``D`` relative to ``lr`` (10, as the head).
        **kwargs: the arguments of :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        adv_weight: float = 1.0,
        grl_schedule: bool = True,
        grl_gamma: float = 10.0,
        hidden: int = 256,
        feature_level: int = -1,
        feature_channels: int | None = None,
        domain_lr_mult: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        owner = type(self).__name__
        check_range(owner, "adv_weight", adv_weight, 0)
        check_range(owner, "grl_gamma", grl_gamma, 0, low_open=True)
        check_range(owner, "hidden", hidden, 1)
        check_range(owner, "feature_channels", feature_channels, 1)
        check_range(owner, "domain_lr_mult", domain_lr_mult, 0, low_open=True)
        if not isinstance(feature_level, int) or isinstance(feature_level, bool):
            raise ValueError(f"{owner}: feature_level must be an int, got {feature_level!r}")
        if feature_channels is None:
            try:
                channels = _probe_feature_channels(self.model)
            except Exception as error:  # any failure: ask for the channels
                raise ValueError(
                    f"{owner}: could not probe the segmentor's feature channels with a "
                    f"{PROBE_SIZE}×{PROBE_SIZE} image ({type(error).__name__}: {error}); pass "
                    "feature_channels=C (the channels of the feature map at feature_level)."
                ) from error
            if not -len(channels) <= feature_level < len(channels):
                raise ValueError(
                    f"{owner}: feature_level={feature_level} is out of range; the segmentor "
                    f"gives {len(channels)} feature maps (channels {channels}), so use "
                    f"-{len(channels)}..{len(channels) - 1}."
                )
            feature_channels = channels[feature_level]
        self.adv_weight = float(adv_weight)
        self.grl_schedule = bool(grl_schedule)
        self.grl_gamma = float(grl_gamma)
        self.feature_level = feature_level
        self.domain_lr_mult = float(domain_lr_mult)
        #: The per-position domain classifier ``D`` (logit > 0: target).
        self.domain_classifier = PixelDomainClassifier(feature_channels, hidden)

    # ------------------------------------------------------------------ hooks
    def grl_coefficient(self) -> float:
        """The reversal coefficient of this step: λ_p of ``uda_step / total_steps()``, or 1."""
        if not self.grl_schedule:
            return 1.0
        return dann_coefficient(self.uda_step / self.total_steps(), gamma=self.grl_gamma)

    def select_features(self, features: Sequence[Tensor]) -> Tensor:
        """The feature map ``D`` classifies (``features[feature_level]``)."""
        if not -len(features) <= self.feature_level < len(features):
            raise ValueError(
                f"{type(self).__name__}: feature_level={self.feature_level} is out of range for "
                f"the segmentor's {len(features)} feature maps."
            )
        return features[self.feature_level]

    def domain_logits(self, features: Tensor, coeff: float | Tensor) -> Tensor:
        """``B×1×h×w`` logits of ``D`` on ``features`` seen through gradient reversal."""
        return self.domain_classifier(gradient_reversal(features, coeff))

    def domain_loss(
        self, source_features: Tensor, target_features: Tensor, coeff: float | Tensor
    ) -> tuple[Tensor, Tensor]:
        """``½ (BCE(D(GRL(f_s)), 0) + BCE(D(GRL(f_t)), 1))`` and ``D``'s accuracy
        (:func:`~lightning_uda.methods.adversarial.discriminator_loss`, ``domain_accuracy``).

        Each BCE is the mean over the positions of its domain's map (so each domain weighs ½
        whatever its crop size). Unweighted by λ_adv.

        Args:
            source_features: ``B_s×C×h_s×w_s`` source features.
            target_features: ``B_t×C×h_t×w_t`` target features.
            coeff: the gradient reversal coefficient (λ_p).

        Returns:
            ``(loss, accuracy)``: the scalar loss and the mean of the two domains' accuracies
            (detached, in [0, 1]; a position counts as target when its logit is >= 0).
        """
        source_logits = self.domain_logits(source_features, coeff)
        target_logits = self.domain_logits(target_features, coeff)
        loss = discriminator_loss(source_logits, target_logits)
        return loss, domain_accuracy(source_logits.detach(), target_logits.detach())

    # ------------------------------------------------------------------ algorithm
    def training_losses(self, batch: Mapping[str, Any]) -> Losses:
        """One loss for source CE and both domains' adversarial terms, then
        :meth:`adaptation_losses` (the base's optional MCC)."""
        source, target = batch["source"], batch["target"]
        batch_size = source["image"].shape[0]
        coeff = self.grl_coefficient()
        logits, source_features = forward_with_features(self.model, source["image"])
        segmentation = cross_entropy(
            logits, source["mask"], ignore_index=self.ignore_index, align_corners=self.align_corners
        )
        del logits
        _, target_features = forward_with_features(self.model, target["image"])
        domain, accuracy = self.domain_loss(
            self.select_features(source_features), self.select_features(target_features), coeff
        )
        adversarial = self.adv_weight * domain
        self.log("train/loss_source", segmentation.detach(), batch_size=batch_size)
        self.log("train/loss_adversarial", adversarial.detach(), batch_size=batch_size)
        self.log("train/domain_loss", domain.detach(), batch_size=batch_size)
        self.log("train/domain_accuracy", accuracy, batch_size=batch_size)
        self.log("train/grl_coeff", float(coeff), batch_size=batch_size)
        yield "dann", segmentation + adversarial
        yield from self.adaptation_losses(batch)

    # ------------------------------------------------------------------ optimisation
    def segmentor_param_groups(self) -> list[dict[str, Any]]:
        """The base's backbone/head groups plus one ``"domain_classifier"`` group at
        ``lr · domain_lr_mult`` (weight decay as the other groups)."""
        groups = super().segmentor_param_groups()
        groups.append(
            {
                "params": list(self.domain_classifier.parameters()),
                "lr": self.hparams.lr * self.domain_lr_mult,
                "name": "domain_classifier",
            }
        )
        return groups
