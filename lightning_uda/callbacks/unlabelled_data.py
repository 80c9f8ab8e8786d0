"""What :class:`~lightning_uda.callbacks.UnsupervisedValidation` reads: each rank's share of the
unlabelled images, the check of their input space, and the source class frequencies."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_uda.callbacks.selection_statistics import _collate_images, _images
from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.checks import _input_space
from lightning_uda.data.rcs import (
    class_frequencies,
    class_pixel_counts,
    default_stats_file,
    load_or_compute_class_stats,
)
from lightning_uda.normalization import get_normalization


def rank_batches(
    data: Dataset | DataLoader,
    rank: int,
    world: int,
    *,
    max_batches: int | None,
    batch_size: int,
    num_workers: int,
    seed: int,
) -> Iterator[tuple[int, Tensor]]:
    """``(global batch index, B×3×H×W images)`` of batches ``rank, rank + world, …`` of the first
    ``max_batches`` of ``data`` (a loader's batches, or ``batch_size`` items of a dataset)."""
    if isinstance(data, DataLoader):
        for index, batch in enumerate(data):
            if max_batches is not None and index >= max_batches:
                return
            if index % world == rank:
                yield index, _images(batch)
        return
    size = len(data)  # type: ignore[arg-type]
    count = math.ceil(size / batch_size)
    if max_batches is not None:
        count = min(count, max_batches)
    mine = list(range(rank, count, world))
    if not mine:
        return
    batches = [list(range(i * batch_size, min(size, (i + 1) * batch_size))) for i in mine]
    loader = DataLoader(
        data,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate_images,
        pin_memory=torch.cuda.is_available(),
        # an own generator: loading never draws from the global RNG of the training run
        generator=torch.Generator().manual_seed(seed),
    )
    yield from zip(mine, loader, strict=True)


def check_input_space(
    pl_module: LightningModule, target: str | None, data: Dataset | DataLoader
) -> None:
    """Raise ``ValueError`` when ``data``'s images are not in ``pl_module``'s input space."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    data_space = _input_space(dataset)
    module_space = getattr(pl_module, "normalization", None)
    if data_space is None or module_space is None:
        return
    if data_space != get_normalization(module_space):
        which = "" if target is None else f" of target {target!r}"
        raise ValueError(
            f"UnsupervisedValidation: the unlabelled images{which} are normalised as "
            f"{data_space.name!r} ({data_space}) but {type(pl_module).__name__} expects "
            f"{module_space.name!r}. Build the dataset with normalization="
            f"{module_space.name!r} (and its transform with the same)."
        )


def check_frequencies(frequencies: Sequence[float] | Tensor) -> Tensor:
    """``K`` class frequencies as float64, normalised to sum 1 (finite, ≥ 0, not all 0)."""
    values = torch.as_tensor(frequencies, dtype=torch.float64).reshape(-1).clone()
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("UnsupervisedValidation: source_frequencies must be finite and >= 0")
    if float(values.sum()) <= 0:
        raise ValueError("UnsupervisedValidation: source_frequencies sum to 0")
    return values / values.sum()


def count_source_frequencies(
    datamodule: Any, source: Dataset, pl_module: LightningModule, num_classes: int
) -> list[float]:
    """The source labels' class frequencies: the rare-class-sampling counts when the datamodule
    has them, else counted once (progress bar) and cached like them."""
    if getattr(datamodule, "rare_class_sampling", None) is not None and callable(
        getattr(datamodule, "class_pixel_counts", None)
    ):
        counts = datamodule.class_pixel_counts()
    else:
        ignore = int(
            getattr(datamodule, "ignore_index", getattr(pl_module, "ignore_index", IGNORE_INDEX))
        )
        stats_file = default_stats_file(source)
        if stats_file is None:
            counts = class_pixel_counts(source, num_classes, ignore, progress=True)
        else:
            counts = load_or_compute_class_stats(
                source, stats_file, num_classes, ignore, progress=True
            )
    return class_frequencies(counts).tolist()
