"""The embedded offline demo shift: handwritten digits → handwritten digits on photographs.

Everything is generated at run time from data that ships inside scikit-learn — nothing is
downloaded and no file is written:

- **digits**: ``sklearn.datasets.load_digits()``, 1,797 real handwritten digits (8×8, 17 grey
  levels) from the UCI "optdigits" set, written by people, scanned and published by others;
- **photographs**: ``sklearn.datasets.load_sample_images()``, two real photos (a Chinese temple,
  a flower; 427×640) whose random crops are the target domain's backgrounds.

**Scenes.** Each image is ``size×size`` (32×32 by default), a 2×2 grid of cells; each cell holds a
digit with probability 0.6, scaled to 12–16 px (bilinear) at a random position inside its cell.

**Labels** (11 classes): 0 = background, ``k + 1`` = digit ``k``. Let ``a`` be the scaled digit's
ink intensity in [0, 1] (its 8×8 grey value / 16, bilinearly resized). A pixel is labelled with
its digit where ``a ≥ 0.5``, background where ``a ≤ 0.2``, and 255 (ignore) on the anti-aliased
rim in between, so no label depends on an arbitrary cut through a blurred stroke. The image is
``ink · a + background · (1 − a)``, so the label is exactly the set of pixels drawn mostly in ink.

**Domains.** ``load_digits`` carries no writer ids, so the digits are split by sample index into
disjoint pools — source train 0–719, source val 720–899, target train 900–1616, target val
1617–1796 — the same kind of digits, different samples (and, as the set is ordered by collection,
largely different writers).

- *source*: a plain dark grey background (grey level U(0, 0.35)) plus a little pixel noise, and
  grey ink (U(0.65, 1)); with ``photometric=True`` (the default for source train, see below) the
  ink gets a random colour of luminance ≥ 0.6 — DACS-style photometric augmentation of the source;
- *target*: a random crop (40–120 px side) of one of the photographs, resized to the scene and
  darkened ×0.8, with ink of a random colour of luminance ≥ 0.6.

**Calibration** (``lightning-uda demo``'s recipe: TinyUNet, AdamW 3e-3, batch 16 + 16, 1,000
steps): the shift is tuned so that SourceOnly does well on source val but loses about half of the
oracle's target-val mIoU (photo texture is read as ink, coloured digits on texture are confused),
so the shift hurts without being hopeless: the source model's confident pseudo-labels are right,
which self-training needs. The photometric source augmentation and the demo's 300 source-only
warm-up steps before self-training (``mix_warmup_steps``) come from measured failures without
them. The figures are in the README ("The demo": the table, and "Calibration of the shift").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lightning_uda.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

#: Class names: background, then the ten digits.
DEMO_CLASSES = ["background"] + [f"digit {k}" for k in range(10)]
#: Colours for visualising demo masks (background black, digits from a qualitative palette).
DEMO_PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]
#: Digit sample index ranges (``load_digits`` order) of each domain and split: disjoint.
DIGIT_POOLS: dict[tuple[str, str], tuple[int, int]] = {
    ("source", "train"): (0, 720),
    ("source", "val"): (720, 900),
    ("target", "train"): (900, 1617),
    ("target", "val"): (1617, 1797),
}
INK_LABEL_THRESHOLD = 0.5  # a ≥ this: the digit's class
BACKGROUND_THRESHOLD = 0.2  # a ≤ this: background; in between: ignore (anti-aliased rim)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(
        torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255.0
        for im in load_sample_images().images
    )


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _bright_colour(rng: np.random.Generator, min_luminance: float = 0.6) -> torch.Tensor:
    while True:
        colour = rng.uniform(0.0, 1.0, 3)
        if _luminance(colour) >= min_luminance:
            return torch.from_numpy(colour).float()


class DigitScenes(Dataset):
    """Scenes of handwritten digits for the demo shift (see the module docstring).

    Items are ``{"image": float 3×size×size (ImageNet-normalised), "mask": long size×size}``
    (``"mask"`` left out with ``return_mask=False``). All scenes are generated at construction,
    deterministically from ``seed``.

    Args:
        domain: "source" (plain backgrounds) or "target" (photographs).
        split: "train" or "val" (disjoint digit samples).
        num_images: number of scenes.
        size: scene side in pixels (multiple of 2, ≥ 32).
        seed: seed of the scene layout, digit choice, colours and crops.
        photometric: random ink colours for source scenes (default: on for source train only).
        return_mask: include ``"mask"`` in items.

    Example:
        >>> ds = DigitScenes("target", "val", num_images=4, seed=0)
        >>> ds[0]["image"].shape, ds[0]["mask"].dtype
        (torch.Size([3, 32, 32]), torch.int64)
    """

    classes = DEMO_CLASSES
    palette = DEMO_PALETTE
    ignore_index = IGNORE_INDEX
    class_subsets = {"mIoU": list(range(len(DEMO_CLASSES)))}

    def __init__(
        self,
        domain: str,
        split: str,
        num_images: int = 2000,
        size: int = 32,
        seed: int = 0,
        photometric: bool | None = None,
        return_mask: bool = True,
    ) -> None:
        if (domain, split) not in DIGIT_POOLS:
            raise ValueError(
                f"DigitScenes: domain must be 'source' or 'target' and split 'train' or 'val', "
                f"got domain={domain!r}, split={split!r}"
            )
        if size < 32 or size % 2:
            raise ValueError(f"DigitScenes: size must be an even number ≥ 32, got {size}")
        if num_images < 1:
            raise ValueError(f"DigitScenes: num_images must be ≥ 1, got {num_images}")
        self.domain, self.split, self.size, self.seed = domain, split, size, seed
        self.photometric = (
            (domain, split) == ("source", "train") if photometric is None else photometric
        )
        self.return_mask = return_mask
        rng = np.random.default_rng([seed, domain == "target", split == "val"])
        images, masks, used = [], [], []
        for _ in range(num_images):
            image, mask, digits = self._scene(rng)
            images.append(image)
            masks.append(mask)
            used.extend(digits)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.images = (torch.stack(images).clamp(0, 1) - mean) / std
        self.masks = torch.stack(masks)
        #: ``load_digits`` indices drawn into these scenes.
        self.digit_indices = sorted(set(used))

    def _scene(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        ink_images, targets = _digits()
        first, last = DIGIT_POOLS[(self.domain, self.split)]
        size, cell = self.size, self.size // 2
        alpha = torch.zeros(size, size)
        label = torch.zeros(size, size, dtype=torch.long)
        used = []
        for cy in range(2):
            for cx in range(2):
                if rng.random() > 0.6:
                    continue
                k = int(rng.integers(first, last))
                side = int(rng.integers(12, 17)) * size // 32
                ink = F.interpolate(
                    torch.from_numpy(ink_images[k])[None, None],
                    size=(side, side),
                    mode="bilinear",
                    align_corners=False,
                )[0, 0].clamp(0, 1)
                y = cy * cell + int(rng.integers(0, cell - side + 1))
                x = cx * cell + int(rng.integers(0, cell - side + 1))
                alpha[y : y + side, x : x + side] = ink
                window = label[y : y + side, x : x + side]
                window[ink >= INK_LABEL_THRESHOLD] = int(targets[k]) + 1
                window[(ink > BACKGROUND_THRESHOLD) & (ink < INK_LABEL_THRESHOLD)] = IGNORE_INDEX
                used.append(k)
        if self.domain == "source":
            background = torch.full((3, 1, 1), rng.uniform(0.0, 0.35))
            grey = rng.uniform(0.65, 1.0)
            ink_colour = _bright_colour(rng) if self.photometric else torch.full((3,), grey)
            noise = 0.03 * torch.from_numpy(rng.standard_normal((3, size, size))).float()
            image = background * (1 - alpha) + ink_colour.view(3, 1, 1) * alpha + noise
        else:
            background = self._photo_crop(rng) * 0.8
            image = background * (1 - alpha) + _bright_colour(rng).view(3, 1, 1) * alpha
        return image, label, used

    def _photo_crop(self, rng: np.random.Generator) -> torch.Tensor:
        photos = _photos()
        photo = photos[int(rng.integers(0, len(photos)))]
        side = int(rng.integers(40, 120))
        height, width = photo.shape[1:]
        y = int(rng.integers(0, height - side + 1))
        x = int(rng.integers(0, width - side + 1))
        crop = photo[None, :, y : y + side, x : x + side]
        return F.interpolate(
            crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index]}
        if self.return_mask:
            item["mask"] = self.masks[index]
        return item


@lru_cache(maxsize=2)  # the demo runs several methods on the same (read-only) scenes
def demo_datasets(
    seed: int = 0, num_train: int = 2000, num_val: int = 400, size: int = 32
) -> dict[str, DigitScenes]:
    """The four demo splits: ``source_train``, ``source_val``, ``target_train``, ``target_val``.

    ``target_train`` keeps its labels so that it can serve the oracle and pseudo-label monitoring;
    :func:`demo_datamodule` never gives them to an adaptation method as training labels.
    """
    return {
        f"{domain}_{split}": DigitScenes(
            domain,
            split,
            num_images=num_train if split == "train" else num_val,
            size=size,
            seed=seed,
        )
        for domain in ("source", "target")
        for split in ("train", "val")
    }


def demo_datamodule(
    seed: int = 0,
    oracle: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    datasets: dict[str, DigitScenes] | None = None,
    **kwargs: Any,
):
    """A :class:`~lightning_uda.data.UDADataModule` over the demo shift.

    Source = labelled source train (or, with ``oracle=True``, labelled *target* train: the upper
    bound); target = target train, whose labels reach the method only as monitoring labels
    (pseudo-label accuracy); val = labelled target val.
    """
    from lightning_uda.data.datamodule import UDADataModule

    datasets = datasets if datasets is not None else demo_datasets(seed=seed)
    return UDADataModule(
        source=datasets["target_train"] if oracle else datasets["source_train"],
        target=datasets["target_train"],
        val=datasets["target_val"],
        batch_size=batch_size,
        val_batch_size=200,
        num_workers=num_workers,
        target_monitor_labels=True,
        seed=seed,
        **kwargs,
    )
