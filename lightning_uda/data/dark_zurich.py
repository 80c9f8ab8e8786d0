"""Dark Zurich (Sakaridis et al., ICCV 2019): night driving in Zurich, with day references.

Training: 2,416 night, 2,920 twilight and 3,041 day frames, unlabelled (1920×1080); validation:
50 labelled night frames; test: 151 night frames whose labels are withheld for the benchmark
server. Labels are Cityscapes label ids (``*_gt_labelIds.png``), the 19 evaluation classes.

The day frames are the *reference images* of the night ones (the same places by GPS): methods
such as Refign align each night frame with its day reference. :class:`DarkZurich` reads the night
(and, if asked, twilight/day) folders, and with ``with_reference=True`` pairs every night frame
with its day reference from a list of pairs.

Published Cityscapes → Dark Zurich (test, 19 classes): MIC (HRDA) 60.2, VFM-UDA++ 68.7.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_uda.data.acdc import conditions_argument
from lightning_uda.data.archive_folder import (
    ArchiveAwareFolder,
    Source,
    _check_root,
    child,
    exists,
    locate,
    scan_source,
)
from lightning_uda.data.files import DatasetLayoutError, PathLike, _show, read_image
from lightning_uda.data.folder import TransformLike, _image_to_tensor, _resolve_transform
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_KNOWN_IDS,
    CITYSCAPES_PALETTE,
)
from lightning_uda.normalization import NormalizationLike

__all__ = ["DARK_ZURICH_TIMES", "DarkZurich"]

#: Times of day of the training folders.
DARK_ZURICH_TIMES: tuple[str, ...] = ("day", "night", "twilight")
#: The archive folder each split comes in, if not merged into one root.
_ARCHIVES = {
    "train": "Dark_Zurich_train_anon",
    "val": "Dark_Zurich_val_anon",
    "test": "Dark_Zurich_test_anon",
}
#: The official archive of each split (the val archive holds the labels too).
_ZIPS = {
    "train": "Dark_Zurich_train_anon.zip",
    "val": "Dark_Zurich_val_anon.zip",
    "test": "Dark_Zurich_test_anon_withoutGt.zip",
}
_SUFFIX = "_rgb_anon"


class DarkZurich(ArchiveAwareFolder):
    """Dark Zurich, Cityscapes label ids mapped to the 19 train ids on load.

    Expected layout: the archives ``Dark_Zurich_train_anon.zip``, ``Dark_Zurich_val_anon.zip``
    (and ``Dark_Zurich_test_anon_withoutGt.zip``) unpacked into ``root``, either merged (as
    MIC's and mmseg's configs expect, ``data/dark_zurich/``) or each in its own folder
    (``root/Dark_Zurich_train_anon/rgb_anon/...``)::

        root/
        ├── rgb_anon/
        │   ├── train/{day,night,twilight}/{seq}/{seq}_frame_{n}_rgb_anon.png
        │   ├── val/night/GOPR0356/GOPR0356_{n}_rgb_anon.png
        │   └── test/night/{seq}/..._rgb_anon.png           # no labels
        └── gt/
            └── val/night/GOPR0356/GOPR0356_{n}_gt_labelIds.png

    Only ``*_gt_labelIds.png`` is read (``_gt_labelTrainIds``, ``_gt_labelColor`` and
    ``_gt_invGray`` are ignored).

    **Archives.** ``root`` may instead hold the official archives, read without extracting::

        root/
        ├── Dark_Zurich_train_anon.zip            # rgb_anon/train/{day,night,twilight}/...
        ├── Dark_Zurich_val_anon.zip              # rgb_anon/val/night/..., gt/val/night/...
        └── Dark_Zurich_test_anon_withoutGt.zip   # rgb_anon/test/night/...

    Each holds its split's folders at the top: ``unzip`` of all three in one folder gives the
    merged tree above (tue-mps' VFM-UDA code reads ``rgb_anon/train`` from
    ``Dark_Zurich_train_anon.zip`` and ``rgb_anon/val/night``, ``gt/val/night`` from
    ``Dark_Zurich_val_anon.zip``; the test archive's name is the one on the download page, its
    members are assumed to follow the same pattern). Only the split asked for needs its archive,
    an archive of the extracted tree inside one top-level folder is accepted, and an extracted
    ``rgb_anon/<split>`` (or ``gt/val``) folder wins over the archive. An archive under another
    split's name, labels missing from ``Dark_Zurich_val_anon.zip`` or a missing time of day
    raise an error naming the file. Reference images (below) are read from the train archive
    as well; the pair list is a file on disk.

    **Reference images.** ``with_reference=True`` (train split, night frames) adds to each item
    ``"reference"``: the day frame of the same place, from ``reference_pairs``, a text file
    with one ``night,day`` pair per line, each a frame path under ``rgb_anon/`` (with or without
    the leading ``train/`` and the ``_rgb_anon.png`` ending), e.g. DANNet's
    ``zurich_dn_pair_train.csv``: ``night/GOPR0351/GOPR0351_frame_000159,day/GOPR0350/...``.
    The reference goes through ``reference_transform`` (default: the dataset's ``transform``)
    on its own: a random crop is *not* shared with the night frame (Refign aligns the two itself).

    Differs from MIC's code (mmseg ``DarkZurichDataset``): labels are read as label ids through
    the Cityscapes table, not as ``_gt_labelTrainIds.png`` (the same 19 classes).

    Args:
        root: dataset root (see the tree).
        split: ``"train"`` (unlabelled), ``"val"`` (labelled) or ``"test"`` (no labels).
        times: times of day to read: ``"night"`` (default; the target of Cityscapes → Dark
            Zurich), a list of ``"day"``, ``"night"``, ``"twilight"``, or ``"all"``. Val and
            test are night only.
        transform: see :class:`SegmentationFolder`.
        return_mask: labels (``None``: for ``"val"`` only, the split that has them).
        with_reference: pair night frames with their day reference (see above).
        reference_pairs: the list of pairs (default ``root/zurich_dn_pair_train.csv``).
        reference_transform: transform of the reference images (default: ``transform``).
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``.

    Raises:
        ValueError: an unknown time of day, labels asked of an unlabelled split, references
            asked for another split or time than night.
        DatasetLayoutError: a missing root or folder, or a reference variant without its day
            images or pair list (the path and the fix are named).
        ArchiveError: (a :class:`DatasetLayoutError`) an official archive that is truncated,
            holds another archive's folders, or lacks labels of some images (named).
    """

    LAYOUT = (
        "root/\n"
        "├── rgb_anon/{train/{day,night,twilight},val/night,test/night}/{seq}/*_rgb_anon.png\n"
        "└── gt/val/night/{seq}/*_gt_labelIds.png"
    )

    ZIP_LAYOUT = (
        "root/\n"
        "├── Dark_Zurich_train_anon.zip            (rgb_anon/train/{day,night,twilight}/{seq}/"
        "*_rgb_anon.png)\n"
        "├── Dark_Zurich_val_anon.zip              (rgb_anon/val/night/{seq}/*_rgb_anon.png, "
        "gt/val/night/{seq}/*_gt_labelIds.png)\n"
        "└── Dark_Zurich_test_anon_withoutGt.zip   (rgb_anon/test/night/{seq}/*_rgb_anon.png)"
    )

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = (
        "Dark Zurich reads *_gt_labelIds.png (Cityscapes label ids 0..33); files holding train "
        "ids or colours map to void"
    )

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        times: str | Sequence[str] = "night",
        transform: TransformLike = None,
        return_mask: bool | None = None,
        with_reference: bool = False,
        reference_pairs: PathLike | None = None,
        reference_transform: TransformLike = None,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        self.root = Path(root)
        self.split = split
        _check_root(self.root, name, self.LAYOUT, self.ZIP_LAYOUT)
        if split not in _ARCHIVES:
            raise ValueError(f"{name}: split must be one of {list(_ARCHIVES)}, got {split!r}")
        self.times = conditions_argument(times, DARK_ZURICH_TIMES, name, self.root)
        if split != "train" and self.times != ("night",):
            raise ValueError(
                f"{name}: the {split} split is night only; pass times='night' (got {self.times})"
            )
        return_mask = split == "val" if return_mask is None else return_mask
        if return_mask and split != "val":
            raise ValueError(
                f"{name}: the {split} split of {self.root} has no labels (only val is labelled; "
                "test labels are withheld for the benchmark server); pass return_mask=False."
            )
        self.base = self._split_root(split)
        layouts = (self.LAYOUT, self.ZIP_LAYOUT)
        others = {f"rgb_anon/{other}": _ZIPS[other] for other in _ZIPS if other != split}
        images = locate(
            self.base,
            f"rgb_anon/{split}",
            pattern=_ZIPS[split],
            layouts=layouts,
            misnamed=lambda archive: others,
            required_by=name,
        )
        for time in self.times:
            if not exists(child(images, time)):
                raise DatasetLayoutError(
                    f"{name}: {child(images, time)} does not exist (split {split!r}, time "
                    f"{time!r}). Put {_ZIPS[split]} (or its extracted folders) in {self.root} or "
                    f"choose the times you have. Expected layout:\n{self.LAYOUT}\nor, not "
                    f"extracted:\n{self.ZIP_LAYOUT}"
                )
        masks: Source = self.base / "gt" / split
        if return_mask:
            masks = locate(
                self.base,
                "gt/val",
                pattern=_ZIPS["val"],
                layouts=layouts,
                misnamed=lambda archive: others,
                required_by=f"{name} labels (return_mask=False needs none)",
            )
            self._check_archive_labels(
                child(images, "night"),
                child(masks, "night"),
                suffixes=(_SUFFIX, "_gt_labelIds"),
                recursive=True,
                labels_archive=lambda archive: _ZIPS["val"],
            )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
            label_map=CITYSCAPES_ID_TO_TRAIN_ID,
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            image_suffix=_SUFFIX,
            mask_suffix="_gt_labelIds",
            image_extensions=(".png",),
            recursive=True,
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = CITYSCAPES_KNOWN_IDS
        self.with_reference = with_reference
        self.references: list[Path] = []
        if with_reference:
            self.references = self._pair_references(reference_pairs)
            self.reference_transform = self.transform
            if reference_transform is not None:
                self.reference_transform, _ = _resolve_transform(
                    reference_transform, self.normalization
                )

    def _split_root(self, split: str) -> Path:
        """``root``, or ``root/Dark_Zurich_<split>_anon`` when the archives were extracted each
        into its own folder (the official archives are looked for in ``root``)."""
        merged = self.root / "rgb_anon" / split
        separate = self.root / _ARCHIVES[split]
        if not merged.is_dir() and (separate / "rgb_anon" / split).is_dir():
            return separate
        return self.root

    def _scan(  # type: ignore[override]
        self, folder: Path, suffix: str, extensions: tuple[str, ...], recursive: bool
    ) -> dict[str, Path]:
        # folder: rgb_anon/<split> or gt/val (on disk or in an archive); keys keep the time
        found: dict[str, Path] = {}
        for time in self.times:
            part = scan_source(child(self._source(folder), time), suffix, extensions, True)
            found.update({f"{time}/{key}": path for key, path in part.items()})
        return found

    # ------------------------------------------------------------------ references
    def _pair_references(self, pairs_file: PathLike | None) -> list[Path]:
        name = type(self).__name__
        if self.split != "train" or self.times != ("night",):
            raise ValueError(
                f"{name}: with_reference pairs train night frames with their day references; "
                f"use split='train', times='night' (got {self.split!r}, {self.times})"
            )
        day = child(self._source(self.images_dir), "day")
        if not exists(day):
            raise DatasetLayoutError(
                f"{name}: with_reference=True but the reference (day) images are missing: {day} "
                f"does not exist. Unpack the day folder of {_ARCHIVES['train']}.zip there, or pass "
                "with_reference=False."
            )
        pairs_path = Path(pairs_file) if pairs_file else self.root / "zurich_dn_pair_train.csv"
        if not pairs_path.is_file():
            raise DatasetLayoutError(
                f"{name}: with_reference=True needs the list of night/day pairs: {pairs_path} "
                "does not exist. Pass reference_pairs=FILE (one 'night,day' pair of frame paths "
                "under rgb_anon/ per line, e.g. zurich_dn_pair_train.csv)."
            )
        rgb = self.images_dir  # rgb_anon/train, on disk or in the archive
        by_night: dict[str, Path] = {}
        for number, line in enumerate(pairs_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2:
                raise DatasetLayoutError(
                    f"{pairs_path}:{number}: expected 'night,day', got {line!r}"
                )
            night, ref = (_frame_key(p) for p in parts)
            by_night[night] = rgb / f"{ref}{_SUFFIX}.png"
        keys = [
            image.relative_to(rgb).with_suffix("").as_posix().removesuffix(_SUFFIX)
            for image, _ in self.samples
        ]
        unpaired = [k for k in keys if k not in by_night]
        existing = {str(p) for p in scan_source(day, "", (".png",), True).values()}
        absent = sorted({str(by_night[k]) for k in keys if k in by_night} - existing)
        if unpaired or absent:
            raise DatasetLayoutError(
                f"{name}: {len(unpaired)} night frames have no pair in {pairs_path} "
                f"({_show(unpaired) or 'none'}) and {len(absent)} listed reference images do not "
                f"exist ({_show(absent) or 'none'}). Use the pair list of this copy of the dataset "
                "and unpack all of its day images."
            )
        return [by_night[k] for k in keys]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        if self.with_reference:
            out = self.reference_transform(image=read_image(self.references[index]))
            item["reference"] = _image_to_tensor(out["image"], self.normalization)
        return item


def _frame_key(path: str) -> str:
    """``train/night/GOPR0351/GOPR0351_frame_000159_rgb_anon.png`` → ``night/GOPR0351/...159``."""
    key = path.removesuffix(".png").removesuffix(_SUFFIX)
    return key.removeprefix("train/")
