"""Label spaces: the 19 Cityscapes train classes, id → train-id tables, palette, SYNTHIA subsets.

Every dataset in :mod:`lightning_uda.data` converts its raw label values to **train ids**
``0..18`` (the 19 Cityscapes evaluation classes) with ``255`` for void / ignore, by indexing a
256-entry ``uint8`` lookup table (LUT): ``train_ids = LUT[raw_ids]``.

Tables here:

- :data:`CITYSCAPES_LABELS`: the official Cityscapes label definitions (cityscapesScripts
  ``helpers/labels.py``): name, label id, train id, colour.
- :data:`CITYSCAPES_ID_TO_TRAIN_ID`: label id (``*_gtFine_labelIds.png``, also GTA5 ``labels/``)
  → train id. Ids not in the table map to 255.
- :data:`TRAIN_ID_TO_CITYSCAPES_ID`: train id → label id, for exporting predictions as labelId PNGs
  (the format of the Cityscapes evaluation server). 255 and unused values map to 0 (unlabeled).
- :data:`CITYSCAPES_PALETTE`: ``19 × 3`` uint8 RGB colours of the train classes.
- :data:`SYNTHIA_ID_TO_TRAIN_ID`: SYNTHIA-RAND-CITYSCAPES raw id (R channel of ``GT/LABELS``)
  → train id.
- :data:`SYNTHIA_16_CLASSES`, :data:`SYNTHIA_13_CLASSES`: the train ids evaluated for
  SYNTHIA → Cityscapes (mIoU16, and mIoU13 = the 16 without wall, fence, pole).

Example:
    >>> import numpy as np
    >>> raw = np.array([[7, 8], [0, 33]], dtype=np.uint8)  # road, sidewalk, unlabeled, bicycle
    >>> CITYSCAPES_ID_TO_TRAIN_ID[raw].tolist()
    [[0, 1], [255, 18]]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lightning_uda.constants import IGNORE_INDEX

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_KNOWN_IDS",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "CityscapesLabel",
    "SYNTHIA_13_CLASSES",
    "SYNTHIA_16_CLASSES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "SYNTHIA_KNOWN_IDS",
    "SYNTHIA_TO_TRAIN_ID",
    "TRAIN_ID_TO_CITYSCAPES_ID",
    "colorize",
    "lookup_table",
]


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table.

    Attributes:
        name: class name.
        id: label id as stored in ``*_gtFine_labelIds.png`` (-1: license plate, never drawn).
        train_id: train id ``0..18``, or 255 (void / not evaluated).
        color: RGB colour.
    """

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


#: The official table (cityscapesScripts, ``cityscapesscripts/helpers/labels.py``); license plate's
#: train id is -1 there, it is void (255) here like every other non-evaluated class.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, 255, (0, 0, 142)),
)

_EVALUATED = sorted((lab for lab in CITYSCAPES_LABELS if lab.train_id != 255), key=lambda x: x[2])

#: The 19 train classes, indexed by train id.
CITYSCAPES_CLASSES: list[str] = [lab.name for lab in _EVALUATED]

#: ``19 × 3`` uint8 RGB colours, indexed by train id.
CITYSCAPES_PALETTE: np.ndarray = np.array([lab.color for lab in _EVALUATED], dtype=np.uint8)
CITYSCAPES_PALETTE.flags.writeable = False


def lookup_table(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """Build a 256-entry uint8 lookup table from ``{raw value: train id}``.

    Args:
        mapping: raw values (0..255, or -1 meaning 255 as stored in a uint8 PNG) → train ids.
        default: value for raw values not in ``mapping``.

    Returns:
        ``(256,)`` uint8 array ``lut`` with ``lut[raw] = train id``; index a label image with it.
    """
    lut = np.full(256, default, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw % 256] = train_id
    lut.flags.writeable = False
    return lut


def _known(values: list[int]) -> np.ndarray:
    known = np.zeros(256, dtype=bool)
    known[[v % 256 for v in values]] = True
    known.flags.writeable = False
    return known


#: Cityscapes label id → train id, ``(256,)`` uint8; ids not in the table → 255.
CITYSCAPES_ID_TO_TRAIN_ID: np.ndarray = lookup_table(
    {lab.id: lab.train_id for lab in CITYSCAPES_LABELS}
)

#: ``(256,)`` bool: raw values a Cityscapes/GTA5 labelIds image may contain: ids 0..33 and 255
#: (license plate's -1 as a uint8). Anything else is a corrupt or foreign label file.
CITYSCAPES_KNOWN_IDS: np.ndarray = _known([lab.id for lab in CITYSCAPES_LABELS])

#: Train id → Cityscapes label id, ``(256,)`` uint8, for exporting predictions as labelId PNGs;
#: 255 (ignore) and other values → 0 (unlabeled).
TRAIN_ID_TO_CITYSCAPES_ID: np.ndarray = lookup_table(
    {lab.train_id: lab.id for lab in _EVALUATED}, default=0
)

#: SYNTHIA-RAND-CITYSCAPES raw class id (R channel of ``GT/LABELS/*.png``) → train id.
#: Ids from the dataset's README.txt; the mapping is the one used by DACS
#: (github.com/vikolss/DACS, ``data/synthia_dataset.py``) and DAFormer / mmsegmentation
#: (github.com/lhoyer/DAFormer, ``tools/convert_datasets/synthia.py``).
#: Terrain (16), truck (18) and train (20) are in the table but never occur in SYNTHIA.
#: Void ids: 0 void, 13 parking-slot, 14 road-work, 22 lanemarking (→ 255, as in both).
SYNTHIA_TO_TRAIN_ID: dict[int, int] = {
    1: 10,  # sky
    2: 2,  # building
    3: 0,  # road
    4: 1,  # sidewalk
    5: 4,  # fence
    6: 8,  # vegetation
    7: 5,  # pole
    8: 13,  # car
    9: 7,  # traffic sign
    10: 11,  # pedestrian -> person
    11: 18,  # bicycle
    12: 17,  # motorcycle
    15: 6,  # traffic light
    16: 9,  # terrain (absent from SYNTHIA)
    17: 12,  # rider
    18: 14,  # truck (absent)
    19: 15,  # bus
    20: 16,  # train (absent)
    21: 3,  # wall
}
_SYNTHIA_VOID_IDS = (0, 13, 14, 22)

#: SYNTHIA raw id → train id, ``(256,)`` uint8; ids not in the table → 255.
SYNTHIA_ID_TO_TRAIN_ID: np.ndarray = lookup_table(SYNTHIA_TO_TRAIN_ID)

#: ``(256,)`` bool: raw ids a SYNTHIA-RAND-CITYSCAPES label may contain (0..22).
SYNTHIA_KNOWN_IDS: np.ndarray = _known([*SYNTHIA_TO_TRAIN_ID, *_SYNTHIA_VOID_IDS])

#: Train ids evaluated for SYNTHIA → Cityscapes (mIoU16): all but terrain, truck, train.
SYNTHIA_16_CLASSES: list[int] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]

#: mIoU13: the 16 without wall (3), fence (4) and pole (5).
SYNTHIA_13_CLASSES: list[int] = [c for c in SYNTHIA_16_CLASSES if c not in (3, 4, 5)]


def colorize(mask: np.ndarray | object, palette: np.ndarray | None = None) -> np.ndarray:
    """Colour a train-id mask.

    Args:
        mask: ``H × W`` integer train ids (numpy array or torch tensor; 255 = ignore).
        palette: ``C × 3`` uint8 RGB colours; defaults to :data:`CITYSCAPES_PALETTE`.

    Returns:
        ``H × W × 3`` uint8 RGB image; ignore and out-of-range values are black.
    """
    if hasattr(mask, "detach"):  # torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"colorize expects an H×W mask, got shape {mask.shape}")
    palette = CITYSCAPES_PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[valid] = palette[mask[valid].astype(np.intp)]
    return image
