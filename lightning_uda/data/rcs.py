"""Rare-class sampling (DAFormer, Hoyer et al., CVPR 2022): source images holding rare classes
are drawn more often.

Per-class pixel frequencies ``f_c`` over the source labels give class probabilities
``P(c) = softmax((1 − f_c) / T)`` (T = 0.01); a class is drawn from ``P``, then an image among
those holding at least ``min_pixels`` (3,000) pixels of it. DAFormer then re-draws the crop of that
image until it holds enough of the class (wiring into ``UDADataModule`` is not done yet; this
module is the sampling core).

Differences from DAFormer's code: the statistics are counted from the dataset's own label reader
(train ids) and cached in an ``.npz`` file that records the label files, so a cache made for
other files is detected and recomputed; classes without any image above ``min_pixels`` are
dropped from the draw and the others renormalised; draw ``k`` is a pure function of
``(seed, k)``, so sampling resumes exactly and needs no state in the checkpoint; under DDP each
rank takes its own draws (rank ``r`` of ``W`` takes draws ``r, r + W, ...``), where DAFormer ran on
one GPU. As in DAFormer, ``cat_max_ratio`` applies to the source crops only; the target crops
are plain random crops.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lightning_uda.constants import IGNORE_INDEX

__all__ = [
    "RareClassSampler",
    "RareClassSampling",
    "class_frequencies",
    "class_pixel_counts",
    "default_stats_file",
    "load_or_compute_class_stats",
    "rare_class_probabilities",
]


def _label_files(dataset: Dataset) -> list[str] | None:
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    return [str(mask) for _, mask in samples]


def class_pixel_counts(
    dataset: Dataset, num_classes: int, ignore_index: int = IGNORE_INDEX, progress: bool = True
) -> np.ndarray:
    """Pixels of each class in each label of ``dataset``: ``N×C`` int64.

    Reads each label with the dataset's own reader (``dataset.load_mask(path)`` of
    ``SegmentationFolder`` and its subclasses: train ids, no augmentation), else ``dataset[i]
    ["mask"]``. ``ignore_index`` pixels are not counted.
    """
    from tqdm import tqdm

    files = _label_files(dataset)
    load_mask = getattr(dataset, "load_mask", None)
    counts = np.zeros((len(dataset), num_classes), dtype=np.int64)  # type: ignore[arg-type]
    for i in tqdm(range(len(counts)), desc="class pixel counts", disable=not progress):
        if files is not None and callable(load_mask):
            mask = np.asarray(load_mask(Path(files[i])))
        else:
            mask = np.asarray(dataset[i]["mask"])
        values = mask[mask != ignore_index].astype(np.int64).ravel()
        counts[i] = np.bincount(values, minlength=num_classes)[:num_classes]
    return counts


def load_or_compute_class_stats(
    dataset: Dataset,
    cache_path: str | os.PathLike,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    progress: bool = True,
) -> np.ndarray:
    """:func:`class_pixel_counts`, cached in ``cache_path`` (``.npz``) with the label file list.

    A cache written for other files (or another class count) is recomputed, with a warning.
    """
    path = Path(cache_path)
    files = _label_files(dataset) or [f"item {i}" for i in range(len(dataset))]  # type: ignore[arg-type]
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            same = list(cached["files"]) == files and cached["counts"].shape[1] == num_classes
            if same:
                return cached["counts"].astype(np.int64)
        warnings.warn(
            f"class statistics in {path} were computed for other label files or classes; "
            "recomputing them",
            stacklevel=2,
        )
    counts = class_pixel_counts(dataset, num_classes, ignore_index, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name and renamed, so that a reader (another rank) never sees half.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial.npz")
    np.savez(partial, counts=counts, files=np.asarray(files))
    os.replace(partial, path)
    return counts


def default_stats_file(dataset: Dataset) -> Path | None:
    """Where :class:`RareClassSampling` caches ``dataset``'s class counts when not told.

    ``$LIGHTNING_UDA_CACHE`` (default ``~/.cache/lightning_uda``) ``/class_stats_<hash>.npz``,
    the hash taken over the dataset's label file paths; ``None`` for datasets without label
    files (in-memory ones are counted again each run).
    """
    files = _label_files(dataset)
    if not files:
        return None
    digest = hashlib.sha1("\n".join(files).encode()).hexdigest()[:16]
    root = Path(os.environ.get("LIGHTNING_UDA_CACHE", Path.home() / ".cache" / "lightning_uda"))
    return root.expanduser() / f"class_stats_{digest}.npz"


def class_frequencies(counts: np.ndarray) -> np.ndarray:
    """``f_c`` = pixels of class c / all labelled pixels, from ``N×C`` counts: ``C`` floats."""
    totals = np.asarray(counts, dtype=np.float64).sum(axis=0)
    return totals / max(totals.sum(), 1.0)


def rare_class_probabilities(frequencies: Any, temperature: float = 0.01) -> np.ndarray:
    """``P(c) = softmax((1 − f_c) / T)`` over the classes present (``f_c > 0``); absent classes 0.

    Args:
        frequencies: ``C`` class frequencies (:func:`class_frequencies`).
        temperature: T (DAFormer: 0.01). Smaller T puts more mass on the rarest classes.

    Returns:
        ``C`` probabilities summing to 1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    freq = np.asarray(frequencies, dtype=np.float64)
    present = freq > 0
    if not present.any():
        raise ValueError("no class has any pixel: cannot sample by class")
    logits = (1.0 - freq[present]) / temperature
    weights = np.exp(logits - logits.max())
    probs = np.zeros_like(freq)
    probs[present] = weights / weights.sum()
    return probs


class RareClassSampler:
    """Draws ``(image index, class)`` pairs with rare-class sampling, resumably.

    Args:
        counts: ``N×C`` pixel counts (:func:`class_pixel_counts`).
        temperature: T of :func:`rare_class_probabilities` (0.01).
        min_pixels: an image is eligible for class c with more than this many pixels of it (3000).
        seed: base seed; draw ``k`` depends only on ``(seed, k)``.
    """

    def __init__(
        self, counts: np.ndarray, temperature: float = 0.01, min_pixels: int = 3000, seed: int = 0
    ) -> None:
        counts = np.asarray(counts)
        probs = rare_class_probabilities(class_frequencies(counts), temperature)
        self.images_with = {
            c: np.flatnonzero(counts[:, c] > min_pixels) for c in range(counts.shape[1])
        }
        eligible = np.array([len(self.images_with[c]) > 0 for c in range(counts.shape[1])])
        probs = np.where(eligible, probs, 0.0)
        if probs.sum() == 0:
            raise ValueError(
                f"no image holds more than {min_pixels} pixels of any class; lower min_pixels"
            )
        self.probabilities = probs / probs.sum()
        self.classes = np.flatnonzero(self.probabilities > 0)
        self.seed = int(seed)

    def draw(self, position: int) -> tuple[int, int]:
        """The ``position``-th draw: ``(image index, class id)``."""
        rng = np.random.default_rng([self.seed, int(position)])
        c = int(rng.choice(self.classes, p=self.probabilities[self.classes]))
        return int(rng.choice(self.images_with[c])), c


@dataclass(frozen=True)
class RareClassSampling:
    """Rare-class sampling settings of :class:`~lightning_uda.data.UDADataModule` (DAFormer's).

    Args:
        temperature: T of :func:`rare_class_probabilities` (0.01).
        min_pixels: an image is drawn for class c only if its label holds more than this many
            pixels of c (3000).
        min_crop_ratio: the image's random crop is re-drawn until it holds more than
            ``min_crop_ratio · min_pixels`` pixels of the drawn class (0.5); 0 disables it.
        max_crop_tries: crops drawn at most (10; the last one is kept if none qualifies).
        stats_file: ``.npz`` cache of the per-image class pixel counts. ``None``: a file named
            after the label files under ``$LIGHTNING_UDA_CACHE`` (default
            ``~/.cache/lightning_uda``) for datasets read from files, no cache for others.
            Computed once (with a progress bar) in ``prepare_data``; a cache written for other
            label files is recomputed.
    """

    temperature: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5
    max_crop_tries: int = 10
    stats_file: str | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.min_pixels < 0 or self.min_crop_ratio < 0:
            raise ValueError(
                "RareClassSampling: temperature must be > 0 and min_pixels, min_crop_ratio >= 0; "
                f"got {self.temperature}, {self.min_pixels}, {self.min_crop_ratio}"
            )
        if self.max_crop_tries < 1:
            raise ValueError(
                f"RareClassSampling: max_crop_tries must be >= 1, got {self.max_crop_tries}"
            )

    @property
    def min_crop_pixels(self) -> float:
        """Pixels of the drawn class a crop must exceed (``min_crop_ratio · min_pixels``)."""
        return self.min_crop_ratio * self.min_pixels
