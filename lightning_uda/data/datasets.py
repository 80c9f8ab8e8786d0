"""The benchmark datasets: Cityscapes, GTA5 and SYNTHIA, each a :class:`SegmentationFolder`.

The generic paired folder lives in :mod:`lightning_uda.data.folder`, file reading and the errors
in :mod:`lightning_uda.data.files`; both are re-exported here.

Every dataset returns items ``{"image": float 3×H×W, "mask": long H×W}`` with images in the
dataset's input space (``normalization``; default ImageNet-normalised RGB, see
:mod:`lightning_uda.normalization`) and masks in train ids (``0..C-1``, 255 = ignore), converted on
load with a lookup table (:mod:`lightning_uda.data.labels`). Each exposes ``classes``, ``palette``
(``C×3`` uint8), ``ignore_index`` (255), ``class_subsets`` (metric name → evaluated train ids) and
``normalization`` (an :class:`~lightning_uda.normalization.InputNormalization`).

The folder layout is checked when a dataset is built: a missing root, an empty split or images
without labels raise :class:`DatasetLayoutError` naming the paths and showing the expected tree.
Label values are checked when a mask is loaded: a value outside the dataset's table raises
:class:`UnknownLabelError` naming the file and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lightning_uda.data.files import (
    AllIgnoreLabelError,
    CorruptImageError,
    DatasetLayoutError,
    PathLike,
    UnknownLabelError,
    _show,
    check_complete,
    read_image,
)
from lightning_uda.data.folder import SegmentationFolder, TransformLike
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_KNOWN_IDS,
    CITYSCAPES_PALETTE,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    SYNTHIA_KNOWN_IDS,
)
from lightning_uda.normalization import NormalizationLike

__all__ = [
    "GTA5",
    "AllIgnoreLabelError",
    "CorruptImageError",
    "check_complete",
    "SYNTHIA",
    "Cityscapes",
    "DatasetLayoutError",
    "SegmentationFolder",
    "UnknownLabelError",
    "read_image",
]


class Cityscapes(SegmentationFolder):
    """Cityscapes (fine annotations), label ids mapped to the 19 train ids on load.

    Expected layout (the official archives ``leftImg8bit_trainvaltest.zip`` and
    ``gtFine_trainvaltest.zip`` unpacked into one ``root``)::

        root/
        ├── leftImg8bit/
        │   ├── train/{city}/{city}_{seq}_{frame}_leftImg8bit.png
        │   ├── val/...
        │   └── test/...
        └── gtFine/
            ├── train/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
            ├── val/...
            └── test/...

    Only ``*_gtFine_labelIds.png`` is read (``_labelTrainIds``, ``_color``, ``_instanceIds`` are
    ignored); ids go through :data:`~lightning_uda.data.labels.CITYSCAPES_ID_TO_TRAIN_ID`. Ids
    other than 0..33 and 255 are an error.

    Args:
        root: dataset root (see the tree).
        split: ``"train"``, ``"val"``, ``"test"`` (any folder under ``leftImg8bit/``).
        transform: see :class:`SegmentationFolder` (e.g. ``"cityscapes_train"``,
            ``"cityscapes_val"``: images fed at 1024×512, labels kept at 2048×1024, the
            ``"full"`` evaluation protocol of :mod:`lightning_uda.data.transforms`).
        return_mask: ``False`` for unlabelled target training (``gtFine`` is then not needed).
        normalization: input space of the images (see :class:`SegmentationFolder`), e.g.
            ``"caffe"`` for the Caffe DeepLab-v2 weights.
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``
            (see :class:`SegmentationFolder`).

    Example:
        >>> val = Cityscapes("data/cityscapes", split="val", transform="cityscapes_val")
        ... # doctest: +SKIP
    """

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = (
        "Cityscapes reads *_gtFine_labelIds.png (label ids 0..33); files holding train ids or "
        "colours, or re-encoded labels, map to void"
    )

    LAYOUT = (
        "root/\n"
        "├── leftImg8bit/{split}/{city}/*_leftImg8bit.png\n"
        "└── gtFine/{split}/{city}/*_gtFine_labelIds.png"
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: TransformLike = None,
        return_mask: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        self.split = split
        _check_root(self.root, type(self).__name__, self.LAYOUT)
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            have = sorted(p.name for p in (self.root / "leftImg8bit").glob("*") if p.is_dir())
            raise DatasetLayoutError(
                f"Cityscapes split {split!r} not found: {images} does not exist (splits there: "
                f"{have or 'none'}). Expected layout:\n{self.LAYOUT}"
            )
        super().__init__(
            images=images,
            masks=self.root / "gtFine" / split,
            label_map=CITYSCAPES_ID_TO_TRAIN_ID,
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            image_suffix="_leftImg8bit",
            mask_suffix="_gtFine_labelIds",
            image_extensions=(".png",),
            recursive=True,
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = CITYSCAPES_KNOWN_IDS


class GTA5(SegmentationFolder):
    """GTA5 ("Playing for Data", Richter et al. 2016), Cityscapes label ids → 19 train ids.

    Expected layout (the 10 parts' ``images`` and ``labels`` folders merged)::

        root/
        ├── images/00001.png ... 24966.png
        └── labels/00001.png ... 24966.png   # paletted PNGs; palette indices = Cityscapes ids

    Args:
        root: dataset root (see the tree).
        transform: see :class:`SegmentationFolder` (e.g. ``"gta5_train"``).
        split_file: optional text file listing the images to use, one name per line
            (``00001.png`` or ``00001``); other images are left out.
        return_mask: ``False`` to load images only.
        resize_mismatched_masks: a few GTA5 labels are not the size of their image; they are
            resized (nearest) to it by default, as the reference code effectively does by
            resizing image and label separately.
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels`` (see :class:`SegmentationFolder`).
    """

    LAYOUT = "root/\n├── images/*.png\n└── labels/*.png   (Cityscapes label ids)"

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = (
        "GTA5 labels are paletted PNGs whose palette indices are Cityscapes label ids; labels "
        "converted to colour/RGB or to train ids map to void"
    )

    def __init__(
        self,
        root: PathLike,
        transform: TransformLike = None,
        split_file: PathLike | None = None,
        return_mask: bool = True,
        resize_mismatched_masks: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        _check_root(self.root, type(self).__name__, self.LAYOUT)
        super().__init__(
            images=self.root / "images",
            masks=self.root / "labels",
            label_map=CITYSCAPES_ID_TO_TRAIN_ID,
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            image_extensions=(".png",),
            return_mask=return_mask,
            resize_mismatched_masks=resize_mismatched_masks,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = CITYSCAPES_KNOWN_IDS
        if split_file is not None:
            self.samples = _select(self.samples, Path(split_file))


class SYNTHIA(SegmentationFolder):
    """SYNTHIA-RAND-CITYSCAPES, raw SYNTHIA ids → the 19 Cityscapes train ids (16 occur).

    Expected layout (the ``RAND_CITYSCAPES`` archive)::

        root/
        ├── RGB/0000000.png ...
        └── GT/
            └── LABELS/0000000.png ...   # 16-bit, 3 channels; class id in the R channel

    Labels are read with ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` (BGR order, so the id is
    ``[..., 2]``): Pillow reduces 16-bit colour PNGs to 8 bits and every id comes back wrong.
    Ids go through :data:`~lightning_uda.data.labels.SYNTHIA_ID_TO_TRAIN_ID`; ids above 22 are an
    error. Evaluate with ``class_subsets``: ``mIoU16`` and ``mIoU13``.

    Args:
        root: dataset root (see the tree).
        transform: see :class:`SegmentationFolder` (e.g. ``"synthia_train"``).
        return_mask: ``False`` to load images only.
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``.
    """

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = (
        "SYNTHIA labels are 16-bit PNGs with the class id in the R channel: 16-bit SYNTHIA "
        "labels read as 8-bit (re-saved through Pillow, which reduces 16-bit PNGs, or scaled to "
        "8 bits) or with the id in another channel load as void everywhere"
    )

    LAYOUT = "root/\n├── RGB/*.png\n└── GT/LABELS/*.png   (16-bit, class id in the R channel)"

    def __init__(
        self,
        root: PathLike,
        transform: TransformLike = None,
        return_mask: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        _check_root(self.root, type(self).__name__, self.LAYOUT)
        super().__init__(
            images=self.root / "RGB",
            masks=self.root / "GT" / "LABELS",
            label_map=SYNTHIA_ID_TO_TRAIN_ID,
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            class_subsets={"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES},
            image_extensions=(".png",),
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = SYNTHIA_KNOWN_IDS

    def read_mask(self, path: Path) -> np.ndarray:
        """Raw SYNTHIA ids, ``H × W`` uint16: the R channel of the 16-bit label PNG."""
        check_complete(path)
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise DatasetLayoutError(f"Cannot read label image {path}.")
        return label[..., 2] if label.ndim == 3 else label


def _check_root(root: Path, name: str, layout: str) -> None:
    if not root.is_dir():
        raise DatasetLayoutError(
            f"{name} root {root} does not exist or is not a folder. Expected layout:\n{layout}"
        )


def _select(samples: list[tuple[Path, Path | None]], split_file: Path) -> list:
    if not split_file.is_file():
        raise DatasetLayoutError(f"split_file {split_file} does not exist.")
    wanted = [Path(line.strip()).stem for line in split_file.read_text().splitlines()]
    wanted = [w for w in wanted if w]
    by_stem = {image.stem: (image, mask) for image, mask in samples}
    missing = [w for w in wanted if w not in by_stem]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} names in {split_file} have no image (with label): {_show(missing)}."
        )
    if not wanted:
        raise DatasetLayoutError(f"split_file {split_file} lists no images.")
    return [by_stem[w] for w in wanted]
