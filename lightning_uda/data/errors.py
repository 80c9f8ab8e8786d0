"""The errors datasets raise on bad files or layouts (re-exported by :mod:`.files`).

They live apart from the readers so that both :mod:`.files` (decoding) and :mod:`.archives`
(zip members) can raise them without importing each other in a circle.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AllIgnoreLabelError",
    "CorruptImageError",
    "DatasetLayoutError",
    "UnknownLabelError",
]

_SHOW_MAX = 5  # how many offending files an error message names


class DatasetLayoutError(ValueError):
    """The files on disk do not have the layout a dataset expects (the message shows it)."""


class CorruptImageError(DatasetLayoutError):
    """An image or label file is truncated or damaged (it would decode partly, with a warning)."""


class AllIgnoreLabelError(ValueError):
    """Source labels that load with every pixel void: almost always a conversion problem."""


class UnknownLabelError(ValueError):
    """A label image holds a value outside the dataset's id table (corrupt or foreign file)."""


def _show(items: Sequence[object]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW_MAX])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW_MAX else "")
