"""Checks :class:`~lightning_uda.data.datamodule.UDADataModule` runs on its datasets: one class
list, one input space, and (at the start of ``fit``) source labels that are not all void."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from lightning_uda.normalization import IMAGENET, InputNormalization, get_normalization


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


def _check_classes(datasets: Mapping[str, Dataset | None]) -> None:
    """Raise unless every dataset with ``classes`` has the val dataset's class list."""
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


def _check_normalization(datasets: Mapping[str, Dataset | None]) -> InputNormalization:
    """The input space all datasets declare (ImageNet if none does); raise if they disagree."""
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
