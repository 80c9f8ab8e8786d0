"""Several labelled datasets read as one, e.g. GTA5 + SYNTHIA as one training source.

:class:`ConcatSegmentation` is torch's ``ConcatDataset`` with what
:class:`~lightning_uda.data.UDADataModule` reads from a dataset: one class list, palette,
``ignore_index`` and input space (checked to agree when it is built), the label files of every
part (``samples``) and each part's own label reader (``load_mask``), so that rare-class sampling
counts the union's labels exactly as it counts one dataset's. Each part keeps its own transform
(GTA5 and SYNTHIA frames have different sizes); the training stream seeds the transform of the
part an item comes from (:func:`item_dataset`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["ConcatSegmentation", "item_dataset", "label_check_indices"]


def item_dataset(dataset: Dataset, index: int) -> tuple[Dataset, int]:
    """``(dataset, index)`` of the item ``dataset[index]`` really comes from, looking through
    ``ConcatDataset`` (and so :class:`ConcatSegmentation`) and ``Subset`` wrappers."""
    while True:
        if isinstance(dataset, ConcatDataset):
            if index < 0:
                index += len(dataset)
            part = bisect.bisect_right(dataset.cumulative_sizes, index)
            index -= dataset.cumulative_sizes[part - 1] if part > 0 else 0
            dataset = dataset.datasets[part]
        elif isinstance(dataset, Subset):
            index = int(dataset.indices[index])
            dataset = dataset.dataset
        else:
            return dataset, index


def label_check_indices(dataset: Dataset, count: int) -> list[int]:
    """Indices of the ``count`` source items whose labels ``UDADataModule`` checks at the start
    of fit: the first ones, taken in turn from the parts of a ``ConcatDataset`` (so that a
    wrongly read second part, e.g. SYNTHIA's 16-bit labels, is checked too)."""
    if not isinstance(dataset, ConcatDataset):
        return list(range(min(count, len(dataset))))  # type: ignore[arg-type]
    starts = [0, *dataset.cumulative_sizes[:-1]]
    sizes = [len(part) for part in dataset.datasets]  # type: ignore[arg-type]
    count = min(count, sum(sizes))
    out: list[int] = []
    for j in range(max(sizes, default=0)):  # round robin: item j of each part in turn
        out += [start + j for start, size in zip(starts, sizes, strict=True) if j < size]
        if len(out) >= count:
            break
    return out[:count]


class ConcatSegmentation(ConcatDataset):
    """Labelled segmentation datasets in one label space, read one after the other.

    Items ``0 .. len(a) - 1`` are ``a``'s, the next ``len(b)`` ``b``'s, and so on, each loaded
    and transformed by its own dataset. As a ``UDADataModule`` source without rare-class
    sampling, each stream cycle is a shuffled pass over the union, so the parts are drawn in
    proportion to their sizes (GTA5 + SYNTHIA: 24,966 and 9,400 frames, about 73% and 27%).

    Rare-class sampling works on the union: the per-image class counts are taken over every
    part's label files with that part's reader (``samples``/``load_mask``), so class
    frequencies and the images eligible for each class are those of the union, and the
    statistics cache is named after the union's label files. Parts without label files are
    counted from their items (``dataset[i]["mask"]``), as for any such dataset.

    Evaluation subsets: the union keeps the parts' ``class_subsets`` only when all parts have
    the same; otherwise it is evaluated on all its classes (``{"mIoU": all}``). GTA5 + SYNTHIA
    is therefore scored on the 19 Cityscapes classes, not on SYNTHIA's mIoU16/mIoU13 (which
    describe a model that never saw terrain, truck or train labels; GTA5 labels them).

    Args:
        datasets: the parts (at least one), each with items ``{"image", "mask"}``.

    Raises:
        ValueError: no part, or parts whose ``classes``, ``palette``, ``ignore_index``,
            ``normalization`` or ``return_mask`` differ (the error names the parts and values).

    Example:
        >>> gta, synthia = GTA5("data/gta5"), SYNTHIA("data/synthia")  # doctest: +SKIP
        >>> source = ConcatSegmentation([gta, synthia])  # doctest: +SKIP
        >>> len(source), source.class_subsets["mIoU"] == list(range(19))  # doctest: +SKIP
        (34366, True)
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        parts = list(datasets)
        if not parts:
            raise ValueError("ConcatSegmentation: datasets is empty; pass at least one dataset")
        super().__init__(parts)
        reference = parts[0]
        if getattr(reference, "classes", None) is None:
            raise ValueError(
                f"ConcatSegmentation: part 0 ({_name(reference)}) has no `classes` (class names "
                "indexed by train id); every part must declare its label space"
            )
        self.classes: list[str] = _agree(parts, "classes", list)
        self.palette: np.ndarray | None = _agree(parts, "palette", np.asarray)
        self.ignore_index: int = _agree(parts, "ignore_index", int, IGNORE_INDEX)
        self.normalization = _agree(parts, "normalization", lambda space: space)
        self.return_mask: bool = _agree(parts, "return_mask", bool, True)
        subsets = [getattr(part, "class_subsets", None) for part in parts]
        everything = {"mIoU": list(range(len(self.classes)))}
        first = subsets[0]
        same = first is not None and all(s is not None and dict(s) == dict(first) for s in subsets)
        chosen = first if same else everything
        self.class_subsets: dict[str, list[int]] = {k: list(v) for k, v in chosen.items()}  # type: ignore[union-attr]
        self._mask_owner: dict[str, int] | None = None

    @property
    def num_classes(self) -> int:
        """Number of train classes ``C``."""
        return len(self.classes)

    @property
    def samples(self) -> list[tuple[Any, Any]]:
        """Every part's ``(image, label)`` files, in item order (for rare-class statistics and
        the label check); an ``AttributeError`` when a part has no ``samples``."""
        out: list[tuple[Any, Any]] = []
        for part in self.datasets:
            part_samples = getattr(part, "samples", None)
            if part_samples is None:
                raise AttributeError(f"{_name(part)} has no samples (label files)")
            out += part_samples
        return out

    def load_mask(self, path: Path) -> np.ndarray:
        """Train ids of the label file ``path``, read by the part that lists it (GTA5's label-id
        table for GTA5 files, SYNTHIA's 16-bit reader for SYNTHIA's)."""
        if self._mask_owner is None:
            owner: dict[str, int] = {}
            for i, part in enumerate(self.datasets):
                for _, mask in getattr(part, "samples", None) or []:
                    owner.setdefault(str(mask), i)
            self._mask_owner = owner
        part = self._mask_owner.get(str(path))
        if part is None:
            raise FileNotFoundError(
                f"ConcatSegmentation: {path} is not a label file of any part ({self._parts()})"
            )
        return self.datasets[part].load_mask(path)  # type: ignore[attr-defined]

    @property
    def LABEL_HINT(self) -> str:  # noqa: N802  (the name UDADataModule's label check reads)
        """Each part's likely cause of all-void labels."""
        hints = [
            f"{_name(part)}: {getattr(part, 'LABEL_HINT', None) or 'labels not in train ids'}"
            for part in self.datasets
        ]
        return "; ".join(hints)

    def _parts(self) -> str:
        return " + ".join(f"{_name(part)} ({len(part)})" for part in self.datasets)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({' + '.join(repr(part) for part in self.datasets)})"


def _name(dataset: Dataset) -> str:
    root = getattr(dataset, "root", None)
    return type(dataset).__name__ + (f" at {root}" if root is not None else "")


def _agree(parts: list[Dataset], attribute: str, convert: Any, default: Any = None) -> Any:
    """The parts' common ``attribute`` (``default`` when none has it); raise when two differ."""
    values = [(part, getattr(part, attribute, None)) for part in parts]
    values = [(part, convert(value)) for part, value in values if value is not None]
    if not values:
        return default
    first_part, first = values[0]
    for part, value in values[1:]:
        equal = np.array_equal(value, first) if isinstance(first, np.ndarray) else value == first
        if not equal:
            raise ValueError(
                f"ConcatSegmentation: the parts' {attribute} differ:\n"
                f"  {_name(first_part)}: {_show(first)}\n  {_name(part)}: {_show(value)}\n"
                "Build every part in one label space and input space (same classes, palette, "
                "ignore index, normalization, return_mask)."
            )
    return first


def _show(value: Any) -> str:
    return str(value.tolist() if isinstance(value, np.ndarray) else value)
