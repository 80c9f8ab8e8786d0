"""Segmentation datasets: a generic paired folder, Cityscapes, GTA5 and SYNTHIA.

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

import colorsys
import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_KNOWN_IDS,
    CITYSCAPES_PALETTE,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    SYNTHIA_KNOWN_IDS,
    lookup_table,
)
from lightning_uda.data.transforms import normalize_transform, preset
from lightning_uda.normalization import InputNormalization, NormalizationLike, get_normalization

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

PathLike = str | os.PathLike
#: ``transform(image=H×W×3 uint8 RGB, mask=H×W uint8 train ids) -> {"image", "mask"}``, or the
#: name of a preset in :data:`lightning_uda.data.transforms.PRESETS`.
TransformLike = str | Callable[..., Mapping[str, Any]] | None

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SHOW_MAX = 5  # how many offending files an error message names


class DatasetLayoutError(ValueError):
    """The files on disk do not have the layout a dataset expects (the message shows it)."""


class CorruptImageError(DatasetLayoutError):
    """An image or label file is truncated or damaged (it would decode partly, with a warning)."""


class AllIgnoreLabelError(ValueError):
    """Source labels that load with every pixel void: almost always a conversion problem."""


#: PNG files end with this IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_complete(path: PathLike) -> None:
    """Raise :class:`CorruptImageError` if a PNG or JPEG file ``path`` is cut short.

    OpenCV and libjpeg decode a truncated JPEG into a partly grey image with only a message on
    stderr, and a PNG cut in its last chunk can load too; a damaged training image then trains
    silently. A complete PNG ends with its ``IEND`` chunk and a complete JPEG with the ``FF D9``
    end-of-image marker (trailing zero padding allowed), so reading the file's last bytes is
    enough: the check costs one small read per image (a few µs), not a second decode. Other
    formats pass unchecked.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        return
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError as error:
        raise CorruptImageError(f"Cannot read {path}: {error}") from error
    if suffix == ".png":
        complete = tail.endswith(_PNG_END)
        what = "its IEND chunk"
    else:
        complete = b"\xff\xd9" in tail  # FF D9 only occurs as the marker (FF is stuffed)
        what = "the JPEG end-of-image marker (FF D9)"
    if not complete:
        raise CorruptImageError(
            f"{path} is truncated or damaged: it does not end with {what} ({size} bytes). It "
            "would decode partly (grey or garbage pixels); copy or extract the file again."
        )


class UnknownLabelError(ValueError):
    """A label image holds a value outside the dataset's id table (corrupt or foreign file)."""


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``H × W × 3`` uint8 **RGB** (OpenCV reads BGR; converted here)."""
    check_complete(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f"Cannot read image {path} (missing, empty or not an image).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_index_mask(path: Path) -> np.ndarray:
    # Pillow, not OpenCV: OpenCV expands paletted PNGs (GTA5's labels) to colours, Pillow keeps
    # the palette indices, which are the ids.
    check_complete(path)
    try:
        with Image.open(path) as image:
            mask = np.array(image)
    except (OSError, ValueError) as error:
        raise DatasetLayoutError(f"Cannot read label image {path}: {error}") from error
    if mask.ndim != 2:
        raise DatasetLayoutError(
            f"Label image {path} has shape {mask.shape}: expected a single-channel (or "
            "paletted) PNG of class ids, not colours."
        )
    return mask


def _default_palette(num_classes: int) -> np.ndarray:
    # Evenly spread hues (golden-ratio steps), so any class count gets distinct, stable colours.
    colors = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95) for i in range(num_classes)
    ]
    return (np.array(colors, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def _resolve_transform(
    transform: TransformLike, normalization: NormalizationLike | None
) -> tuple[Callable[..., Mapping[str, Any]], InputNormalization]:
    """(the transform to call, the input space of its output images)."""
    if transform is None:
        space = get_normalization(normalization)
        return normalize_transform(space), space
    if isinstance(transform, str):
        space = get_normalization(normalization)
        return preset(transform, normalization=space), space
    if not callable(transform):
        raise TypeError(f"transform must be callable, a preset name or None, got {transform!r}")
    # Pipelines of lightning_uda.data.transforms record their space; others are taken at their
    # word (`normalization`, default ImageNet).
    declared = getattr(transform, "normalization", None)
    if not isinstance(declared, InputNormalization):  # e.g. A.Normalize's own `normalization`
        declared = None
    if normalization is None:
        return transform, declared or get_normalization(None)
    space = get_normalization(normalization)
    if declared is not None and declared != space:
        raise ValueError(
            f"The transform normalises images into the {declared.name!r} input space "
            f"({declared}) but normalization={space.name!r} was passed; build the transform with "
            f"normalization={space.name!r} (e.g. preset(name, normalization={space.name!r})) or "
            "leave the dataset's normalization unset to take the transform's."
        )
    return transform, space


def _image_to_tensor(image: Any, normalization: InputNormalization) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.float()
    image = np.asarray(image)
    if image.dtype == np.uint8:  # transform did not normalise: do it here
        image = normalization.normalize_uint8(image)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def _mask_to_tensor(mask: Any) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.ascontiguousarray(mask)).long()


def _show(items: Sequence[object]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW_MAX])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW_MAX else "")


class SegmentationFolder(Dataset):
    """Images and label masks in two folders, paired by file name.

    For your own data. An image ``images/<key><image_suffix>.<ext>`` is paired with the mask
    ``masks/<key><mask_suffix><mask_extension>``, where ``<key>`` is the file's path relative to
    the folder without extension and suffix (with ``recursive=True`` it includes sub-folders)::

        images/                      masks/
        ├── a_rgb.jpg                ├── a_label.png
        └── b_rgb.jpg                └── b_label.png
        # SegmentationFolder("images", "masks", image_suffix="_rgb", mask_suffix="_label")

    Mask files are single-channel (or paletted) PNGs of class values. Masks without an image are
    ignored (so converted files lying beside the originals do no harm); images without a mask are
    an error unless ``return_mask=False``.

    Args:
        images: folder of images (read as RGB).
        masks: folder of masks; may be ``None`` if ``return_mask=False``.
        label_map: how raw mask values become train ids: ``None`` (masks already hold train ids
            ``0..C-1`` and 255), a dict ``{raw: train id}`` (raw values not in it are errors;
            map a void value to 255 explicitly, e.g. ``{0: 255}``), or a 256-entry array (a lookup
            table; every value accepted).
        transform: ``transform(image=H×W×3 uint8, mask=H×W uint8) -> {"image", "mask"}``
            (albumentations style, see :mod:`lightning_uda.data.transforms`), or a preset name
            (built with ``normalization``). ``None``: only normalisation. A transform that leaves
            the image uint8 is normalised afterwards (into ``normalization``).
        classes: class names, indexed by train id (default: the 19 Cityscapes classes).
        palette: ``C × 3`` RGB colours (default: Cityscapes' for its classes, else generated).
        class_subsets: metric name → train ids evaluated (default ``{"mIoU": all}``).
        image_suffix: suffix (before the extension) every image name ends with, stripped for
            pairing; images without it are skipped.
        mask_suffix: the same for masks.
        image_extensions: accepted image extensions (lower-case, with the dot).
        mask_extension: the masks' extension.
        recursive: search sub-folders too.
        return_mask: load masks (``False`` for unlabelled target images: items have no "mask").
        return_meta: items also carry ``"path"`` (str, the image file) and ``"orig_size"``
            (long tensor ``(H, W)``, the size on disk), e.g. for prediction.
        check_labels: check every loaded mask against the table (an error names the file and
            the unknown values); ``False`` maps unknown values to 255 silently.
        resize_mismatched_masks: if a mask's size differs from its image's, resize it (nearest)
            instead of raising an error.
        normalization: the input space of the images (``"imagenet"``, ``"caffe"`` or an
            :class:`~lightning_uda.normalization.InputNormalization`), used when ``transform``
            is ``None`` or a preset name; stored as ``self.normalization``. ``None`` (default):
            the space a pipeline of :mod:`lightning_uda.data.transforms` records
            (``transform.normalization``), else ``"imagenet"``. A transform recording another
            space than the one passed is an error.

    Raises:
        ValueError: ``normalization`` disagrees with the space ``transform`` records, or an
            unknown normalisation name (and the checks of classes, palette, label map).
        DatasetLayoutError: see the module docstring.

    Shape:
        - image: ``3 × H × W`` float32 in the input space (``h × w`` after the transform).
        - mask: ``H × W`` int64 train ids, 255 = ignore (at the size the transform returns).

    Example:
        >>> ds = SegmentationFolder("data/img", "data/ann", label_map={0: 255, 1: 0, 2: 1},
        ...                         classes=["road", "car"])  # doctest: +SKIP
        >>> item = ds[0]; item["image"].shape, item["mask"].dtype  # doctest: +SKIP
        (torch.Size([3, 480, 640]), torch.int64)
    """

    #: Shown in layout errors (subclasses describe their dataset's tree).
    LAYOUT = "images/<key><image_suffix>.png|jpg  and  masks/<key><mask_suffix>.png"

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = "the label files or label_map do not match (values outside it map to void)"

    def __init__(
        self,
        images: PathLike,
        masks: PathLike | None = None,
        label_map: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
        transform: TransformLike = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | np.ndarray | None = None,
        class_subsets: Mapping[str, Sequence[int]] | None = None,
        image_suffix: str = "",
        mask_suffix: str = "",
        image_extensions: Sequence[str] = _IMAGE_EXTENSIONS,
        mask_extension: str = ".png",
        recursive: bool = False,
        return_mask: bool = True,
        return_meta: bool = False,
        check_labels: bool = True,
        resize_mismatched_masks: bool = False,
        normalization: NormalizationLike | None = None,
    ) -> None:
        self.classes: list[str] = list(CITYSCAPES_CLASSES if classes is None else classes)
        if not self.classes:
            raise ValueError("classes must name at least one class")
        num_classes = len(self.classes)
        if palette is None:
            default = self.classes == CITYSCAPES_CLASSES
            palette = CITYSCAPES_PALETTE if default else _default_palette(num_classes)
        self.palette: np.ndarray = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(self.palette) != num_classes:
            raise ValueError(f"palette has {len(self.palette)} colours for {num_classes} classes")
        subsets = {"mIoU": list(range(num_classes))} if class_subsets is None else class_subsets
        self.class_subsets: dict[str, list[int]] = {k: list(v) for k, v in subsets.items()}
        for name, ids in self.class_subsets.items():
            if not ids or min(ids) < 0 or max(ids) >= num_classes:
                raise ValueError(f"class_subsets[{name!r}] = {ids} is not a set of train ids")
        self.ignore_index: int = IGNORE_INDEX
        self.transform, self.normalization = _resolve_transform(transform, normalization)
        self.return_mask = return_mask
        self.return_meta = return_meta
        self.check_labels = check_labels
        self.resize_mismatched_masks = resize_mismatched_masks
        self.lut, self.known_values = self._tables(label_map, num_classes)

        self.images_dir = Path(images)
        self.masks_dir = None if masks is None else Path(masks)
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix
        self._check_dirs()
        image_files = self._scan(
            self.images_dir, image_suffix, tuple(e.lower() for e in image_extensions), recursive
        )
        if not image_files:
            pattern = self._pattern(self.images_dir, image_suffix, image_extensions, recursive)
            raise DatasetLayoutError(
                f"No images found: {pattern} matched nothing. Expected layout:\n{self.LAYOUT}"
            )
        keys = sorted(image_files)
        self.samples: list[tuple[Path, Path | None]]
        if return_mask:
            if self.masks_dir is None:
                raise ValueError("masks=None needs return_mask=False (unlabelled images)")
            mask_files = self._scan(self.masks_dir, mask_suffix, (mask_extension.lower(),), True)
            missing = [image_files[k] for k in keys if k not in mask_files]
            if missing:
                raise DatasetLayoutError(
                    f"{len(missing)} of {len(keys)} images have no label in {self.masks_dir} "
                    f"(looked for <key>{mask_suffix}{mask_extension}): {_show(missing)}. "
                    f"Expected layout:\n{self.LAYOUT}"
                )
            self.samples = [(image_files[k], mask_files[k]) for k in keys]
        else:
            self.samples = [(image_files[k], None) for k in keys]

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _tables(
        label_map: Mapping[int, int] | Sequence[int] | np.ndarray | None, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(256-entry uint8 lookup table, 256-entry bool table of accepted raw values)."""
        if label_map is None:
            lut = lookup_table({i: i for i in range(min(num_classes, 255))})
            known = np.zeros(256, dtype=bool)
            known[: min(num_classes, 255)] = True
            known[IGNORE_INDEX] = True
        elif isinstance(label_map, Mapping):
            lut = lookup_table({int(k): int(v) for k, v in label_map.items()})
            known = np.zeros(256, dtype=bool)
            known[[int(k) % 256 for k in label_map]] = True
        else:
            lut = np.asarray(label_map)
            if lut.shape != (256,):
                raise ValueError(f"label_map array must have 256 entries, got shape {lut.shape}")
            lut = lut.astype(np.uint8)
            known = np.ones(256, dtype=bool)
        bad = sorted({int(v) for v in np.unique(lut[known])} - {*range(num_classes), IGNORE_INDEX})
        if bad:
            raise ValueError(f"label_map produces {bad}, not train ids < {num_classes} or 255")
        return lut, known

    def _check_dirs(self) -> None:
        folders = [self.images_dir] + ([self.masks_dir] if self.return_mask else [])
        for folder in folders:
            if folder is not None and not folder.is_dir():
                raise DatasetLayoutError(
                    f"{type(self).__name__}: folder {folder} does not exist. "
                    f"Expected layout:\n{self.LAYOUT}"
                )

    @staticmethod
    def _scan(folder: Path, suffix: str, extensions: tuple[str, ...], recursive: bool) -> dict:
        files = folder.rglob("*") if recursive else folder.iterdir()
        found: dict[str, Path] = {}
        for path in files:
            if path.suffix.lower() not in extensions or not path.is_file():
                continue
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if suffix:
                if not stem.endswith(suffix):
                    continue
                stem = stem[: -len(suffix)]
            found[stem] = path
        return found

    @staticmethod
    def _pattern(folder: Path, suffix: str, extensions: Sequence[str], recursive: bool) -> str:
        return f"{folder}/{'**/' if recursive else ''}*{suffix}{{{','.join(extensions)}}}"

    # ------------------------------------------------------------------ loading
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        """Number of train classes ``C``."""
        return len(self.classes)

    def read_mask(self, path: Path) -> np.ndarray:
        """Read raw mask values, ``H × W`` (uint8, or uint16 for 16-bit files)."""
        return _read_index_mask(path)

    def load_mask(self, path: Path) -> np.ndarray:
        """Read a mask and map it to train ids: ``H × W`` uint8 (255 = ignore).

        Raises:
            UnknownLabelError: a value outside the table (if ``check_labels``), naming the file.
        """
        raw = self.read_mask(path)
        if raw.dtype != np.uint8:
            too_big = raw > 255
            if too_big.any():
                if self.check_labels:
                    raise UnknownLabelError(
                        f"Label file {path} holds unknown label value(s) "
                        f"{_show(np.unique(raw[too_big]).tolist())} (raw ids must be < 256 for "
                        f"{type(self).__name__})."
                    )
                raw = np.where(too_big, IGNORE_INDEX, raw)
            raw = raw.astype(np.uint8)
        if self.check_labels:
            unknown = ~self.known_values[raw]
            if unknown.any():
                values = np.unique(raw[unknown]).tolist()
                raise UnknownLabelError(
                    f"Label file {path} holds unknown label value(s) {_show(values)} for "
                    f"{type(self).__name__} (accepted: {self._known_description()}). Is it the "
                    "right kind of label file? Pass check_labels=False to map unknown values to "
                    "255 instead."
                )
        return self.lut[raw]

    def _known_description(self) -> str:
        # Compact ranges, e.g. "0-33, 255".
        values = np.flatnonzero(self.known_values).tolist()
        ranges: list[str] = []
        start = prev = values[0]
        for v in [*values[1:], None]:
            if v is not None and v == prev + 1:
                prev = v
                continue
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            if v is not None:
                start = prev = v
        return ", ".join(ranges)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``: ``{"image": 3×H×W float, "mask": H×W long[, "path", "orig_size"]}``."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        orig_size = image.shape[:2]
        if self.return_mask:
            assert mask_path is not None
            mask = self.load_mask(mask_path)
            if mask.shape != image.shape[:2]:
                if not self.resize_mismatched_masks:
                    raise DatasetLayoutError(
                        f"Label {mask_path} is {mask.shape[1]}×{mask.shape[0]} but its image "
                        f"{image_path} is {image.shape[1]}×{image.shape[0]} (width×height); "
                        "pass resize_mismatched_masks=True to resize such labels (nearest)."
                    )
                mask = cv2.resize(
                    mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST
                )
            out = self.transform(image=image, mask=mask)
            item = {
                "image": _image_to_tensor(out["image"], self.normalization),
                "mask": _mask_to_tensor(out["mask"]),
            }
        else:
            out = self.transform(image=image)
            item = {"image": _image_to_tensor(out["image"], self.normalization)}
        if self.return_meta:
            item["path"] = str(image_path)
            item["orig_size"] = torch.tensor(orig_size, dtype=torch.long)
        return item

    def with_meta(self) -> SegmentationFolder:
        """A shallow copy whose items also carry ``"path"`` and ``"orig_size"``."""
        clone = copy.copy(self)
        clone.return_meta = True
        return clone

    def __repr__(self) -> str:
        labels = "with masks" if self.return_mask else "images only"
        return (
            f"{type(self).__name__}({len(self)} samples, {labels}, {self.num_classes} classes, "
            f"{self.normalization.name})"
        )


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
