"""BDD100K semantic segmentation (Yu et al., CVPR 2020): 10,000 US driving frames (1280×720).

7,000 train, 1,000 val and 2,000 test frames, labelled directly in the 19 Cityscapes train ids
(void = 255), so no table is needed: the masks are read as they are and any other value is an
error. A target of the domain-generalisation benchmark (train on GTA5 [+ SYNTHIA], evaluate on
Cityscapes, BDD100K and Mapillary Vistas unchanged).
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
)
from lightning_uda.data.files import DatasetLayoutError, PathLike
from lightning_uda.data.folder import TransformLike
from lightning_uda.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from lightning_uda.normalization import NormalizationLike

__all__ = ["BDD100K"]

#: The official archives of the 10K images and of their semantic-segmentation labels.
IMAGES_ARCHIVE = "bdd100k_images_10k.zip"
LABELS_ARCHIVE = "bdd100k_sem_seg_labels_trainval.zip"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: (images folder, labels folder, label suffix) of the two releases, relative to the root.
_RELEASES = {
    "current": ("images/10k/{split}", "labels/sem_seg/masks/{split}", ""),
    "2018": ("seg/images/{split}", "seg/labels/{split}", "_train_id"),
}


class BDD100K(ArchiveAwareFolder):
    """BDD100K 10K semantic segmentation; masks already hold the 19 train ids and 255.

    Expected layout (``bdd100k_images_10k.zip`` and ``bdd100k_sem_seg_labels_trainval.zip``
    unpacked into ``root``; the older ``bdd100k_seg.zip`` layout is recognised too)::

        root/                                  root/   (bdd100k_seg.zip, 2018)
        ├── images/10k/{train,val,test}/*.jpg  └── seg/
        └── labels/sem_seg/masks/                  ├── images/{train,val,test}/*.jpg
            └── {train,val}/*.png                  └── labels/{train,val}/*_train_id.png

    An image ``<name>.jpg`` pairs with the mask ``<name>.png`` (``<name>_train_id.png`` in the
    2018 layout). Values other than 0..18 and 255 are an error (e.g. the colour PNGs of
    ``labels/sem_seg/colormaps``).

    Archives: ``root`` may instead hold the two official archives of the current release, read
    without extracting::

        root/
        ├── bdd100k_images_10k.zip                # bdd100k/images/10k/{train,val,test}/*.jpg
        └── bdd100k_sem_seg_labels_trainval.zip   # bdd100k/labels/sem_seg/masks/{train,val}/*.png

    Both hold a top-level ``bdd100k/`` folder (``unzip … -d data/`` gives ``data/bdd100k/``, as
    mmsegmentation's guide shows; tue-mps' VFM-UDA code reads ``bdd100k/images/10k/train`` and
    ``bdd100k/labels/sem_seg/masks/train`` from these two archives). The archives' ``images/`` or
    ``labels/`` may also lie at the top; an extracted ``images/`` or ``labels/`` folder wins over
    its archive. The two archives under each other's names, a labels archive without the split,
    or labels missing for some images raise an error naming the file. The 2018
    ``bdd100k_seg.zip`` release and the per-split ``10k_images_{train,val,test}.zip`` of the
    newer mirror are read extracted only.

    Args:
        root: dataset root (see the trees).
        split: ``"train"``, ``"val"`` or ``"test"`` (no labels).
        transform: see :class:`SegmentationFolder`.
        return_mask: ``False`` for images only (the test split).
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``.
    """

    LAYOUT = (
        "root/\n"
        "├── images/10k/{train,val,test}/*.jpg\n"
        "└── labels/sem_seg/masks/{train,val}/*.png   (train ids 0..18, 255)"
    )

    ZIP_LAYOUT = (
        "root/\n"
        f"├── {IMAGES_ARCHIVE}                (bdd100k/images/10k/{{train,val,test}}/*.jpg)\n"
        f"└── {LABELS_ARCHIVE}   (bdd100k/labels/sem_seg/masks/{{train,val}}/*.png)"
    )

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = "BDD100K masks hold train ids 0..18 (255 void), not colours"

    def __init__(
        self,
        root: PathLike,
        split: str = "val",
        transform: TransformLike = None,
        return_mask: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        self.split = split
        name = type(self).__name__
        _check_root(self.root, name, self.LAYOUT, self.ZIP_LAYOUT)
        if split == "test" and return_mask:
            raise ValueError(
                f"{name}: the test split of {self.root} has no labels; pass return_mask=False "
                "or evaluate on split='val'."
            )
        layouts = (self.LAYOUT, self.ZIP_LAYOUT)
        found = locate(
            self.root,
            "images",
            pattern=IMAGES_ARCHIVE,
            layouts=layouts,
            misnamed=lambda archive: {"labels": LABELS_ARCHIVE},
        )
        images: Source | None = None if found is None else child(found, f"10k/{split}")
        masks: Source | None = None
        suffix = ""
        if images is not None and exists(images):
            self.release = "current"
            if return_mask:
                labels = locate(
                    self.root,
                    "labels",
                    pattern=LABELS_ARCHIVE,
                    layouts=layouts,
                    misnamed=lambda archive: {"images": IMAGES_ARCHIVE},
                    required_by=f"{name} labels (return_mask=False needs none)",
                )
                masks = child(labels, f"sem_seg/masks/{split}")
                self._check_archive_labels(
                    images,
                    masks,
                    suffixes=("", ""),
                    recursive=False,
                    labels_archive=lambda archive: LABELS_ARCHIVE,
                    image_extensions=_IMAGE_EXTENSIONS,
                )
        else:
            images_2018, masks_2018, suffix = (p.format(split=split) for p in _RELEASES["2018"])
            if not (self.root / images_2018).is_dir():
                tried = [str(self.root / i.format(split=split)) for i, _, _ in _RELEASES.values()]
                raise DatasetLayoutError(
                    f"{name}: no {split!r} images under {self.root} (looked for "
                    f"{' and '.join(tried)}, and {split}/ in {IMAGES_ARCHIVE}). Put "
                    f"{IMAGES_ARCHIVE} and {LABELS_ARCHIVE} (or their extracted folders) there. "
                    f"Expected layout:\n{self.LAYOUT}\nor, not extracted:\n{self.ZIP_LAYOUT}"
                )
            self.release = "2018"
            images, masks = self.root / images_2018, self.root / masks_2018
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
            label_map=None,  # train ids already; anything else is an error
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            mask_suffix=suffix,
            image_extensions=_IMAGE_EXTENSIONS,
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
