"""`AdvEntModule`: adversarial entropy minimisation (Vu et al., AdvEnt, CVPR 2019, §3.2).

Algorithm per iteration (labels: source = 0, target = 1; BCE-with-logits; I = weighted
self-information map ``-P·log2(P) / log2(K)`` of the softmax of the logits interpolated to the
input size):
1. segmentor step, discriminators frozen:
   a. source CE on the labelled source batch (+ 0.1 × the auxiliary output's CE);
   b. adversarial loss λ_adv · BCE(D(I_t), 0): the target entropy map labelled as *source*
      (+ λ_adv_aux · the same for the auxiliary output and its own discriminator);
   c. SGD step of the segmentor (poly decay).
2. discriminator step, on maps detached from the segmentor:
   L_D = ½ BCE(D(I_s), 0) + ½ BCE(D(I_t), 1) per level; Adam step (poly decay).
λ_adv = 0.001, λ_adv_aux = 0.0002; D: Adam lr 1e-4, betas (0.9, 0.99) (AdvEnt's config).

The alternation of the two steps, the step counting (``max_steps=N`` means N iterations),
checkpointing and the DDP requirement are :class:`~lightning_uda.methods.adversarial.
AdversarialMixin`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_uda.methods.adversarial import (
    SOURCE_DOMAIN,
    AdversarialMixin,
    discriminator_loss,
    domain_bce,
    frozen,
)
from lightning_uda.methods.base import Losses, check_range
from lightning_uda.methods.multi_level import MultiLevelModule, entropy_maps
from lightning_uda.models import Discriminator

#: Five stride-2 convs: inputs need at least 2**5 pixels per side.
MIN_DISCRIMINATOR_INPUT = 32


class AdvEntModule(AdversarialMixin, MultiLevelModule):
    """AdvEnt: a discriminator on entropy maps makes target predictions look like source ones.

    Overridable hooks: :meth:`discriminator_inputs` (what D sees: the entropy maps here, the
    softmax maps in :class:`~lightning_uda.methods.AdaptSegNetModule`), :meth:`domain_criterion`
    (how D's output is scored), :meth:`discriminator_losses` (the D objective).

    **Memory.** With ``fold_gradients=True`` the source gradients are folded into SGD's
    momentum buffer before the target pass (:class:`~lightning_uda.optim.FoldingSGD`); the maps
    reach the discriminators channels-last without a copy; D's step recomputes its maps from
    detached low-resolution logits (one map over both domains, one level at a time) instead of
    keeping input-resolution maps through the segmentor's backward. D's own arithmetic is fixed
    per pixel (its share of an iteration: ``benchmarks/README.md``).

    Args:
        adv_weight: λ_adv of the main output (0.001).
        aux_adv_weight: λ_adv of the auxiliary output of a multi-level segmentor (0.0002).
        discriminator_lr: Adam learning rate of the discriminators (1e-4), poly-decayed like the
            segmentor's.
        discriminator_betas: Adam betas (0.9, 0.99).
        discriminator_width: channels of D's first conv (64; then ×2 per layer).
        discriminator_channels_last: keep the discriminators' weights and inputs in the
            channels-last memory format (default on: the same numbers, faster convolutions on
            the CPU (``benchmarks/README.md``) and tensor cores under AMP on GPUs).
        **kwargs: see :class:`MultiLevelModule` (``aux_seg_weight``) and :class:`UDAModule`.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        adv_weight: float = 1e-3,
        aux_adv_weight: float = 2e-4,
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.9, 0.99),
        discriminator_width: int = 64,
        discriminator_channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        owner = type(self).__name__
        check_range(owner, "adv_weight", adv_weight, 0)
        check_range(owner, "aux_adv_weight", aux_adv_weight, 0)
        check_range(owner, "discriminator_lr", discriminator_lr, 0, low_open=True)
        check_range(owner, "discriminator_width", discriminator_width, 1)
        self.adv_weights = {"main": adv_weight, "aux": aux_adv_weight}
        #: One discriminator per output level ("main"[, "aux"]), on K-channel entropy maps.
        self.discriminators = nn.ModuleDict(
            {
                level: Discriminator(in_channels=self.num_classes, ndf=discriminator_width)
                for level in self.levels
            }
        )
        self.discriminator_format = (
            torch.channels_last if discriminator_channels_last else torch.contiguous_format
        )
        self.discriminators.to(memory_format=self.discriminator_format)
        #: domain → (level → detached logits at the model's resolution, input size). The maps
        #: D is trained on are recomputed from them in D's step (no graph), instead of keeping
        #: input-resolution maps alive through the segmentor's backward.
        self._detached_logits: dict[str, tuple[dict[str, Tensor], tuple[int, int]]] = {}

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """The discriminator halves its input five times: images need 32×32 pixels or more."""
        super().check_batch(batch)
        for domain in ("source", "target"):
            self._check_size(tuple(batch[domain]["image"].shape[-2:]), f"the {domain} batch")

    @staticmethod
    def _check_size(size: tuple[int, int], where: str = "the images") -> None:
        if min(size) < MIN_DISCRIMINATOR_INPUT:
            raise ValueError(
                f"AdvEnt's discriminator halves its input 5 times, so images need at least "
                f"{MIN_DISCRIMINATOR_INPUT}×{MIN_DISCRIMINATOR_INPUT} pixels; got {tuple(size)} "
                f"({where}). Use larger crops."
            )

    # ------------------------------------------------------------------ hooks
    def discriminator_inputs(
        self, logits: Mapping[str, Tensor], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Level → the ``B×K×H×W`` map the discriminator sees, at the input size ``(H, W)``.

        AdvEnt: the weighted self-information maps (:meth:`entropy_maps`). Override it to align
        another output space (AdaptSegNet: the softmax).
        """
        return self.entropy_maps(logits, size)

    def entropy_maps(
        self, logits: Mapping[str, Tensor], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Level → ``B×K×H×W`` weighted self-information map at the input size ``(H, W)``."""
        self._check_size(size)
        return entropy_maps(logits, size, align_corners=self.align_corners)

    def _in_discriminator_format(self, logits: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The low-resolution logits in D's memory format: upsampling and the channel softmax
        keep it (:func:`~lightning_uda.losses.channel_softmax`), so D's input needs no copy."""
        return {k: z.contiguous(memory_format=self.discriminator_format) for k, z in logits.items()}

    def _detached_maps(self, level: str, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """D's input for ``level`` from detached low-resolution ``logits`` (no graph), in D's
        memory format."""
        with torch.no_grad():
            inputs = self.discriminator_inputs(self._in_discriminator_format({level: logits}), size)
        return inputs[level].contiguous(memory_format=self.discriminator_format)

    def domain_loss(self, level: str, maps: Tensor, domain_label: float) -> Tensor:
        """Discriminator ``level``'s loss on ``maps`` against a constant domain label."""
        logits = self.discriminators[level](
            maps.contiguous(memory_format=self.discriminator_format)
        )
        return self.domain_criterion(logits, domain_label)

    def domain_criterion(self, logits: Tensor, domain_label: float) -> Tensor:
        """How D's output is scored: BCE-with-logits against a constant label (AdvEnt's; an
        LS-GAN variant would return the mean squared error instead)."""
        return domain_bce(logits, domain_label)

    def source_loss(self, source: Mapping[str, Tensor]) -> Tensor:
        """Source CE over every level; keeps the detached source logits for D's step."""
        logits = self.level_logits(source["image"])
        size = tuple(source["image"].shape[-2:])
        self._check_size(size)
        self._detached_logits["source"] = ({k: z.detach() for k, z in logits.items()}, size)
        return self.supervised_loss(logits, source["mask"])

    def adaptation_losses(self, batch: Mapping[str, Any]) -> Losses:
        """Step 1b: the target entropy maps labelled as source, through frozen discriminators."""
        yield from super().adaptation_losses(batch)
        images = batch["target"]["image"]
        size = tuple(images.shape[-2:])
        logits = self.level_logits(images)
        self._detached_logits["target"] = ({k: z.detach() for k, z in logits.items()}, size)
        loss = self._adversarial_loss(logits, size, len(images))
        del logits  # the generator's frame lives on through the backward: keep no maps in it
        yield "adversarial", loss

    def _adversarial_loss(
        self, logits: Mapping[str, Tensor], size: tuple[int, int], batch_size: int
    ) -> Tensor:
        """``Σ_level λ_level · BCE(D_level(maps), source)`` with the discriminators frozen."""
        maps = self.discriminator_inputs(self._in_discriminator_format(logits), size)
        loss = torch.zeros((), device=next(iter(maps.values())).device)
        with frozen(self.discriminators):
            for level in list(maps):
                adversarial = self.domain_loss(level, maps.pop(level), SOURCE_DOMAIN)
                self.log(f"train/adversarial_{level}", adversarial.detach(), batch_size=batch_size)
                loss = loss + self.adv_weights[level] * adversarial
        return loss

    def discriminator_losses(self) -> Losses:
        """Step 2: ``½ BCE(D(I_s), source) + ½ BCE(D(I_t), target)`` per level, on detached maps."""
        (source, source_size), (target, target_size) = (
            self._detached_logits[domain] for domain in ("source", "target")
        )
        for level, discriminator in self.discriminators.items():
            if source_size == target_size and source[level].shape[1:] == target[level].shape[1:]:
                # One map computation and one D forward over both domains (D has no batch
                # statistics, so each map's output is the same as alone), then each half scored
                # against its own label. One level at a time: one level's maps alive at once.
                both = torch.cat([source[level], target[level]])
                logits = discriminator(self._detached_maps(level, both, source_size))
                split = source[level].shape[0]
                source_logits, target_logits = logits[:split], logits[split:]
            else:  # whole frames of different sizes (AdvEnt's GTA5 1280×720, Cityscapes 1024×512)
                source_logits = discriminator(
                    self._detached_maps(level, source[level], source_size)
                )
                target_logits = discriminator(
                    self._detached_maps(level, target[level], target_size)
                )
            loss = discriminator_loss(source_logits, target_logits, self.domain_criterion)
            yield f"discriminator_{level}", loss

    # ------------------------------------------------------------------ algorithm
    def adversary_updates(self, batch: Mapping[str, Any], step: bool) -> None:
        """Step 2: back-propagate each level's D loss; step D's optimiser if ``step``."""
        batch_size = batch["source"]["image"].shape[0]
        for name, loss in self.discriminator_losses():
            self.adversary_backward(name, loss, hint="discriminator_lr")
            self.log(f"train/loss_{name}", loss.detach(), batch_size=batch_size)
        self._detached_logits = {}
        if step:
            self.discriminator_optimizer_step()
            self.check_finite_state("discriminators")  # the rest was checked after its step

    def discriminator_optimizer_step(self) -> None:
        """Step and zero the discriminators' optimiser and step its poly schedule."""
        self.adversary_optimizer_step(1, "discriminator")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The segmentor's optimiser, then one Adam over both discriminators with AdvEnt's poly
        decay (the same update as AdvEnt's two, Adam's state being per parameter)."""
        segmentor = super().configure_optimizers()
        hp = self.hparams
        discriminators = self.adversary_optimizer(
            self.discriminators.parameters(),
            lr=hp.discriminator_lr,
            betas=hp.discriminator_betas,
            poly=True,
        )
        return segmentor, discriminators
