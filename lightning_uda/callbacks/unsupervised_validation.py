"""`UnsupervisedValidation`: label-free selection signals on unlabelled target images.

Selecting a checkpoint (or a loss weight) by ``val/mIoU`` on labelled target images uses the
target labels that unsupervised domain adaptation assumes absent. This callback scores the model
on an *unlabelled* target split at every validation with the signals of
:mod:`lightning_uda.selection` and logs them as ``val_unsup/<name>``, so that::

    ModelCheckpoint(monitor="val_unsup/im", mode="max")

keeps the best checkpoint by a label-free criterion (``SIGNALS[name][0]`` is the mode). The
labelled ``val/mIoU`` can still be logged next to it, for reporting.

**Several targets.** ``data={"night": ..., "fog": ...}`` scores each target on its own and logs
``val_unsup/<name>/<signal>``; the first target's values are also logged as
``val_unsup/<signal>``, as ``val/mIoU`` follows the primary labelled target
(:mod:`lightning_uda.methods.evaluation`). Put the target the run is about first.

**When.** The signals are computed in ``on_validation_epoch_end``, on every rank, after the
validation loop. Values logged there with ``pl_module.log`` reach ``trainer.callback_metrics``
when the epoch's metrics are collected, which Lightning does before it calls
``on_validation_end``, the hook in which ``ModelCheckpoint`` reads the monitored value (and
Lightning runs checkpoint callbacks after all others anyway). Nothing is computed during the
sanity check. The callback therefore needs a validation loop: keep a val dataloader (the
labelled val set, for reporting) and ``limit_val_batches > 0``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_uda.callbacks.selection_statistics import (
    _signal_values,
    _Statistics,
)
from lightning_uda.callbacks.unlabelled_data import (
    check_frequencies,
    check_input_space,
    count_source_frequencies,
    rank_batches,
)
from lightning_uda.selection import SIGNALS

__all__ = ["UnsupervisedValidation"]

#: Prefix of the logged metrics.
PREFIX = "val_unsup"
#: Seeds of the SND pixel keys: batch ``i`` draws from ``seed + i * _BATCH_SEED_STRIDE``.
_BATCH_SEED_STRIDE = 1_000_003


class UnsupervisedValidation(Callback):
    """Log label-free selection signals ``val_unsup/<name>`` on unlabelled target images.

    At every validation (not the sanity check) the student runs on the first ``max_batches``
    batches of ``data`` (``pl_module.infer`` and a softmax, under ``torch.no_grad`` and with the
    module in eval mode; every submodule's mode is restored afterwards) and the signals of
    :data:`lightning_uda.selection.SIGNALS` are computed over all those pixels:

    - ``entropy``: mean normalised entropy (lower is better);
    - ``im``: information maximisation, with the mean prediction of the *whole* split;
    - ``confident_fraction``: share of pixels with max probability >= ``confidence_threshold``;
    - ``class_kl``: KL of the split's argmax class histogram from the source label frequencies;
    - ``agreement``: mIoU (percent) between the student's and the teacher's argmax over the
      split (one confusion matrix), for modules with a ``teacher`` (self-training methods). The
      teacher runs as when it pseudo-labels (``pl_module.teacher_logits``: with
      ``teacher_bn="train"`` its BatchNorm uses each batch's statistics), and both maps are
      compared at the image resolution;
    - ``snd``: soft neighbourhood density of the probability rows of ``snd_pixels`` pixels
      drawn uniformly from the split (the smallest of per-pixel random keys; batch ``i`` draws
      its keys from ``seed + 1_000_003·i``, so every validation, and every world size, scores the
      same pixels).

    Each is accumulated as split-level sums (entropy, probability and confidence sums, class
    histogram, confusion matrix, SND sample), so the result equals one call of the
    :mod:`lightning_uda.selection` function on all the split's pixels. Under DDP rank ``r`` of
    ``W`` takes batches ``r, r + W, …`` and the sums are all-reduced (the SND samples gathered):
    the values do not depend on the world size, and every rank logs the same ones.

    **Resolution.** With ``upsample=True`` (default) the logits are upsampled to the image size
    (``pl_module.upsample``, the module's ``align_corners`` rule), i.e. the signals score the
    label map the model would output, as the evaluation does; ``upsample=False`` scores the
    network's output resolution (``pl_module.infer``: 1/8 for DeepLabV2, 64× fewer pixels, and
    bilinear upsampling does change the statistics: interpolated boundary pixels are less
    confident). Compare values computed one way only.

    **Source frequencies** (``class_kl``): ``source_frequencies`` if given, else counted from
    the labels of the datamodule's source dataset (``trainer.datamodule.source``) on first use,
    by rank 0 and broadcast: the rare-class-sampling statistics when the datamodule has them,
    else :func:`~lightning_uda.data.rcs.class_pixel_counts` cached like them (under
    ``$LIGHTNING_UDA_CACHE``). Counting GTA5's 24,966 labels takes minutes, once.

    Args:
        data: unlabelled target images, or ``{name: images}`` for several targets (see the
            module docstring): a ``Dataset`` (items ``{"image": 3×H×W, ...}``, e.g.
            ``Cityscapes(root, "train", transform=preset("cityscapes_val"),
            return_mask=False)``, or a ``Subset`` of it) or a ``DataLoader`` of batches
            ``{"image": B×3×H×W, ...}`` (or ``(images, ...)`` tuples). Masks and other keys are
            ignored. Prefer a dataset: under DDP each rank then loads only its own batches
            (from a loader every rank reads every batch and skips the others'). Use a fixed
            order (no shuffling), so every validation scores the same images.
        max_batches: score the first ``max_batches`` batches only (``None``: all).
        batch_size: images per batch when ``data`` is a dataset.
        num_workers: loader workers when ``data`` is a dataset.
        signals: names from :data:`~lightning_uda.selection.SIGNALS` to compute; ``None``
            (default) computes all that apply: ``agreement`` only for a module with a teacher
            (skipped silently otherwise), ``class_kl`` only with a source
            (``source_frequencies`` or a datamodule with a ``source`` dataset; skipped with a
            warning otherwise). Named explicitly, a missing source is an error and a missing
            teacher a warning (so one list can serve every method).
        snd_pixels: SND pixel budget N (its value depends on N: compare equal budgets).
        snd_temperature: SND temperature τ (0.05).
        confidence_threshold: τ of ``confident_fraction`` (0.968, DACS').
        source_frequencies: ``K`` source class frequencies for ``class_kl``.
        kl_eps: smoothing of both distributions of ``class_kl``.
        upsample: score the logits upsampled to the image size (see above).
        seed: seed of the SND pixel sample.

    Raises:
        TypeError: ``data`` is neither a ``Dataset`` nor a ``DataLoader``.
        ValueError: an unknown signal name, a non-positive budget, batch size or temperature, a
            threshold outside [0, 1], or negative / all-zero ``source_frequencies``; when
            scoring: images in another input space than the module's, ``source_frequencies``
            of the wrong length, or ``class_kl`` requested without any source.

    Example:
        >>> unlabelled = Cityscapes(root, "train", transform=preset("cityscapes_val"),
        ...                         return_mask=False)  # doctest: +SKIP
        >>> callbacks = [UnsupervisedValidation(unlabelled, max_batches=500),
        ...              ModelCheckpoint(monitor="val_unsup/im", mode="max")]  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Dataset | DataLoader | Mapping[str, Dataset | DataLoader],
        *,
        max_batches: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        signals: Sequence[str] | None = None,
        snd_pixels: int = 2048,
        snd_temperature: float = 0.05,
        confidence_threshold: float = 0.968,
        source_frequencies: Sequence[float] | Tensor | None = None,
        kl_eps: float = 1e-6,
        upsample: bool = True,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        targets: dict[str | None, Dataset | DataLoader] = (
            {str(k): v for k, v in data.items()} if isinstance(data, Mapping) else {None: data}
        )
        if not targets:
            raise ValueError(f"{name}: data is an empty mapping; give at least one target")
        for target, images in targets.items():
            if not isinstance(images, (Dataset, DataLoader)):
                where = "" if target is None else f"[{target!r}]"
                raise TypeError(
                    f"{name}: data{where} must be a Dataset or a DataLoader, got {type(images)}"
                )
            if target is not None and (not target or "/" in target):
                raise ValueError(f"{name}: target name {target!r} must be non-empty, without '/'")
        if isinstance(signals, str):
            signals = [signals]
        unknown = [s for s in signals or () if s not in SIGNALS]
        if unknown:
            raise ValueError(f"{name}: unknown signal(s) {unknown}; choose from {list(SIGNALS)}")
        if signals is not None and not signals:
            raise ValueError(f"{name}: signals is empty; pass None for all of {list(SIGNALS)}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"{name}: max_batches must be >= 1 or None, got {max_batches}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"{name}: batch_size must be >= 1 and num_workers >= 0, got {batch_size} and "
                f"{num_workers}"
            )
        if snd_pixels < 2:
            raise ValueError(
                f"{name}: snd_pixels must be >= 2 (SND compares pixels), got {snd_pixels}"
            )
        if not snd_temperature > 0:
            raise ValueError(f"{name}: snd_temperature must be > 0, got {snd_temperature}")
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(
                f"{name}: confidence_threshold must be in [0, 1], got {confidence_threshold}"
            )
        if kl_eps < 0:
            raise ValueError(f"{name}: kl_eps must be >= 0, got {kl_eps}")
        #: The targets' images by name (``None``: one unnamed target).
        self.targets = targets
        #: The first target's images.
        self.data = next(iter(targets.values()))
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.explicit = signals is not None
        self.signals: tuple[str, ...] = tuple(dict.fromkeys(signals or SIGNALS))
        self.snd_pixels = snd_pixels
        self.snd_temperature = snd_temperature
        self.confidence_threshold = confidence_threshold
        self.kl_eps = kl_eps
        self.upsample = upsample
        self.seed = int(seed)
        self.source_frequencies = (
            None if source_frequencies is None else self._check_frequencies(source_frequencies)
        )
        #: The values of the last evaluation, name → float (without the prefix).
        self.last_results: dict[str, float] = {}
        #: The last values of every target, by target name (``None``: one unnamed target).
        self.last_results_by_target: dict[str | None, dict[str, float]] = {}
        self._warned: set[str] = set()
        self._space_checked = False

    @staticmethod
    def _check_frequencies(frequencies: Sequence[float] | Tensor) -> Tensor:
        return check_frequencies(frequencies)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Every rank logs the same, already all-reduced values (sync_dist=False on purpose);
        # Lightning's advice to sync them across devices does not apply.
        warnings.filterwarnings(
            "ignore",
            message=rf"It is recommended to use `self.log\('{PREFIX}/",
            category=PossibleUserWarning,
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for index, target in enumerate(self.targets):
            results = self.evaluate(pl_module, trainer, target=target)
            prefixes = [PREFIX] if target is None else [f"{PREFIX}/{target}"]
            if target is not None and index == 0:  # the plain keys follow the first target
                prefixes.append(PREFIX)
            for prefix in prefixes:
                for name, value in results.items():
                    pl_module.log(f"{prefix}/{name}", value, sync_dist=False)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        pl_module: LightningModule,
        trainer: Trainer | None = None,
        target: str | None = None,
    ) -> dict[str, float]:
        """Score ``pl_module`` on the unlabelled data of ``target`` (default: the first):
        signal name → value.

        Called by the hook; callable directly too (e.g. to score a loaded checkpoint), with
        ``trainer=None`` outside a run (no DDP reduction, no datamodule: ``class_kl`` then needs
        ``source_frequencies``). Under DDP every rank must call it.
        """
        trainer = trainer if trainer is not None else getattr(pl_module, "_trainer", None)
        if target is None:
            target = next(iter(self.targets))
        if target not in self.targets:
            raise ValueError(
                f"UnsupervisedValidation: no target {target!r}; the targets are "
                f"{list(self.targets)}"
            )
        num_classes = int(getattr(pl_module, "num_classes", 0) or 0)
        if num_classes < 2:
            raise ValueError(
                f"UnsupervisedValidation: the module needs num_classes >= 2, got {num_classes}"
            )
        self._check_input_space(pl_module)
        teacher = getattr(pl_module, "teacher", None)
        wanted = list(self.signals)
        if "agreement" in wanted and not isinstance(teacher, nn.Module):
            wanted.remove("agreement")
            if self.explicit:
                self._warn_once(
                    "agreement",
                    f"UnsupervisedValidation: {type(pl_module).__name__} has no teacher, so "
                    "'agreement' (student vs EMA teacher) is not computed.",
                )
        frequencies = None
        if "class_kl" in wanted:
            frequencies = self._frequencies(trainer, pl_module, num_classes)
            if frequencies is None:
                wanted.remove("class_kl")
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        stats = _Statistics(
            num_classes,
            pl_module.device,
            self.confidence_threshold,
            self.snd_pixels if "snd" in wanted else 0,
            agreement="agreement" in wanted,
        )
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            context = trainer.precision_plugin.val_step_context() if trainer else None
            with torch.no_grad(), context or contextlib.nullcontext():
                for index, images in self._batches(rank, world, self.targets[target]):
                    self._update(stats, pl_module, images, index, "agreement" in wanted)
        finally:
            for module, training in modes:
                module.training = training
        if world > 1:
            assert trainer is not None
            stats.load_flat(trainer.strategy.reduce(stats.flat(), reduce_op="sum"))
            if "snd" in wanted:
                keys, rows = stats.padded_sample()
                stats.merge_sample(pl_module.all_gather(keys), pl_module.all_gather(rows))
        results = _signal_values(
            stats,
            wanted,
            frequencies,
            kl_eps=self.kl_eps,
            snd_temperature=self.snd_temperature,
        )
        if target == next(iter(self.targets)):
            self.last_results = results
        self.last_results_by_target[target] = results
        return results

    def _update(
        self,
        stats: _Statistics,
        pl_module: LightningModule,
        images: Tensor,
        index: int,
        agreement: bool,
    ) -> None:
        images = images.to(pl_module.device, non_blocking=True)
        size = tuple(images.shape[-2:])
        infer = getattr(pl_module, "infer", pl_module)
        logits = infer(images).float()
        full = self._resize(pl_module, logits, size) if self.upsample else logits
        probs = torch.softmax(full, dim=1)
        pair = None
        if agreement:
            student = full if self.upsample else self._resize(pl_module, logits, size)
            teacher_logits = getattr(pl_module, "teacher_logits", None)
            if callable(teacher_logits):
                teacher = teacher_logits(images)
            else:
                teacher = pl_module.teacher(images)
            teacher = self._resize(pl_module, teacher.float(), size)
            pair = (student.argmax(dim=1), teacher.argmax(dim=1))
        stats.update(probs, self.seed + index * _BATCH_SEED_STRIDE, pair)

    @staticmethod
    def _resize(pl_module: LightningModule, logits: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(logits.shape[-2:]) == size:
            return logits
        upsample = getattr(pl_module, "upsample", None)
        if callable(upsample):
            return upsample(logits, size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ data
    def _batches(
        self, rank: int, world: int, data: Dataset | DataLoader
    ) -> Iterator[tuple[int, Tensor]]:
        """``(global batch index, images)`` of this rank's share of ``data``'s first batches."""
        return rank_batches(
            data,
            rank,
            world,
            max_batches=self.max_batches,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
        )

    def _check_input_space(self, pl_module: LightningModule) -> None:
        if self._space_checked:
            return
        self._space_checked = True
        for target, data in self.targets.items():
            self._check_target_space(pl_module, target, data)

    def _check_target_space(
        self, pl_module: LightningModule, target: str | None, data: Dataset | DataLoader
    ) -> None:
        try:
            check_input_space(pl_module, target, data)
        except ValueError:
            self._space_checked = False
            raise

    # ------------------------------------------------------------------ source frequencies
    def _frequencies(
        self, trainer: Trainer | None, pl_module: LightningModule, num_classes: int
    ) -> Tensor | None:
        if self.source_frequencies is None:
            datamodule = getattr(trainer, "datamodule", None) if trainer else None
            source = getattr(datamodule, "source", None)
            if source is None:
                message = (
                    "UnsupervisedValidation: 'class_kl' needs the source label distribution: "
                    "pass source_frequencies=[...] (K values), or train with a datamodule that "
                    "has a `source` dataset."
                )
                if self.explicit:
                    raise ValueError(message)
                self._warn_once("class_kl", message + " It is skipped.")
                return None
            assert trainer is not None
            frequencies = None
            if trainer.is_global_zero:
                frequencies = count_source_frequencies(datamodule, source, pl_module, num_classes)
            frequencies = trainer.strategy.broadcast(frequencies, src=0)
            self.source_frequencies = self._check_frequencies(frequencies)
        if self.source_frequencies.numel() != num_classes:
            raise ValueError(
                f"UnsupervisedValidation: source_frequencies has {self.source_frequencies.numel()}"
                f" entries but the module has {num_classes} classes"
            )
        return self.source_frequencies

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
