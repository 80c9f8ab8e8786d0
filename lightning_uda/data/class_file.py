"""A dataset's classes in a small YAML or JSON file: names, colours, and the raw label values
each train id gathers (``SegmentationFolder(class_file=...)``; see ``docs/custom_data.md``).

::

    # classes.yaml
    classes:
      - name: background
        color: [0, 0, 0]
        ids: [0]            # raw values in the mask files that become this class
      - name: crack
        color: [230, 25, 75]
        ids: [1, 2]         # several raw values may map to one class
    void_ids: [255, 99]     # raw values that are ignored (train id 255)

Train ids are the positions in ``classes`` (``0..C-1``). Without ``ids`` anywhere, the masks
already hold train ids (``0..C-1``, 255 void). ``color`` is optional (evenly spread hues); a
class may also be just its name (``- road``). A ``.json`` file holds the same structure. Every
mistake is an error that names the file and the entry: a missing name, a duplicate name or raw
value, a colour that is not three values in 0..255, some classes with ``ids`` and others without.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_uda.constants import IGNORE_INDEX

__all__ = ["ClassFileError", "ClassSpec", "load_class_file"]


class ClassFileError(ValueError):
    """A class file that cannot be used (the message names the file and the entry)."""


@dataclass(frozen=True)
class ClassSpec:
    """The classes of a class file.

    Attributes:
        names: ``C`` class names, indexed by train id.
        palette: ``C × 3`` uint8 RGB colours.
        label_map: raw value → train id (void values → 255), or ``None`` when the masks hold
            train ids already.
    """

    names: list[str]
    palette: np.ndarray
    label_map: dict[int, int] | None


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ClassFileError(f"class file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 (yaml and json raise their own types)
        raise ClassFileError(f"class file {path} is not valid YAML/JSON: {error}") from None


def _raw_values(path: Path, where: str, value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        raise ClassFileError(
            f"{path}: {where} must be raw label values in 0..255 (masks are 8-bit), got {value!r}"
        )
    return [int(v) for v in values]


def load_class_file(path: str | Path) -> ClassSpec:
    """Read a class file (YAML, or JSON by its ``.json`` extension); see the module docstring.

    Raises:
        ClassFileError: a missing or malformed file, naming it and the entry.
    """
    from lightning_uda.data.folder import _default_palette

    path = Path(path)
    data = _read(path)
    entries = data.get("classes") if isinstance(data, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ClassFileError(
            f"{path}: expected a mapping with a non-empty 'classes' list, e.g.\n"
            "classes:\n  - {name: background, color: [0, 0, 0], ids: [0]}\n"
            "  - {name: crack, color: [230, 25, 75], ids: [1]}"
        )
    names: list[str] = []
    colors: list[list[int] | None] = []
    ids: list[list[int] | None] = []
    for index, entry in enumerate(entries):
        where = f"classes[{index}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ClassFileError(f"{path}: {where} needs a 'name' (a string), got {entry!r}")
        unknown = set(entry) - {"name", "color", "ids"}
        if unknown:
            raise ClassFileError(
                f"{path}: {where} has unknown keys {sorted(unknown)} (name, color, ids)"
            )
        if entry["name"] in names:
            raise ClassFileError(f"{path}: class name {entry['name']!r} appears twice")
        names.append(entry["name"])
        color = entry.get("color")
        if color is not None and (
            not isinstance(color, list)
            or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise ClassFileError(f"{path}: {where}.color must be [r, g, b] in 0..255, got {color}")
        colors.append(color)
        ids.append(_raw_values(path, f"{where}.ids", entry["ids"]) if "ids" in entry else None)
    if len(names) > IGNORE_INDEX:
        raise ClassFileError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} fit in 8 bits")
    void = data.get("void_ids")
    with_ids = [i for i in ids if i is not None]
    if with_ids and len(with_ids) != len(ids):
        missing = [names[i] for i, v in enumerate(ids) if v is None]
        raise ClassFileError(
            f"{path}: some classes list their raw 'ids' and {missing} do not; give every class "
            "its ids, or none (masks holding train ids 0..C-1)"
        )
    label_map: dict[int, int] | None = None
    if with_ids:
        label_map = {}
        for train_id, values in enumerate(with_ids):
            for value in values:
                if value in label_map:
                    raise ClassFileError(
                        f"{path}: raw value {value} is listed for both "
                        f"{names[label_map[value]]!r} and {names[train_id]!r}"
                    )
                label_map[value] = train_id
        for value in _raw_values(path, "void_ids", void) if void is not None else []:
            if value in label_map:
                raise ClassFileError(
                    f"{path}: raw value {value} is both void and {names[label_map[value]]!r}"
                )
            label_map[value] = IGNORE_INDEX
    elif void is not None:
        raise ClassFileError(
            f"{path}: void_ids needs the classes' raw 'ids' (without them the masks hold train "
            "ids and 255 is void)"
        )
    generated = _default_palette(len(names))
    palette = np.array(
        [c if c is not None else generated[i] for i, c in enumerate(colors)], dtype=np.uint8
    ).reshape(-1, 3)
    return ClassSpec(names=names, palette=palette, label_map=label_map)
