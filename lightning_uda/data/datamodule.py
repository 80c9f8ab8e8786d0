"""``UDADataModule``: labelled source + unlabelled target for training, labelled target for eval.

Training batches (``train_dataloader``, a Lightning ``CombinedLoader``)::

    {"source": {"image": float B×3×H×W, "mask": long B×H×W, "index": long B},
     "target": {"image": float B'×3×H'×W', "index": long B'}}   # + "mask" if monitoring

``index`` is each sample's index in its dataset (for logging/debugging; methods ignore it).

**Sampling, resuming, rare-class sampling, augmentation randomness**: each domain is an endless,
rank-sharded stream whose sample at each position is a pure function of the seed and the
position, so a resumed run sees the same stream as an uninterrupted one; see
:mod:`lightning_uda.data.sampling`.

**Input space.** All datasets must normalise images the same way (``dataset.normalization``,
see :mod:`lightning_uda.normalization`); :attr:`UDADataModule.normalization` is that common space,
which the methods check against their own at the start of ``fit``.

**Evaluation batches** ``{"image": float B×3×h×w, "mask": long B×H×W}``: with the default
``"full"`` evaluation protocol (``preset("cityscapes_val")``) the masks keep their original
resolution (2048×1024 for Cityscapes) while the images are resized, and the module upsamples its
``K×h×w`` logits to every mask: about ``K·H·W·4`` bytes per image (19 classes at 2048×1024:
160 MB), so ``val_batch_size`` (default 1, as AdvEnt and DACS evaluate) bounds that memory.
Items only stack into a batch if their masks have one size (all Cityscapes frames do); a batch
that mixes sizes raises an error naming them.

**Several validation targets** (``val={"acdc": ..., "cityscapes": ...}`` or a list): one
sequential loader per target, in order (:attr:`UDADataModule.val_names`); the module logs each
target's metrics as ``val/<name>/mIoU`` (and ``val/<name>/IoU/<class>``), and keeps ``val/mIoU``
for the *primary* target (``val_primary``, default the first), so recipes, checkpoint names and
``checkpoints.select_by: val/mIoU`` keep one meaning (see
:mod:`lightning_uda.methods.evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, default_collate

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.checks import (
    _base_dataset,
    _check_classes,
    _check_normalization,
    _source_label,
)
from lightning_uda.data.concat import label_check_indices
from lightning_uda.data.files import AllIgnoreLabelError
from lightning_uda.data.labels import CITYSCAPES_PALETTE
from lightning_uda.data.rcs import (
    RareClassSampler,
    RareClassSampling,
    default_stats_file,
    load_or_compute_class_stats,
)
from lightning_uda.data.rcs import class_pixel_counts as _count_class_pixels
from lightning_uda.data.sampling import (
    DomainSampler,
    RareClassDomainSampler,
    _domain_key,
    _DomainItems,
    _seed_worker,
    _StreamLoader,
)
from lightning_uda.data.val_sets import ValSets, _named_val_sets, default_val_name
from lightning_uda.normalization import InputNormalization

__all__ = ["DomainSampler", "RareClassDomainSampler", "UDADataModule", "default_val_name"]


def _collate_eval(items: list[Mapping[str, Any]]) -> Any:
    """``default_collate``, with a clear error when images or masks differ in size."""
    if not all(isinstance(item, Mapping) for item in items):
        return default_collate(items)
    for key in ("image", "mask"):
        sizes = sorted(
            {tuple(item[key].shape[-2:]) for item in items if hasattr(item.get(key), "shape")}
        )
        if len(sizes) > 1:
            raise ValueError(
                f"An evaluation batch mixes {key}s of different sizes (H, W) {sizes}, which "
                "cannot be stacked. Under the 'full' evaluation protocol masks keep their "
                "original size: use UDADataModule(val_batch_size=1) for datasets of mixed sizes, "
                "or resize the masks too (val_transform(protocol='dacs'))."
            )
    return default_collate(items)


class UDADataModule(L.LightningDataModule):
    """Source (labelled) + target (unlabelled) training stream; labelled target val/test.

    Args:
        source: labelled source-domain dataset (items ``{"image", "mask"}``), e.g. ``GTA5``.
        target: target-domain dataset (items ``{"image"[, "mask"]}``), e.g.
            ``Cityscapes(split="train", return_mask=False)``.
        val: labelled target validation set, e.g. ``Cityscapes(split="val")``; or several:
            ``{name: dataset}`` or a list (named by ``val_names``, else
            :func:`default_val_name`), each evaluated on its own and logged as
            ``val/<name>/mIoU`` (see the module docstring).
        test: optional labelled test set.
        predict: optional set to predict on; our datasets are switched to items with
            ``"path"`` and ``"orig_size"`` (see ``SegmentationFolder.return_meta``).
        batch_size: source samples per batch and process.
        target_batch_size: target samples per batch and process (default: ``batch_size``).
        val_batch_size: batch size of val/test/predict loaders (default 1). With full-resolution
            masks (the ``"full"`` evaluation protocol) each image costs ``K×H×W`` float logits
            when upsampled (Cityscapes: 19×1024×2048, 160 MB); raise it only if that fits, and
            only for datasets whose masks all have one size.
        num_workers: loader worker processes (per loader).
        target_monitor_labels: keep the target ``"mask"`` in training batches, for monitoring
            only (pseudo-label accuracy); otherwise it is removed.
        seed: seed of the sampling order and of the training augmentations.
        pin_memory: pin host memory; default: when CUDA is available.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        class_subsets: metric name → evaluated train ids; default: the source dataset's
            ``class_subsets`` if it defines any (SYNTHIA: mIoU16/mIoU13), else the val set's.
        label_check_items: source labels read at the start of fit to catch all-void labels
            (:meth:`check_source_labels`); 0 skips the check.
        all_ignore_warn_fraction: warn when at least this share of the checked labels is void.
        rare_class_sampling: draw source images by DAFormer's rare-class sampling instead of
            the plain shuffled stream: a :class:`~lightning_uda.data.rcs.RareClassSampling`
            (``True`` for its defaults: T 0.01, more than 3,000 pixels per image, crop re-drawn
            up to 10 times until it holds more than 0.5 × 3,000 pixels of the drawn class).
            The per-image class counts are computed once in :meth:`prepare_data` (progress bar)
            and cached (``stats_file``). Resumable and DDP-aware like the plain stream.
        val_names: names of the validation sets when ``val`` is a list (or one dataset that
            should be logged under its name too).
        val_primary: the target whose metrics are also logged as ``val/mIoU`` (default: the
            first); a name of ``val_names``.

    Raises:
        ValueError: datasets whose ``classes`` differ (both lists are shown), datasets in
            different input spaces (each dataset's ``normalization`` is shown), an empty
            dataset, non-positive batch sizes, two validation sets of one name, or a
            ``val_primary`` that names none of them.

    Example:
        >>> dm = UDADataModule(
        ...     source=GTA5("data/gta5", transform="gta5_train"),
        ...     target=Cityscapes("data/cityscapes", "train", return_mask=False),
        ...     val=Cityscapes("data/cityscapes", "val", transform="cityscapes_val"),
        ... )  # doctest: +SKIP
        >>> trainer = L.Trainer(max_steps=250_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Dataset,
        target: Dataset,
        val: ValSets,
        test: Dataset | None = None,
        predict: Dataset | None = None,
        batch_size: int = 2,
        target_batch_size: int | None = None,
        val_batch_size: int = 1,
        num_workers: int = 2,
        target_monitor_labels: bool = False,
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        class_subsets: Mapping[str, Sequence[int]] | None = None,
        label_check_items: int = 16,
        all_ignore_warn_fraction: float = 0.25,
        rare_class_sampling: RareClassSampling | bool | None = None,
        val_names: Sequence[str] | None = None,
        val_primary: str | None = None,
    ) -> None:
        super().__init__()
        if rare_class_sampling is True:
            rare_class_sampling = RareClassSampling()
        elif rare_class_sampling is False:
            rare_class_sampling = None
        elif isinstance(rare_class_sampling, Mapping):
            rare_class_sampling = RareClassSampling(**rare_class_sampling)
        if rare_class_sampling is not None and not isinstance(
            rare_class_sampling, RareClassSampling
        ):
            raise TypeError(
                "UDADataModule: rare_class_sampling must be a RareClassSampling, True, a dict of "
                f"its fields or None; got {rare_class_sampling!r}"
            )
        self.rare_class_sampling = rare_class_sampling
        self._rcs_counts: np.ndarray | None = None
        if label_check_items < 0 or not 0.0 < all_ignore_warn_fraction <= 1.0:
            raise ValueError(
                "UDADataModule: label_check_items must be >= 0 and all_ignore_warn_fraction in "
                f"(0, 1], got {label_check_items} and {all_ignore_warn_fraction}"
            )
        self.label_check_items = label_check_items
        self.all_ignore_warn_fraction = all_ignore_warn_fraction
        self.val_sets, self._val_named = _named_val_sets(val, val_names)
        names = list(self.val_sets)
        if val_primary is not None and val_primary not in self.val_sets:
            raise ValueError(
                f"UDADataModule: val_primary {val_primary!r} is not a validation set name; the "
                f"names are {names}"
            )
        self.val_primary = val_primary if val_primary is not None else names[0]
        #: The primary validation set (the one ``val/mIoU`` measures; ``classes`` come from it).
        self.val: Dataset = self.val_sets[self.val_primary]
        self.source, self.target = source, target
        self.test, self.predict = test, predict
        self.batch_size = batch_size
        self.target_batch_size = batch_size if target_batch_size is None else target_batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.target_monitor_labels = target_monitor_labels
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        for name in ("batch_size", "target_batch_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        named = {
            "source": source,
            "target": target,
            "val": self.val,
            **{f"val {k!r}": v for k, v in self.val_sets.items() if k != self.val_primary},
            "test": test,
            "predict": predict,
        }
        for name, dataset in named.items():
            if dataset is not None and len(dataset) == 0:  # type: ignore[arg-type]
                raise ValueError(f"UDADataModule: the {name} dataset is empty")
        _check_classes(named)
        self._normalization = _check_normalization(named)
        if target_monitor_labels and getattr(target, "return_mask", True) is False:
            raise ValueError(
                "target_monitor_labels=True needs target masks, but the target dataset was built "
                "with return_mask=False"
            )
        self._class_subsets = None if class_subsets is None else dict(class_subsets)

    def __repr__(self) -> str:
        # LightningDataModule.__str__ builds every loader and fails on a CombinedLoader.
        parts = [
            f"{name}={getattr(self, name)!r}"
            for name in ("source", "target", "val", "test", "predict")
            if getattr(self, name) is not None
        ]
        if self._val_named:
            parts[2] = f"val={self.val_sets!r}, val_primary={self.val_primary!r}"
        sizes = f"batch_size={self.batch_size}, target_batch_size={self.target_batch_size}"
        return f"{type(self).__name__}({', '.join(parts)}, {sizes}, seed={self.seed})"

    __str__ = __repr__

    # ------------------------------------------------------------------ input space
    @property
    def normalization(self) -> InputNormalization:
        """The input space of every dataset's images (``dataset.normalization``; all agree, as
        checked when the datamodule is built); ImageNet if no dataset declares one."""
        return self._normalization

    # ------------------------------------------------------------------ label space
    @property
    def classes(self) -> list[str]:
        """Class names indexed by train id (from the val dataset)."""
        return list(self.val.classes)  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        """Label value of ignored pixels (255)."""
        return int(getattr(self.val, "ignore_index", IGNORE_INDEX))

    @property
    def palette(self) -> np.ndarray:
        """``C × 3`` uint8 colours (from the val dataset, else Cityscapes')."""
        return np.asarray(getattr(self.val, "palette", CITYSCAPES_PALETTE), dtype=np.uint8)

    @property
    def class_subsets(self) -> dict[str, list[int]]:
        """Metric name → evaluated train ids (see the ``class_subsets`` argument)."""
        if self._class_subsets is not None:
            return {k: list(v) for k, v in self._class_subsets.items()}
        default = {"mIoU": list(range(self.num_classes))}
        source = getattr(self.source, "class_subsets", None)
        if source is not None and dict(source) != default:
            return {k: list(v) for k, v in source.items()}
        return {k: list(v) for k, v in getattr(self.val, "class_subsets", default).items()}

    # ------------------------------------------------------------------ rare-class sampling
    def _rcs_stats_file(self) -> Path | None:
        assert self.rare_class_sampling is not None
        given = self.rare_class_sampling.stats_file
        return Path(given).expanduser() if given else default_stats_file(self.source)

    def class_pixel_counts(self) -> np.ndarray:
        """``N×C`` pixels of each class in each source label (rare-class sampling statistics).

        Read from the cache file when it matches the source's label files, else counted (with a
        progress bar) and written to it (see :class:`~lightning_uda.data.rcs.RareClassSampling`).
        """
        if self._rcs_counts is None:
            if self.rare_class_sampling is None:
                raise ValueError("UDADataModule: rare_class_sampling is off")
            stats_file = self._rcs_stats_file()
            if stats_file is None:
                self._rcs_counts = _count_class_pixels(
                    self.source, self.num_classes, self.ignore_index, progress=True
                )
            else:
                self._rcs_counts = load_or_compute_class_stats(
                    self.source, stats_file, self.num_classes, self.ignore_index, progress=True
                )
        return self._rcs_counts

    def prepare_data(self) -> None:
        """Count the source classes for rare-class sampling once (rank 0), into the cache file."""
        if self.rare_class_sampling is not None and self._rcs_stats_file() is not None:
            self.class_pixel_counts()

    def _rare_class_sampler(self) -> RareClassSampler:
        rcs = self.rare_class_sampling
        assert rcs is not None
        return RareClassSampler(
            self.class_pixel_counts(), rcs.temperature, rcs.min_pixels, seed=self.seed
        )

    # ------------------------------------------------------------------ training stream
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch and rank: one pass of this rank's shard of the longer domain."""
        _, world = self._rank_world()
        return max(
            math.ceil(math.ceil(len(self.source) / world) / self.batch_size),  # type: ignore[arg-type]
            math.ceil(math.ceil(len(self.target) / world) / self.target_batch_size),  # type: ignore[arg-type]
        )

    def _loop_progress(self) -> tuple[int, int] | None:
        """(batches taken in the run, in this epoch), from the trainer's (restored) loop state."""
        trainer = self.trainer
        if trainer is None:
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return progress.total.ready, progress.current.ready

    def _stream(
        self, domain: str, dataset: Dataset, batch_size: int, keep_mask: bool
    ) -> DataLoader:
        rank, world = self._rank_world()
        options: dict[str, Any] = dict(
            batch_size=batch_size,
            steps_per_epoch=self.steps_per_epoch,
            seed=self.seed,
            domain=domain,
            rank=rank,
            world_size=world,
            progress=self._loop_progress,
        )
        rcs = self.rare_class_sampling if domain == "source" else None
        if rcs is not None:
            sampler: DomainSampler = RareClassDomainSampler(
                len(dataset),  # type: ignore[arg-type]
                rcs=self._rare_class_sampler(),
                **options,
            )
        else:
            sampler = DomainSampler(len(dataset), **options)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + _domain_key(domain) * 97 + rank) % 2**63
        )
        return _StreamLoader(
            _DomainItems(dataset, keep_mask=keep_mask, rcs=rcs),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=_seed_worker,
            generator=generator,
        )

    def check_source_labels(self) -> None:
        """Read the first ``label_check_items`` source labels and check they are not all void.

        Labels converted wrongly (16-bit SYNTHIA labels read as 8-bit, colour instead of id
        images, train ids where label ids are expected) load as 255 everywhere, and training
        then runs with a source loss of exactly 0 and no complaint. If every checked label is
        all void this raises :class:`~lightning_uda.data.files.AllIgnoreLabelError` naming
        the files and the likely cause; if at least ``all_ignore_warn_fraction`` of them are, it
        warns. Called when the training loader is built (the start of ``fit``); reads the label
        files only (no augmentation) where the dataset exposes them.
        """
        count = min(self.label_check_items, len(self.source))  # type: ignore[arg-type]
        if count == 0:
            return
        indices = label_check_indices(self.source, count)  # shared out over concat parts
        empty = [
            where
            for where, mask in (_source_label(self.source, i) for i in indices)
            if bool(np.all(np.asarray(mask) == IGNORE_INDEX))
        ]
        if not empty:
            return
        hint = getattr(_base_dataset(self.source), "LABEL_HINT", None) or (
            "the labels may not be converted to train ids (values outside the label table map "
            "to void)"
        )
        shown = ", ".join(empty[:5]) + (f", ... ({len(empty)} in all)" if len(empty) > 5 else "")
        if len(empty) == count:
            raise AllIgnoreLabelError(
                f"UDADataModule: all {count} source labels checked are void (255) everywhere: "
                f"{shown}. Likely cause: {hint}. Training on them would give a source loss of 0."
            )
        if len(empty) / count >= self.all_ignore_warn_fraction:
            rank_zero_warn(
                f"UDADataModule: {len(empty)} of the first {count} source labels are void "
                f"everywhere: {shown}. Likely cause: {hint}."
            )

    def train_dataloader(self) -> CombinedLoader:
        """``CombinedLoader({"source": ..., "target": ...})`` of equal lengths (see module doc)."""
        self.check_source_labels()
        loaders = {
            "source": self._stream("source", self.source, self.batch_size, keep_mask=True),
            "target": self._stream(
                "target", self.target, self.target_batch_size, keep_mask=self.target_monitor_labels
            ),
        }
        return CombinedLoader(loaders, mode="min_size")

    # ------------------------------------------------------------------ evaluation
    def _plain(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=_collate_eval,
        )

    @property
    def val_names(self) -> list[str] | None:
        """Names of the validation sets, in loader order; ``None`` for one unnamed set (its
        metrics are ``val/mIoU`` etc. only)."""
        return list(self.val_sets) if self._val_named else None

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Sequential loader over ``val`` (Lightning shards it under DDP); with several
        validation sets a list of them, in the order of :attr:`val_names`."""
        if not self._val_named:
            return self._plain(self.val)
        return [self._plain(dataset) for dataset in self.val_sets.values()]

    def test_dataloader(self) -> DataLoader:
        """Sequential loader over ``test``."""
        if self.test is None:
            raise ValueError("UDADataModule(test=None): pass a test dataset to run trainer.test")
        return self._plain(self.test)

    def predict_dataloader(self) -> DataLoader:
        """Sequential loader over ``predict``; items carry ``"path"`` and ``"orig_size"``."""
        if self.predict is None:
            raise ValueError(
                "UDADataModule(predict=None): pass a dataset to run trainer.predict, e.g. "
                "Cityscapes(root, split='test', return_mask=False)"
            )
        dataset = self.predict
        if hasattr(dataset, "with_meta"):
            dataset = dataset.with_meta()
        return self._plain(dataset)
