"""The training stream of :class:`~lightning_uda.data.datamodule.UDADataModule`: endless,
rank-sharded, resumable samplers per domain and the loader that carries their configuration.

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
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_uda.data.concat import item_dataset
from lightning_uda.data.rcs import RareClassSampler, RareClassSampling

__all__ = ["DomainSampler", "RareClassDomainSampler"]

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
    :class:`~lightning_uda.data.datamodule.UDADataModule`), otherwise from the sampler's own
    count of batches yielded. It subclasses ``DistributedSampler`` so that Lightning does not
    replace it with its own (``use_distributed_sampler=True``, the default, is fine).
    ``set_epoch`` has no effect: the order depends on the stream position only.

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
    until it holds enough of the class (see
    :class:`~lightning_uda.data.datamodule.UDADataModule`).
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
        # the transform of the dataset the item comes from (a part of a ConcatSegmentation)
        transform = getattr(item_dataset(self.dataset, index)[0], "transform", None)
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
