"""What :class:`~lightning_uda.callbacks.UnsupervisedValidation` computes, apart from Lightning:
the images of a batch, split-level sums of the predictions, and the signals of
:mod:`lightning_uda.selection` from those sums.

Each statistic is a plain sum over the split's pixels (the SND sample: the pixels with the
smallest random keys), so batches and ranks add up and the result equals one call of the
:mod:`lightning_uda.selection` function on all the split's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_uda.selection import (
    histogram_kl,
    information_maximization_from_statistics,
    miou_from_confusion,
    pixel_entropy,
    snd_of_rows,
)


def _images(batch: Any) -> Tensor:
    """The ``B×3×H×W`` images of a batch: ``batch["image"]``, ``batch[0]`` or the batch."""
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(
                f"UnsupervisedValidation: batches must carry 'image', got keys {sorted(batch)}"
            )
        images = batch["image"]
    elif isinstance(batch, (list, tuple)):
        images = batch[0]
    else:
        images = batch
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"UnsupervisedValidation: images must be B×C×H×W, got {shape}")
    return images


def _item_image(item: Any) -> Tensor:
    """The ``3×H×W`` image of a dataset item: ``item["image"]``, ``item[0]`` or the item."""
    if isinstance(item, Mapping):
        return item["image"]
    return item[0] if isinstance(item, (list, tuple)) else item


def _collate_images(items: list[Any]) -> Tensor:
    """Stack the items' images; anything else (masks, paths) is dropped."""
    return torch.stack([_item_image(item) for item in items])


class _Statistics:
    """Sums over the pixels of a split, each a plain sum, so batches and ranks add up."""

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        threshold: float,
        snd_pixels: int,
        agreement: bool,
    ) -> None:
        k = num_classes
        self.num_classes = k
        self.threshold = threshold
        self.snd_pixels = snd_pixels
        double = dict(dtype=torch.float64, device=device)
        self.pixels = torch.zeros((), **double)
        self.entropy = torch.zeros((), **double)  # Σ per-pixel entropy (natural log)
        self.confident = torch.zeros((), **double)
        self.prob_sum = torch.zeros(k, **double)  # Σ p_i, for the mean prediction of IM
        self.histogram = torch.zeros(k, **double)  # argmax counts, for the class KL
        self.confusion = torch.zeros(k, k, **double) if agreement else None
        # SND sample: the snd_pixels pixels with the smallest random keys seen so far.
        self.keys = torch.empty(0)
        self.rows = torch.empty(0, k, device=device)

    def update(self, probs: Tensor, seed: int, agreement: tuple[Tensor, Tensor] | None) -> None:
        b, k, h, w = probs.shape
        self.pixels += b * h * w
        self.entropy += pixel_entropy(probs).sum(dtype=torch.float64)
        self.prob_sum += probs.sum(dim=(0, 2, 3), dtype=torch.float64)
        max_prob, labels = probs.max(dim=1)
        self.confident += (max_prob >= self.threshold).sum()
        self.histogram += torch.bincount(labels.reshape(-1), minlength=k).double()
        if self.confusion is not None and agreement is not None:
            student, teacher = agreement
            pairs = student.reshape(-1) * k + teacher.reshape(-1)
            self.confusion += torch.bincount(pairs, minlength=k * k).reshape(k, k).double()
        if self.snd_pixels > 0:
            self._sample(probs, seed)

    def _sample(self, probs: Tensor, seed: int) -> None:
        b, k, h, w = probs.shape
        n = b * h * w
        keys = torch.rand(n, generator=torch.Generator().manual_seed(seed))
        index = torch.arange(n)
        if n > self.snd_pixels:  # as lightning_uda.selection.sample_pixels
            keys, index = keys.topk(self.snd_pixels, largest=False, sorted=False)
        index = index.to(probs.device)
        rows = probs.flatten(2)[index // (h * w), :, index % (h * w)].to(self.rows.dtype)
        self.keys = torch.cat([self.keys, keys])
        self.rows = torch.cat([self.rows, rows])
        if self.keys.numel() > self.snd_pixels:
            self.keys, keep = self.keys.topk(self.snd_pixels, largest=False, sorted=False)
            self.rows = self.rows[keep.to(self.rows.device)]

    def flat(self) -> Tensor:
        """Every additive statistic in one float64 vector (one all-reduce)."""
        parts = [self.pixels[None], self.entropy[None], self.confident[None]]
        parts += [self.prob_sum, self.histogram]
        if self.confusion is not None:
            parts.append(self.confusion.reshape(-1))
        return torch.cat(parts)

    def load_flat(self, flat: Tensor) -> None:
        k = self.num_classes
        self.pixels, self.entropy, self.confident = flat[0], flat[1], flat[2]
        self.prob_sum, self.histogram = flat[3 : 3 + k], flat[3 + k : 3 + 2 * k]
        if self.confusion is not None:
            self.confusion = flat[3 + 2 * k :].reshape(k, k)

    def padded_sample(self) -> tuple[Tensor, Tensor]:
        """Keys and rows padded to ``snd_pixels`` (key +inf), so that every rank's gather has
        one shape."""
        missing = self.snd_pixels - self.keys.numel()
        keys = torch.cat([self.keys, torch.full((missing,), float("inf"))])
        rows = torch.cat([self.rows, self.rows.new_zeros(missing, self.num_classes)])
        return keys.to(self.rows.device), rows

    def merge_sample(self, keys: Tensor, rows: Tensor) -> None:
        """Keep the ``snd_pixels`` smallest finite keys of gathered ``keys``/``rows``."""
        keys, rows = keys.reshape(-1).cpu(), rows.reshape(-1, self.num_classes)
        finite = torch.isfinite(keys)
        keys, rows = keys[finite], rows[finite.to(rows.device)]
        if keys.numel() > self.snd_pixels:
            keys, keep = keys.topk(self.snd_pixels, largest=False, sorted=False)
            rows = rows[keep.to(rows.device)]
        self.keys, self.rows = keys, rows


def _signal_values(
    stats: _Statistics,
    wanted: list[str],
    frequencies: Tensor | None,
    kl_eps: float,
    snd_temperature: float,
) -> dict[str, float]:
    """The signals ``wanted`` (name → value) of the split ``stats`` summarises; NaN for every
    signal when the split has no pixel."""
    pixels = float(stats.pixels)
    if pixels == 0:
        return {name: math.nan for name in wanted}
    k = stats.num_classes
    results: dict[str, float] = {}
    for name in wanted:
        if name == "entropy":
            value = stats.entropy / pixels / math.log(k)
        elif name == "im":
            value = information_maximization_from_statistics(
                stats.prob_sum / pixels, stats.entropy / pixels
            )
        elif name == "confident_fraction":
            value = stats.confident / pixels
        elif name == "class_kl":
            assert frequencies is not None
            value = histogram_kl(stats.histogram, frequencies, kl_eps)
        elif name == "agreement":
            assert stats.confusion is not None
            value = miou_from_confusion(stats.confusion)
        else:  # snd
            rows = stats.rows
            value = snd_of_rows(rows, snd_temperature) if len(rows) > 1 else math.nan
        results[name] = float(value)
    return results
