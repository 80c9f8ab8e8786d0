"""``UDADataModule``: labelled source + unlabelled target for training, labelled target for eval.

Training batches (``train_dataloader``, a Lightning ``CombinedLoader``)::

    {"source": {"image": float B×3×H×W, "mask": long B×H×W, "index": long B},
     "target": {"image": float B'×3×H'×W', "index": long B'}}   # + "mask" if monitoring

``index`` is each sample's index in its dataset (for logging/debugging; methods ignore it).

**Sampling.** Each domain is an endless stream: cycle ``c`` of a domain is a permutation of its
dataset drawn from ``(seed, domain, c)``; under DDP every cycle is padded to a multiple of the world
size and rank ``r`` takes every ``world_size``-th element from ``r`` (like ``DistributedSampler``),
so ranks see disjoint shards of each cycle. The shorter domain simply starts its next cycle
sooner: it cycles, with a fresh order each time. One epoch is one pass over the longer domain
(``steps_per_epoch`` batches per rank); train by iterations (``Trainer(max_steps=...)``).

**Resuming.** The sample at stream position ``p`` of a rank is a pure function of ``(seed, domain,
rank, world size, p)`` (and so is the random state its transform gets, see below). When an
iterator over the training loader is created, the sampler reads how many batches the trainer has
already taken from ``trainer.fit_loop.epoch_loop.batch_progress`` (restored from the checkpoint on
a resume) and starts exactly there, so a run resumed from a mid-epoch checkpoint sees the same
stream as an uninterrupted one. (With a plain ``DataLoader``, Lightning 2.6 restarts the
interrupted epoch's data from its first batch while ``batch_idx`` continues, so the first batches
are seen twice and the last ones never.) Keep the world size, batch sizes and seed when resuming
(a change is reported), and pass the datamodule itself (``trainer.fit(model, datamodule=dm)``):
without a trainer the sampler counts the batches it handed out. Under DDP, rank and world size come
from the trainer; the samplers subclass ``DistributedSampler``, so Lightning keeps them with the
default ``use_distributed_sampler=True``.

**Rare-class sampling** (``rare_class_sampling=RareClassSampling()``, DAFormer): the source
stream's positions are draws of a class ``c`` with ``P(c) = softmax((1 − f_c) / T)`` and of an
image holding more than ``min_pixels`` of it (:mod:`lightning_uda.data.rcs`) instead of a
shuffled pass; the item's random crop is re-drawn (fresh random states derived from the item's,
up to ``max_crop_tries``) until it holds more than ``min_crop_ratio · min_pixels`` pixels of
``c``, and the last draw is kept otherwise. Draws are a pure function of the stream position,
so resume and DDP sharding work as for the plain stream. The target stream is unchanged.

**Augmentation randomness.** Before loading stream position ``p``, an albumentations pipeline
(``dataset.transform``) gets a random state seeded from ``(seed, domain, rank, world size, p)``,
so crops and flips are also reproducible, independent of ``num_workers``, and identical after a
resume. Worker processes additionally seed ``random``/``numpy`` from their torch seed.

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
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
    default_collate,
)

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.datasets import AllIgnoreLabelError
from lightning_uda.data.labels import CITYSCAPES_PALETTE
from lightning_uda.data.rcs import (
    RareClassSampler,
    RareClassSampling,
    default_stats_file,
    load_or_compute_class_stats,
)
from lightning_uda.data.rcs import class_pixel_counts as _count_class_pixels
from lightning_uda.normalization import IMAGENET, InputNormalization, get_normalization

__all__ = ["DomainSampler", "RareClassDomainSampler", "UDADataModule"]

#: ``() -> (batches taken so far in the run, batches taken in the current epoch)`` or ``None``.
ProgressFn = Callable[[], "tuple[int, int] | None"]


def _domain_key(domain: str) -> int:
    return zlib.crc32(domain.encode())


class DomainSampler(DistributedSampler):
    """Endless, rank-sharded, resumable sampler of one domain; yields ``(index, item_seed)``.

    The rank's stream is the concatenation over cycles ``c = 0, 1, ...`` of its shard of a
    permutation drawn from ``(seed, domain, c)``: the permutation is padded cyclically to
    ``world_size * shard_size`` elements (``shard_size = ceil(n / world_size)``) and rank ``r``
    takes elements ``r, r + world_size, ...``. Stream position ``p`` is sample ``p % shard_size``
    of cycle ``p // shard_size``. Batch ``b`` of the run is positions ``[b·B, (b+1)·B)``.

    Each ``iter()`` yields ``steps_per_epoch`` batches (``steps_per_epoch·B`` elements) starting at
    the current batch: taken from ``progress()`` if given (the trainer's loop counters, see
    :class:`UDADataModule`), otherwise from the sampler's own count of batches yielded. It
    subclasses ``DistributedSampler`` so that Lightning does not replace it with its own
    (``use_distributed_sampler=True``, the default, is fine). ``set_epoch`` has no effect: the
    order depends on the stream position only.

    Args:
        dataset_size: ``n``, samples in the domain's dataset.
        batch_size: ``B``, samples per batch and rank.
        steps_per_epoch: batches per ``iter()`` (one epoch).
        seed: base seed of the permutations and item seeds.
        domain: name of the domain (mixed into the seeds, so domains have independent orders).
        rank: this process' rank.
        world_size: number of processes.
        progress: ``() -> (batches taken in the run, batches taken in this epoch) | None``.

    Example:
        >>> s = DomainSampler(5, batch_size=2, steps_per_epoch=3, seed=0, domain="target")
        >>> len([i for i, _ in s])  # 3 batches of 2 from an endless stream over 5 samples
        6
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        domain: str = "source",
        rank: int = 0,
        world_size: int = 1,
        progress: ProgressFn | None = None,
    ) -> None:
        if dataset_size < 1:
            raise ValueError(f"domain {domain!r} has no samples")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError("batch_size and steps_per_epoch must be positive")
        super().__init__(
            range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.domain = domain
        self.world_size = world_size
        self.progress = progress
        self.shard_size = math.ceil(dataset_size / world_size)
        self._seed = seed & 0xFFFFFFFFFFFFFFFF
        self._domain_key = _domain_key(domain)
        self._next_batch = 0
        self._cycle_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def shard(self, cycle: int) -> np.ndarray:
        """This rank's dataset indices in cycle ``cycle``, ``(shard_size,)`` int64."""
        if self._cycle_cache is not None and self._cycle_cache[0] == cycle:
            return self._cycle_cache[1]
        rng = np.random.default_rng([self._seed, self._domain_key, cycle])
        order = rng.permutation(self.dataset_size)
        order = np.resize(order, self.shard_size * self.world_size)  # pad cyclically
        shard = order[self.rank :: self.world_size]
        self._cycle_cache = (cycle, shard)
        return shard

    def index_at(self, position: int) -> int:
        """Dataset index at stream position ``position`` of this rank."""
        cycle, offset = divmod(position, self.shard_size)
        return int(self.shard(cycle)[offset])

    def key_at(self, position: int) -> tuple[int, ...]:
        """What the loader's dataset gets for stream position ``position``: ``(index, seed)``."""
        return self.index_at(position), self.item_seed(position)

    def item_seed(self, position: int) -> int:
        """Seed of the transform's random state for stream position ``position`` (uint32)."""
        entropy = [self._seed, self._domain_key, self.world_size, self.rank, position]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _start(self) -> tuple[int, int]:
        """(first batch of this iteration, number of batches to yield)."""
        progress = self.progress() if self.progress is not None else None
        if progress is None:
            return self._next_batch, self.steps_per_epoch
        taken_total, taken_in_epoch = progress
        if 0 < taken_in_epoch < self.steps_per_epoch:  # resumed mid-epoch: finish the epoch
            return taken_total, self.steps_per_epoch - taken_in_epoch
        return taken_total, self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, count = self._start()  # read now, when the loader's iterator is created
        self._next_batch = start
        return self._generate(start, count)

    def _generate(self, start: int, count: int) -> Iterator[tuple[int, int]]:
        for batch in range(start, start + count):
            positions = range(batch * self.batch_size, (batch + 1) * self.batch_size)
            keys = [self.key_at(p) for p in positions]
            # Counted as handed out before its last element is taken: a consumer that stops
            # after a full batch must not see it again on the next iter().
            self._next_batch = batch + 1
            yield from keys

    def set_epoch(self, epoch: int) -> None:
        """Recorded for Lightning's sake; the order depends on the stream position only."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """The sampler's own position (used when no ``progress`` function is given)."""
        return {"next_batch": self._next_batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self._next_batch = int(state["next_batch"])


class RareClassDomainSampler(DomainSampler):
    """:class:`DomainSampler` whose stream positions are rare-class draws (DAFormer's RCS).

    Stream position ``p`` of rank ``r`` (of ``W``) is draw ``p·W + r`` of ``rcs`` (a
    :class:`~lightning_uda.data.rcs.RareClassSampler`): an ``(image, class)`` pair, a pure function
    of ``(seed, p, r, W)`` like the plain stream, so a resume continues exactly. Ranks take
    disjoint draws. Keys are ``(index, item_seed, class)``; the loader's dataset re-draws the crop
    until it holds enough of the class (see :class:`UDADataModule`).
    """

    def __init__(self, dataset_size: int, rcs: RareClassSampler, **kwargs: Any) -> None:
        super().__init__(dataset_size, **kwargs)
        self.rcs = rcs

    def key_at(self, position: int) -> tuple[int, ...]:
        index, cls = self.rcs.draw(position * self.world_size + self.rank)
        return index, self.item_seed(position), cls

    def index_at(self, position: int) -> int:
        return int(self.key_at(position)[0])


class _DomainItems(Dataset):
    """Wraps a domain's dataset for the sampler's ``(index, item_seed[, class])`` keys."""

    def __init__(
        self, dataset: Dataset, keep_mask: bool, rcs: RareClassSampling | None = None
    ) -> None:
        self.dataset = dataset
        self.keep_mask = keep_mask
        self.rcs = rcs

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _load(self, index: int, item_seed: int) -> dict[str, Any]:
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, A.BaseCompose):
            # One generator shared by all the pipeline's transforms (set_random_seed would give
            # each transform the same seed, correlating e.g. crop position and flip).
            transform.set_random_state(np.random.default_rng(item_seed), random.Random(item_seed))
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(
                f"{type(self.dataset).__name__}[{index}] returned {type(item).__name__}; "
                'UDADataModule needs dict items {"image": ..., "mask": ...}'
            )
        return dict(item)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        index, item_seed = key[0], key[1]
        item = self._load(index, item_seed)
        if len(key) == 3 and self.rcs is not None and self.rcs.min_crop_ratio > 0:
            # Rare-class sampling: re-draw the (random) crop until it holds enough of the class.
            cls = key[2]
            for attempt in range(1, self.rcs.max_crop_tries):
                if float((np.asarray(item["mask"]) == cls).sum()) > self.rcs.min_crop_pixels:
                    break
                retry_seed = np.random.SeedSequence([item_seed, attempt]).generate_state(1)[0]
                item = self._load(index, int(retry_seed))
        if not self.keep_mask:
            item.pop("mask", None)
        item["index"] = index
        return item


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


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


def _input_space(dataset: Dataset | None) -> InputNormalization | None:
    """The space a dataset declares (``normalization``), looking through Subset/ConcatDataset."""
    space = getattr(dataset, "normalization", None)
    if space is not None:
        return get_normalization(space)
    if isinstance(dataset, Subset):
        return _input_space(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        spaces = {s for s in map(_input_space, dataset.datasets) if s is not None}
        if len(spaces) > 1:
            names = ", ".join(str(s) for s in spaces)
            raise ValueError(f"UDADataModule: a ConcatDataset mixes input spaces: {names}")
        return spaces.pop() if spaces else None
    return None


def _base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _source_label(dataset: Dataset, index: int) -> tuple[str, Any]:
    """``(description, train-id mask)`` of item ``index``, from the label file when possible."""
    while isinstance(dataset, Subset):
        index = int(dataset.indices[index])
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    load_mask = getattr(dataset, "load_mask", None)
    if samples is not None and callable(load_mask) and samples[index][1] is not None:
        path = samples[index][1]
        return str(path), load_mask(path)
    mask = dataset[index]["mask"]
    return f"source item {index}", mask.numpy() if hasattr(mask, "numpy") else mask


class _StreamLoader(DataLoader):
    """A training loader that resumes itself (see :class:`DomainSampler`).

    ``state_dict``/``load_state_dict`` make Lightning treat it as resumable (no "dataloader is not
    resumable" warning) and carry the sampling configuration in the checkpoint, so that a resume
    with a different one is reported.
    """

    def _config(self) -> dict[str, Any]:
        sampler = self.sampler
        assert isinstance(sampler, DomainSampler)
        return {
            "domain": sampler.domain,
            "seed": sampler.seed,
            "world_size": sampler.world_size,
            "batch_size": sampler.batch_size,
            "dataset_size": sampler.dataset_size,
            "rare_class_sampling": isinstance(sampler, RareClassDomainSampler),
        }

    def state_dict(self) -> dict[str, Any]:
        return self._config()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        now = self._config()
        changed = {k: (v, now[k]) for k, v in state_dict.items() if now.get(k) != v}
        if changed:
            rank_zero_warn(
                f"Resuming the {now['domain']!r} stream with a different configuration "
                f"(checkpoint → now: {changed}); the samples after the resume will differ from "
                "those of an uninterrupted run."
            )


class UDADataModule(L.LightningDataModule):
    """Source (labelled) + target (unlabelled) training stream; labelled target val/test.

    Args:
        source: labelled source-domain dataset (items ``{"image", "mask"}``), e.g. ``GTA5``.
        target: target-domain dataset (items ``{"image"[, "mask"]}``), e.g.
            ``Cityscapes(split="train", return_mask=False)``.
        val: labelled target validation set, e.g. ``Cityscapes(split="val")``.
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

    Raises:
        ValueError: datasets whose ``classes`` differ (both lists are shown), datasets in
            different input spaces (each dataset's ``normalization`` is shown), an empty
            dataset, or non-positive batch sizes.

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
        val: Dataset,
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
        self.source, self.target, self.val = source, target, val
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
        named = {"source": source, "target": target, "val": val, "test": test, "predict": predict}
        for name, dataset in named.items():
            if dataset is not None and len(dataset) == 0:  # type: ignore[arg-type]
                raise ValueError(f"UDADataModule: the {name} dataset is empty")
        self._check_classes(named)
        self._normalization = self._check_normalization(named)
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
        sizes = f"batch_size={self.batch_size}, target_batch_size={self.target_batch_size}"
        return f"{type(self).__name__}({', '.join(parts)}, {sizes}, seed={self.seed})"

    __str__ = __repr__

    @staticmethod
    def _check_classes(datasets: Mapping[str, Dataset | None]) -> None:
        reference_name, reference = "val", getattr(datasets["val"], "classes", None)
        if reference is None:
            raise ValueError(
                "UDADataModule: the val dataset has no `classes` attribute (list of class names "
                "indexed by train id); it defines num_classes and the metrics."
            )
        for name, dataset in datasets.items():
            classes = getattr(dataset, "classes", None)
            if dataset is None or classes is None or name == reference_name:
                continue
            if list(classes) != list(reference):
                raise ValueError(
                    f"UDADataModule: the {name} dataset's classes differ from the val dataset's.\n"
                    f"  {name} ({len(classes)}): {list(classes)}\n"
                    f"  val ({len(reference)}): {list(reference)}\n"
                    "Map both to the same train ids (e.g. with label_map) and class list."
                )

    @staticmethod
    def _check_normalization(datasets: Mapping[str, Dataset | None]) -> InputNormalization:
        spaces: dict[str, InputNormalization] = {}
        for name, dataset in datasets.items():
            try:
                space = _input_space(dataset)
            except ValueError as error:
                message = f"UDADataModule: the {name} dataset's normalization: {error}"
                raise ValueError(message) from error
            if space is not None:
                spaces[name] = space
        if len(set(spaces.values())) <= 1:
            return next(iter(spaces.values()), IMAGENET)
        lines = "\n".join(
            f"  {name} ({type(datasets[name]).__name__}): {space}" for name, space in spaces.items()
        )
        counts: dict[InputNormalization, int] = {}
        for space in spaces.values():
            counts[space] = counts.get(space, 0) + 1
        majority = max(counts, key=lambda s: counts[s]).name
        raise ValueError(
            "UDADataModule: the datasets normalise images into different input spaces:\n"
            f"{lines}\n"
            "A run has one input space (the one the segmentor's weights expect): build every "
            f"dataset with the same normalization, e.g. normalization={majority!r} "
            f"(Cityscapes(..., normalization={majority!r}), or preset(name, "
            f"normalization={majority!r}) for a transform passed as an object)."
        )

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
        all void this raises :class:`~lightning_uda.data.datasets.AllIgnoreLabelError` naming
        the files and the likely cause; if at least ``all_ignore_warn_fraction`` of them are, it
        warns. Called when the training loader is built (the start of ``fit``); reads the label
        files only (no augmentation) where the dataset exposes them.
        """
        count = min(self.label_check_items, len(self.source))  # type: ignore[arg-type]
        if count == 0:
            return
        empty = [
            where
            for where, mask in (_source_label(self.source, i) for i in range(count))
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

    def val_dataloader(self) -> DataLoader:
        """Sequential loader over ``val`` (Lightning shards it under DDP)."""
        return self._plain(self.val)

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
