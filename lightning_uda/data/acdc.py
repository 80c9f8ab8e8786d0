"""ACDC, the Adverse Conditions Dataset with Correspondences (Sakaridis et al., ICCV 2021).

4,006 frames of Swiss roads in fog, night, rain and snow (1920×1080), 400 labelled training and
100 labelled validation frames per condition (106 val at night), the test labels withheld for the
benchmark server. Labels are Cityscapes label ids (``*_gt_labelIds.png``) in the 19 Cityscapes
evaluation classes, so they go through the same table as Cityscapes'.

Published Cityscapes → ACDC (test, 19 classes): MIC (HRDA) 70.4, Refign-HRDA 72.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_uda.data.archive_folder import (
    ArchiveAwareFolder,
    Source,
    _check_root,
    child,
    exists,
    locate,
    scan_source,
)
from lightning_uda.data.files import DatasetLayoutError, PathLike
from lightning_uda.data.folder import TransformLike
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_KNOWN_IDS,
    CITYSCAPES_PALETTE,
)
from lightning_uda.normalization import NormalizationLike

__all__ = ["ACDC", "ACDC_CONDITIONS", "conditions_argument"]

#: The official archives of the images (with the daytime references) and of the semantic labels.
IMAGES_ARCHIVE = "rgb_anon_trainvaltest.zip"
LABELS_ARCHIVE = "gt_trainval.zip"

#: The four adverse conditions, as ACDC names its folders.
ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")


def conditions_argument(
    conditions: str | Sequence[str], known: Sequence[str], owner: str, where: Path
) -> tuple[str, ...]:
    """``"all"``, one name or a list of names → the tuple of folders to read (checked).

    Raises:
        ValueError: an unknown or repeated name, naming the known ones and ``where``.
    """
    if isinstance(conditions, str):
        conditions = list(known) if conditions == "all" else [conditions]
    chosen = tuple(conditions)
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"{owner}: conditions {list(chosen)!r} for {where}: each must be one of "
            f"{list(known)} (once), or pass 'all'. Unknown: {unknown or 'none'}."
        )
    return chosen


class ACDC(ArchiveAwareFolder):
    """ACDC, one or several conditions, Cityscapes label ids mapped to the 19 train ids on load.

    Expected layout (``rgb_anon_trainvaltest.zip`` and ``gt_trainval.zip`` unpacked into one
    ``root``, as distributed)::

        root/
        ├── rgb_anon/
        │   └── {fog,night,rain,snow}/
        │       ├── train/{seq}/{seq}_frame_{n}_rgb_anon.png
        │       ├── val/...
        │       ├── test/...                              # no labels
        │       └── train_ref/, val_ref/, test_ref/       # daytime references (not read)
        └── gt/
            └── {fog,night,rain,snow}/
                ├── train/{seq}/{seq}_frame_{n}_gt_labelIds.png
                └── val/...

    Only ``*_gt_labelIds.png`` is read (``_gt_labelTrainIds``, ``_gt_labelColor`` and
    ``_gt_invGray`` are ignored). Frames are ordered by condition, then path.

    Archives: ``root`` may instead hold the two official archives, read without extracting::

        root/
        ├── rgb_anon_trainvaltest.zip   # rgb_anon/{condition}/{split}/{seq}/*_rgb_anon.png
        └── gt_trainval.zip             # gt/{condition}/{train,val}/{seq}/*_gt_labelIds.png

    Both hold their folder at the top (``unzip`` in the root gives the tree above, as the
    preparation scripts of MIC/HRDA and Refign assume: ``rgb_anon/*/train/*/*`` after unzipping
    both in one folder); ``rgb_anon_trainvaltest.zip`` also holds the ``*_ref`` folders (8,012
    images in all), ``gt_trainval.zip`` the 2,006 labelled frames in their four formats. An
    archive of the extracted tree inside one top-level folder is accepted too, and an extracted
    ``rgb_anon/`` or ``gt/`` wins over its archive. A missing condition or split, the two
    archives under each other's names, or labels missing from ``gt_trainval.zip`` raise an
    error naming the file and the fix. (tue-mps' VFM-UDA code reads ACDC from zips of its own
    repacking, ``acdc_rgb_anon_train.zip`` etc. with ``_gt_labelTrainIds``; those are not the
    official archives and are not recognised here: extract them, or zip the official tree.)

    Differs from MIC's code (mmseg ``ACDCDataset``): MIC moves every condition's frames into
    ``rgb_anon/{split}/`` and reads ``_gt_labelTrainIds.png``; here the official tree is read as
    unpacked, and the label ids go through the Cityscapes table (the same 19 classes).

    Args:
        root: dataset root (see the tree).
        split: ``"train"``, ``"val"`` or ``"test"`` (the test split has no labels: pass
            ``return_mask=False``, e.g. to write predictions for the server).
        conditions: ``"all"`` (default: the four, as the Cityscapes → ACDC benchmark trains and
            evaluates), one condition name or a list of them.
        transform: see :class:`SegmentationFolder`.
        return_mask: ``False`` for unlabelled target training (``gt/`` is then not needed).
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``.

    Raises:
        ValueError: an unknown condition name (the four are listed), or labels asked of the test
            split.
        DatasetLayoutError: a missing root, condition or split folder (the path and the tree are
            shown), or images without labels.
        ArchiveError: (a :class:`DatasetLayoutError`) an official archive that is truncated,
            holds another archive's folders, or lacks labels of some images (named).

    Example:
        >>> night_val = ACDC("data/acdc", split="val", conditions="night",
        ...                  transform=val_transform((540, 960)))  # doctest: +SKIP
    """

    LAYOUT = (
        "root/\n"
        "├── rgb_anon/{fog,night,rain,snow}/{train,val,test}/{seq}/*_rgb_anon.png\n"
        "└── gt/{fog,night,rain,snow}/{train,val}/{seq}/*_gt_labelIds.png"
    )

    ZIP_LAYOUT = (
        "root/\n"
        f"├── {IMAGES_ARCHIVE}   (rgb_anon/{{fog,night,rain,snow}}/{{train,val,test}}/{{seq}}/"
        "*_rgb_anon.png)\n"
        f"└── {LABELS_ARCHIVE}             (gt/{{fog,night,rain,snow}}/{{train,val}}/{{seq}}/"
        "*_gt_labelIds.png)"
    )

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = (
        "ACDC reads *_gt_labelIds.png (Cityscapes label ids 0..33); files holding train ids or "
        "colours, or re-encoded labels, map to void"
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        conditions: str | Sequence[str] = "all",
        transform: TransformLike = None,
        return_mask: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        self.split = split
        name = type(self).__name__
        self.conditions = conditions_argument(conditions, ACDC_CONDITIONS, name, self.root)
        _check_root(self.root, name, self.LAYOUT, self.ZIP_LAYOUT)
        if split == "test" and return_mask:
            raise ValueError(
                f"{name}: the test split of {self.root} has no labels (ACDC withholds them for its "
                "benchmark server); pass return_mask=False to load its images, e.g. to write "
                "predictions, and evaluate on split='val'."
            )
        layouts = (self.LAYOUT, self.ZIP_LAYOUT)
        images = locate(
            self.root,
            "rgb_anon",
            pattern=IMAGES_ARCHIVE,
            layouts=layouts,
            misnamed=lambda archive: {"gt": LABELS_ARCHIVE},
            required_by=name,
        )
        masks: Source | None = None
        if return_mask:
            masks = locate(
                self.root,
                "gt",
                pattern=LABELS_ARCHIVE,
                layouts=layouts,
                misnamed=lambda archive: {"rgb_anon": IMAGES_ARCHIVE},
                required_by=f"{name} labels (return_mask=False needs none)",
            )
        for source in (images, masks):
            for condition in self.conditions if source is not None else ():
                self._check_part(source, condition)
        if masks is not None:
            for condition in self.conditions:
                self._check_archive_labels(
                    child(child(images, condition), split),
                    child(child(masks, condition), split),
                    suffixes=("_rgb_anon", "_gt_labelIds"),
                    recursive=True,
                    labels_archive=lambda archive: LABELS_ARCHIVE,
                )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks) if masks is not None else self.root / "gt",
            label_map=CITYSCAPES_ID_TO_TRAIN_ID,
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            image_suffix="_rgb_anon",
            mask_suffix="_gt_labelIds",
            image_extensions=(".png",),
            recursive=True,
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = CITYSCAPES_KNOWN_IDS

    def _check_part(self, source: Source, condition: str) -> None:
        part = child(child(source, condition), self.split)
        if not exists(part):
            raise DatasetLayoutError(
                f"{type(self).__name__}: {part} does not exist (condition {condition!r}, split "
                f"{self.split!r}). Put {IMAGES_ARCHIVE} and {LABELS_ARCHIVE} (or their "
                f"extracted folders) in {self.root}, or choose the conditions you have "
                f"(conditions=[...]). Expected layout:\n{self.LAYOUT}\nor, not extracted:\n"
                f"{self.ZIP_LAYOUT}"
            )

    def _scan(  # type: ignore[override]
        self, folder: Path, suffix: str, extensions: tuple[str, ...], recursive: bool
    ) -> dict[str, Path]:
        # Only the chosen conditions' split folders (not train_ref/ or other splits); keys keep
        # the condition so that an image and its label pair as <cond>/<seq>/<frame>.
        found: dict[str, Path] = {}
        for condition in self.conditions:
            split_folder = child(child(self._source(folder), condition), self.split)
            part = scan_source(split_folder, suffix, extensions, recursive=True)
            found.update({f"{condition}/{key}": path for key, path in part.items()})
        return found

    def condition_of(self, index: int) -> str:
        """The condition (``"fog"``, …) of item ``index``."""
        image, _ = self.samples[index]
        return image.relative_to(self.images_dir).parts[0]
