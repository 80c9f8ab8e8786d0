"""The generic paired-folder dataset, :class:`SegmentationFolder`, that the benchmark datasets
build on: label tables, layout validation at construction, loading and normalising items."""

from __future__ import annotations

import colorsys
import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.class_file import load_class_file
from lightning_uda.data.files import (
    DatasetLayoutError,
    PathLike,
    UnknownLabelError,
    _read_index_mask,
    _show,
    read_image,
)
from lightning_uda.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, lookup_table
from lightning_uda.data.transforms import normalize_transform, preset
from lightning_uda.normalization import InputNormalization, NormalizationLike, get_normalization

__all__ = ["SegmentationFolder", "TransformLike"]

#: ``transform(image=H×W×3 uint8 RGB, mask=H×W uint8 train ids) -> {"image", "mask"}``, or the
#: name of a preset in :data:`lightning_uda.data.transforms.PRESETS`.
TransformLike = str | Callable[..., Mapping[str, Any]] | None

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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
        class_file: a YAML/JSON file with the class names, colours and raw-value mapping
            (:func:`~lightning_uda.data.class_file.load_class_file`, ``docs/custom_data.md``);
            it replaces ``classes``, ``palette`` and ``label_map``, which must then be unset.
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
        class_file: PathLike | None = None,
    ) -> None:
        if class_file is not None:
            given = [n for n, v in (("classes", classes), ("palette", palette)) if v is not None]
            if label_map is not None:
                given.append("label_map")
            if given:
                raise ValueError(
                    f"class_file {class_file} defines the classes, palette and label map; "
                    f"leave {', '.join(given)} unset (one source of truth)"
                )
            spec = load_class_file(class_file)
            classes, palette, label_map = spec.names, spec.palette, spec.label_map
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
        for key in getattr(self.transform, "extra_targets", ()):  # e.g. pseudo-label margins
            if key in out:
                item[key] = _mask_to_tensor(out[key])
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
