"""The benchmark datasets: Cityscapes, GTA5 and SYNTHIA, each a :class:`SegmentationFolder`.

SYNTHIA lives in :mod:`lightning_uda.data.synthia`, the generic paired folder in
:mod:`lightning_uda.data.folder`, file reading and the errors in :mod:`lightning_uda.data.files`;
all are re-exported here.

Every dataset returns items ``{"image": float 3×H×W, "mask": long H×W}`` with images in the
dataset's input space (``normalization``; default ImageNet-normalised RGB, see
:mod:`lightning_uda.normalization`) and masks in train ids (``0..C-1``, 255 = ignore), converted on
load with a lookup table (:mod:`lightning_uda.data.labels`). Each exposes ``classes``, ``palette``
(``C×3`` uint8), ``ignore_index`` (255), ``class_subsets`` (metric name → evaluated train ids) and
``normalization`` (an :class:`~lightning_uda.normalization.InputNormalization`).

Each reads its files either from the extracted folders or straight from the official zip archives
when ``root`` holds those instead (``leftImg8bit_trainvaltest.zip``, ``01_images.zip`` …; per
folder, an extracted folder wins); see :mod:`lightning_uda.data.archives` and each class's
"Archives" section. Items are identical either way.

The folder layout is checked when a dataset is built: a missing root, an empty split or images
without labels raise :class:`DatasetLayoutError` naming the paths and showing the expected tree.
Label values are checked when a mask is loaded: a value outside the dataset's table raises
:class:`UnknownLabelError` naming the file and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_uda.data.archive_folder import (
    ArchiveAwareFolder,
    Source,
    _check_root,
    child,
    exists,
    locate,
    subfolders,
)
from lightning_uda.data.archives import ArchiveError
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
)
from lightning_uda.data.synthia import SYNTHIA
from lightning_uda.normalization import NormalizationLike

__all__ = [
    "GTA5",
    "AllIgnoreLabelError",
    "ArchiveError",
    "CorruptImageError",
    "check_complete",
    "SYNTHIA",
    "Cityscapes",
    "DatasetLayoutError",
    "SegmentationFolder",
    "UnknownLabelError",
    "read_image",
]


class Cityscapes(ArchiveAwareFolder):
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

    Archives: ``root`` may instead hold the two official archives, read without extracting::

        root/
        ├── leftImg8bit_trainvaltest.zip   # leftImg8bit/{train,val,test}/{city}/*_leftImg8bit.png
        └── gtFine_trainvaltest.zip        # gtFine/{train,val,test}/{city}/*_gtFine_*.png

    The member paths are those of the official packages (both also hold a ``README`` and a
    ``license.txt`` at the top, ignored here), as tue-mps' VFM-UDA code reads them
    (``leftImg8bit/train``, ``gtFine/train`` inside ``leftImg8bit_trainvaltest.zip`` and
    ``gtFine_trainvaltest.zip``). An archive of the extracted tree inside one top-level folder
    is accepted too. An extracted folder wins over its archive, per folder (e.g. ``gtFine/``
    unpacked and ``leftImg8bit_trainvaltest.zip`` kept zipped). A truncated archive, one under
    the other's name, or labels missing from ``gtFine_trainvaltest.zip`` raise
    :class:`ArchiveError` naming the file.

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

    ZIP_LAYOUT = (
        "root/\n"
        "├── leftImg8bit_trainvaltest.zip   (leftImg8bit/{split}/{city}/*_leftImg8bit.png)\n"
        "└── gtFine_trainvaltest.zip        (gtFine/{split}/{city}/*_gtFine_labelIds.png)"
    )

    IMAGES_ARCHIVE = "leftImg8bit_trainvaltest.zip"
    LABELS_ARCHIVE = "gtFine_trainvaltest.zip"

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
        _check_root(self.root, type(self).__name__, self.LAYOUT, self.ZIP_LAYOUT)
        layouts = (self.LAYOUT, self.ZIP_LAYOUT)
        found = locate(
            self.root,
            "leftImg8bit",
            pattern=self.IMAGES_ARCHIVE,
            layouts=layouts,
            misnamed=lambda archive: {"gtFine": self.LABELS_ARCHIVE},
        )
        images = child(found or self.root / "leftImg8bit", split)
        if not exists(images):
            splits = subfolders(found) if found is not None else []
            where = images if found is not None else f"{images} (nor {self.IMAGES_ARCHIVE})"
            raise DatasetLayoutError(
                f"Cityscapes split {split!r} not found: {where} does not exist (splits there: "
                f"{splits or 'none'}). Expected layout:\n{self.LAYOUT}\nor, not extracted:\n"
                f"{self.ZIP_LAYOUT}"
            )
        masks: Source = self.root / "gtFine" / split
        if return_mask:
            labels = locate(
                self.root,
                "gtFine",
                pattern=self.LABELS_ARCHIVE,
                layouts=layouts,
                misnamed=lambda archive: {"leftImg8bit": self.IMAGES_ARCHIVE},
                required_by=f"{type(self).__name__} labels (return_mask=False needs none)",
            )
            masks = child(labels, split)
            self._check_archive_labels(
                images,
                masks,
                suffixes=("_leftImg8bit", "_gtFine_labelIds"),
                recursive=True,
                labels_archive=lambda archive: self.LABELS_ARCHIVE,
            )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
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


class GTA5(ArchiveAwareFolder):
    """GTA5 ("Playing for Data", Richter et al. 2016), Cityscapes label ids → 19 train ids.

    Expected layout (the 10 parts' ``images`` and ``labels`` folders merged)::

        root/
        ├── images/00001.png ... 24966.png
        └── labels/00001.png ... 24966.png   # paletted PNGs; palette indices = Cityscapes ids

    Archives: ``root`` may instead hold the 20 official archives, read without extracting::

        root/
        ├── 01_images.zip … 10_images.zip   # images/NNNNN.png
        └── 01_labels.zip … 10_labels.zip   # labels/NNNNN.png

    (member paths as tue-mps' VFM-UDA code reads them: ``images/`` in ``{NN}_images.zip``,
    ``labels/`` in ``{NN}_labels.zip``, NN = 01…10). Every ``*_images.zip`` and ``*_labels.zip``
    in ``root`` is read, images paired with labels by file name across archives, so a subset of
    the parts works. Part ``NN``'s labels missing (``NN_labels.zip`` absent or incomplete), an
    archive holding the other kind (``01_images.zip`` holding ``labels/``) or a truncated
    download raise :class:`ArchiveError` naming the file and the fix. Extracted ``images/`` or
    ``labels/`` folders win over the archives.

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

    ZIP_LAYOUT = (
        "root/\n"
        "├── 01_images.zip … 10_images.zip   (images/*.png)\n"
        "└── 01_labels.zip … 10_labels.zip   (labels/*.png, Cityscapes label ids)"
    )

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
        _check_root(self.root, type(self).__name__, self.LAYOUT, self.ZIP_LAYOUT)
        layouts = (self.LAYOUT, self.ZIP_LAYOUT)
        images = locate(
            self.root,
            "images",
            pattern="*_images.zip",
            layouts=layouts,
            misnamed=lambda archive: {"labels": _labels_archive(archive)},
            required_by=type(self).__name__,
        )
        masks = None
        if return_mask:
            masks = locate(
                self.root,
                "labels",
                pattern="*_labels.zip",
                layouts=layouts,
                misnamed=lambda archive: {"images": archive.name.replace("_labels", "_images")},
                required_by=f"{type(self).__name__} labels (return_mask=False needs none)",
            )
            self._check_archive_labels(
                images, masks, suffixes=("", ""), recursive=False, labels_archive=_labels_archive
            )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks) if return_mask else self.root / "labels",
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


def _labels_archive(images_archive: Path) -> str:
    """GTA5: ``07_images.zip`` -> ``07_labels.zip``."""
    return images_archive.name.replace("_images", "_labels")


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
