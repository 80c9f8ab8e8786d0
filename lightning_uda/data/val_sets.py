"""Several validation targets for :class:`~lightning_uda.data.UDADataModule`: their names.

A run may evaluate one model on several labelled targets (ACDC's four conditions, or Cityscapes,
BDD100K and Mapillary for domain generalisation). Each gets a name, the ``<name>`` of its metrics
``val/<name>/mIoU``: the keys of a ``{name: dataset}`` mapping, ``val_names``, or
:func:`default_val_name`. Two sets of one name would overwrite each other's metrics, so that is
an error naming both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch.utils.data import Dataset

from lightning_uda.data.checks import _base_dataset

__all__ = ["ValSets", "default_val_name"]

#: ``val`` as given: one dataset, a list of them (named by :func:`default_val_name` or
#: ``val_names``), or ``{name: dataset}``.
ValSets = Dataset | Sequence[Dataset] | Mapping[str, Dataset]


def default_val_name(dataset: Dataset) -> str:
    """The metric name of a validation set given without one: its class name in lower case
    (``Cityscapes`` → ``cityscapes``, ``BDD100K`` → ``bdd100k``), with ACDC's conditions or Dark
    Zurich's times appended when not all of them (``acdc_night``)."""
    base = _base_dataset(dataset)
    name = type(base).__name__.lower()
    conditions = getattr(base, "conditions", None)
    if conditions is not None and len(conditions) < 4:
        name += "_" + "_".join(conditions)
    return name


def _named_val_sets(val: ValSets, names: Sequence[str] | None) -> tuple[dict[str, Dataset], bool]:
    """``({name: dataset}, named)``; ``named`` is False for one dataset given bare."""
    if isinstance(val, Mapping):
        if names is not None:
            raise ValueError(
                "UDADataModule: val is a {name: dataset} mapping, so val_names must be None "
                f"(got {list(names)}); the mapping's keys are the names"
            )
        sets, named = {str(k): v for k, v in val.items()}, True
        given = list(sets)
    else:
        if isinstance(val, Dataset) or not isinstance(val, Sequence):
            if names is None:
                return {"val": val}, False  # type: ignore[dict-item]
            val = [val]  # type: ignore[list-item]
        datasets = list(val)  # type: ignore[arg-type]
        if names is not None and len(names) != len(datasets):
            raise ValueError(
                f"UDADataModule: {len(datasets)} validation sets but {len(names)} val_names "
                f"{list(names)}: give one name per set"
            )
        given = list(names) if names is not None else [default_val_name(d) for d in datasets]
        sets, named = {}, True
        for name, dataset in zip(given, datasets, strict=True):
            if name in sets:
                raise ValueError(
                    f"UDADataModule: two validation sets are named {name!r}: {sets[name]!r} and "
                    f"{dataset!r} (e.g. {_where(sets[name])} and {_where(dataset)}). Their "
                    "metrics would overwrite each other under val/<name>/...: name them, "
                    "val_names=['acdc_fog', 'acdc_night', ...] or val={'acdc_fog': ..., ...}."
                )
            sets[name] = dataset
    if not sets:
        raise ValueError("UDADataModule: val is empty; pass at least one validation set")
    bad = [n for n in given if not n or "/" in n or n != n.strip()]
    if bad:
        raise ValueError(
            f"UDADataModule: validation set names {bad} cannot be metric names (val/<name>/mIoU):"
            " use non-empty names without '/' or surrounding spaces"
        )
    return sets, named


def _where(dataset: Dataset) -> str:
    base = _base_dataset(dataset)
    return str(getattr(base, "root", None) or getattr(base, "images_dir", type(base).__name__))
