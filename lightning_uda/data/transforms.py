"""Albumentations pipelines for training and evaluation (the DACS recipe as presets).

Conventions:

- **Sizes are ``(height, width)`` everywhere** (like torch and albumentations). The papers write
  sizes as width × height: "GTA5 resized to 1280×720" is ``resize=(720, 1280)`` here.
- A pipeline is called as ``transform(image=rgb, mask=train_ids)`` with ``rgb``: ``H × W × 3``
  uint8 RGB and ``train_ids``: ``H × W`` uint8 (already mapped to train ids, 255 = ignore); the
  mask may be omitted. It returns ``{"image": float 3 × h × w tensor in the input space,
  "mask": uint8 tensor}``; the datasets turn the mask into ``long``.
- **One input space.** The last steps normalise the image into the run's input space
  (:mod:`lightning_uda.normalization`): ``normalization="imagenet"`` (default; RGB, [0, 1], ImageNet
  mean/std) or ``"caffe"`` (**BGR**, [0, 255], minus the Caffe mean pixel, the space of the Caffe
  DeepLab-v2 weights), or an :class:`~lightning_uda.normalization.InputNormalization`. Every
  pipeline built here records its space as ``transform.normalization``, which the datasets read.
- Masks are resized with nearest-neighbour interpolation and padded with 255 (ignore), so train
  ids are never blended and padding never counts as a class. Images are padded with black (0)
  before normalisation.

**Evaluation protocols** (:data:`EVALUATION_PROTOCOLS`, the ``protocol`` of :func:`val_transform`).
Both feed the network the image resized to 1024×512 (``resize=(512, 1024)``); they differ in the
labels the score is computed against:

- ``"full"`` (default): the label keeps its original resolution (2048×1024 for Cityscapes) and
  the module upsamples its logits to it. This is how AdvEnt (``eval_UDA.py``: logits upsampled to
  ``OUTPUT_SIZE_TARGET = (2048, 1024)``), DAFormer and MIC (mmseg: logits resized to the original
  shape) evaluate, and what the official Cityscapes evaluation and benchmark server measure.
- ``"dacs"``: the label is nearest-resized with the image to 1024×512 and the logits are scored
  at that size, as DACS' ``evaluateUDA.py`` does (its Cityscapes loader resizes the label). Use it
  to reproduce DACS' numbers; it is not comparable with ``"full"`` (thin structures and object
  boundaries are scored on a coarser grid).

Presets (:func:`preset`), from DACS (Tranheden et al., WACV 2021, and its code): source and target
images are resized, then a random 512 × 512 crop is taken; no flip (DACS' loaders have it
commented out); evaluation at 512 × 1024, by default with the ``"full"`` protocol.

=============================  =============  ===========  ====  ========
name                           resize (h, w)  crop (h, w)  flip  protocol
=============================  =============  ===========  ====  ========
``gta5_train``                 (720, 1280)    (512, 512)   no    --
``cityscapes_train``           (512, 1024)    (512, 512)   no    --
``synthia_train``              (760, 1280)    (512, 512)   no    --
``gta5_train_daformer``        (720, 1280)    (512, 512)*  yes   --
``synthia_train_daformer``     (760, 1280)    (512, 512)*  yes   --
``cityscapes_train_daformer``  (512, 1024)    (512, 512)   yes   --
``cityscapes_val``             (512, 1024)    --           no    ``full``
``cityscapes_val_dacs``        (512, 1024)    --           no    ``dacs``
``normalize``                  --             --           no    --
=============================  =============  ===========  ====  ========

Every preset takes ``normalization=...`` (default ``"imagenet"``). ``*``: ``cat_max_ratio=0.75``
(:class:`CatMaxRatioCrop`). The ``_daformer`` presets are DAFormer's and MIC's pipelines.

Example:
    >>> import numpy as np
    >>> t = train_transform(resize=(64, 128), crop=(32, 32), flip=True)
    >>> out = t(image=np.zeros((100, 200, 3), np.uint8), mask=np.zeros((100, 200), np.uint8))
    >>> tuple(out["image"].shape), tuple(out["mask"].shape)
    ((3, 32, 32), (32, 32))
    >>> v = val_transform(resize=(64, 128))  # protocol "full": the mask keeps its size
    >>> out = v(image=np.zeros((100, 200, 3), np.uint8), mask=np.zeros((100, 200), np.uint8))
    >>> tuple(out["image"].shape), tuple(out["mask"].shape)
    ((3, 64, 128), (100, 200))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.normalization import InputNormalization, NormalizationLike, get_normalization

__all__ = [
    "EVALUATION_PROTOCOLS",
    "PRESETS",
    "PSEUDO_LABEL_VALID",
    "CatMaxRatioCrop",
    "PseudoLabelMargins",
    "RGBToBGR",
    "normalize_transform",
    "preset",
    "train_transform",
    "val_transform",
]

#: Evaluation protocols of :func:`val_transform`: name → one-line description.
EVALUATION_PROTOCOLS: dict[str, str] = {
    "full": (
        "image resized to the eval size, label kept at its original resolution (2048×1024 for "
        "Cityscapes), logits upsampled to it: AdvEnt, DAFormer, MIC, the official benchmark"
    ),
    "dacs": (
        "image and label (nearest) resized to the eval size, logits scored there: DACS' "
        "evaluateUDA.py"
    ),
}


class RGBToBGR(A.ImageOnlyTransform):
    """Reverse the channel order of the image (RGB → BGR); masks are left alone.

    The step after ``Normalize`` in pipelines for BGR input spaces (``"caffe"``). A module-level
    class, so pipelines stay picklable for ``DataLoader`` workers.
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[..., ::-1])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


#: Item key of the pseudo-label margin mask (:class:`PseudoLabelMargins`): ``H×W``, 1 where
#: pseudo-labels may be trained on, 0 on the margins of the full frame, 255 where a crop was padded.
PSEUDO_LABEL_VALID = "pseudo_label_valid"


class PseudoLabelMargins(A.ImageOnlyTransform):
    """Add the pseudo-label margin mask of the *whole* (resized) frame as a mask target.

    HRDA's "pseudo-label cropping v2": the mask is 0 on the ``(top, bottom, left, right)``
    margins of the full frame and 1 inside, made before the training crop so that the crop, pad
    and flip that follow move it with the image; only crops at the frame border lose pixels.
    Placed right after the resize by :func:`train_transform` (``pseudo_label_margins``), whose
    pipeline declares the :data:`PSEUDO_LABEL_VALID` target. The image is left unchanged.

    Args:
        margins: ``(top, bottom, left, right)`` pixels of the resized frame (HRDA on
            2048×1024 Cityscapes: ``(30, 240, 30, 30)``).
    """

    def __init__(self, margins: Sequence[int], p: float = 1.0) -> None:
        super().__init__(p=p)
        if len(margins) != 4 or any(int(m) < 0 for m in margins):
            raise ValueError(
                f"pseudo_label_margins must be (top, bottom, left, right) pixels >= 0, got "
                f"{margins!r}"
            )
        self.margins = tuple(int(m) for m in margins)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        out = super().__call__(*args, force_apply=force_apply, **data)
        height, width = np.asarray(data["image"]).shape[:2]
        top, bottom, left, right = self.margins
        if top + bottom >= height or left + right >= width:
            raise ValueError(
                f"pseudo_label_margins {self.margins} (top, bottom, left, right) leave nothing of "
                f"the {width}×{height} frame; they are pixels of the resized frame (HRDA: "
                "(30, 240, 30, 30) of 2048×1024): scale them to your frames"
            )
        valid = np.ones((height, width), dtype=np.uint8)
        valid[:top] = 0
        valid[height - bottom :] = 0
        valid[:, :left] = 0
        valid[:, width - right :] = 0
        out[PSEUDO_LABEL_VALID] = valid
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("margins",)


class CatMaxRatioCrop(A.RandomCrop):
    """``A.RandomCrop`` that re-draws crops dominated by one class (mmseg's ``cat_max_ratio``).

    After the first random position, up to ``tries`` times: if the crop's label holds at least
    two classes (ignore excluded) and the largest covers less than ``cat_max_ratio`` of the
    labelled pixels, keep it; otherwise draw a new position. The last drawn position is kept when
    none qualified (as mmseg's ``RandomCrop``, used by DAFormer with ``cat_max_ratio=0.75``).
    Crops of an image smaller than the crop (padded) and calls without a mask are not checked.

    Args:
        height, width: crop size.
        cat_max_ratio: largest allowed share of one class (1.0 disables the check).
        ignore_index: label value not counted (255).
        tries: checks before the last position is kept (10).
        **kwargs: ``A.RandomCrop``'s (``pad_if_needed``, ``fill``, ...).
    """

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        tries: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(height=height, width=width, **kwargs)
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.tries = tries

    def _acceptable(self, mask: np.ndarray, coords: tuple[int, int, int, int]) -> bool:
        x_min, y_min, x_max, y_max = coords
        crop = mask[y_min:y_max, x_min:x_max]
        values, counts = np.unique(crop, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        out = super().get_params_dependent_on_data(params, data)
        mask = data.get("mask")
        if self.cat_max_ratio >= 1.0 or mask is None or out["pad_params"] is not None:
            return out
        mask = np.asarray(mask)
        for _ in range(self.tries):
            if self._acceptable(mask, out["crop_coords"]):
                break
            out = super().get_params_dependent_on_data(params, data)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*super().get_transform_init_args_names(), "cat_max_ratio", "ignore_index", "tries")


class _ResizeImageOnly(A.Resize):
    """``A.Resize`` whose masks pass through unchanged (the ``"full"`` evaluation protocol).

    Subclassing keeps the image path (interpolation, INTER_AREA when downscaling) identical to the
    ``"dacs"`` protocol's, so the two protocols feed the network the very same tensor.
    """

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return mask

    def apply_to_masks(self, masks: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return masks


def _size(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"{name} must be (height, width) with positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _resize(size: tuple[int, int], masks: bool = True) -> A.Resize:
    # INTER_AREA when downscaling approximates the antialiased PIL resize the papers used;
    # masks always nearest (albumentations' default mask_interpolation).
    return (A.Resize if masks else _ResizeImageOnly)(
        height=size[0],
        width=size[1],
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )


def _finish(normalization: InputNormalization) -> list[A.BasicTransform]:
    # albumentations' Normalize works on RGB in [0, 1] units; BGR spaces swap channels after it.
    mean, std = normalization.rgb_mean_std_01
    steps: list[A.BasicTransform] = [A.Normalize(mean=mean, std=std, max_pixel_value=255.0)]
    if normalization.channel_order == "bgr":
        steps.append(RGBToBGR())
    return [*steps, ToTensorV2()]


def _compose(steps: list[A.BasicTransform], normalization: NormalizationLike) -> A.Compose:
    space = get_normalization(normalization)
    margins = any(isinstance(step, PseudoLabelMargins) for step in steps)
    compose = A.Compose(
        steps + _finish(space),
        additional_targets={PSEUDO_LABEL_VALID: "mask"} if margins else None,
    )
    # item keys beside image/mask that the datasets pass through
    compose.extra_targets = (PSEUDO_LABEL_VALID,) if margins else ()
    compose.normalization = space  # read by the datasets (their `normalization`)
    return compose


def train_transform(
    resize: Sequence[int] | None = None,
    crop: Sequence[int] | None = (512, 512),
    flip: bool = True,
    extra: Sequence[A.BasicTransform] | None = None,
    normalization: NormalizationLike = "imagenet",
    cat_max_ratio: float = 1.0,
    resize_scale: float = 1.0,
    pseudo_label_margins: Sequence[int] | None = None,
) -> A.Compose:
    """Training pipeline: resize → random crop (padded if needed) → flip → extra → normalise.

    Args:
        resize: ``(height, width)`` to resize every image to first; ``None`` keeps the size.
        crop: ``(height, width)`` of the random crop; ``None`` for no crop. If the (resized) image
            is smaller, it is padded (image with 0, mask with 255) before cropping.
        flip: random horizontal flip with p = 0.5.
        extra: more albumentations transforms, applied after flip and before normalisation
            (on uint8 RGB images).
        normalization: the input space of the output images (``"imagenet"``, ``"caffe"`` or an
            :class:`~lightning_uda.normalization.InputNormalization`).
        cat_max_ratio: below 1, crops where one class covers at least this share of the
            labelled pixels are re-drawn (up to 10 times, :class:`CatMaxRatioCrop`; DAFormer's
            source crops: 0.75). Needs the mask; unlabelled (target) pipelines are unaffected.
        resize_scale: multiplies ``resize`` (HRDA's frames are twice DAFormer's: GTA5
            720×1280 → 1440×2560, SYNTHIA 760×1280 → 1520×2560, Cityscapes 512×1024 →
            1024×2048), so one method setting serves every dataset layer.
        pseudo_label_margins: ``(top, bottom, left, right)`` pixels of the resized frame whose
            pseudo-labels are not trained on (HRDA: ``(30, 240, 30, 30)``): the items then carry
            ``"pseudo_label_valid"`` (:class:`PseudoLabelMargins`), cropped and flipped with the
            image.

    Returns:
        An ``A.Compose``; ``out = t(image=H×W×3 uint8, mask=H×W uint8)`` gives
        ``out["image"]``: float ``3 × h × w`` (in the input space), ``out["mask"]``: ``h × w``.
        ``t.normalization`` is the space.

    Raises:
        ValueError: a malformed size or an unknown normalisation name.
    """
    steps: list[A.BasicTransform] = []
    if resize_scale <= 0 or (resize_scale != 1.0 and resize is None):
        raise ValueError(
            f"resize_scale={resize_scale} must be > 0 and scales `resize`, which is {resize!r}"
        )
    if (size := _size(resize, "resize")) is not None:
        steps.append(_resize((round(size[0] * resize_scale), round(size[1] * resize_scale))))
    if pseudo_label_margins is not None:
        steps.append(PseudoLabelMargins(pseudo_label_margins))
    if (crop_size := _size(crop, "crop")) is not None:
        steps.append(
            CatMaxRatioCrop(
                height=crop_size[0],
                width=crop_size[1],
                cat_max_ratio=cat_max_ratio,
                pad_if_needed=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
            )
        )
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.extend(extra or [])
    return _compose(steps, normalization)


def val_transform(
    resize: Sequence[int] | None = (512, 1024),
    protocol: str = "full",
    normalization: NormalizationLike = "imagenet",
) -> A.Compose:
    """Evaluation pipeline: resize the image (bilinear/area) → normalise; the mask per protocol.

    Args:
        resize: ``(height, width)`` of the network input; AdvEnt, DACS, DAFormer and MIC feed
            Cityscapes at ``(512, 1024)``. ``None`` keeps the original size.
        protocol: what happens to the mask (:data:`EVALUATION_PROTOCOLS`): ``"full"`` keeps it
            at its original resolution (the module upsamples its logits to it: AdvEnt, DAFormer,
            MIC, the official benchmark); ``"dacs"`` resizes it with the image (nearest), as
            DACS' ``evaluateUDA.py``. The image is the same under both.
        normalization: the input space of the output images (see :func:`train_transform`).

    Returns:
        An ``A.Compose``, called like :func:`train_transform`'s: ``out["image"]`` is
        ``3 × resize``; ``out["mask"]`` is ``H × W`` (``"full"``) or ``resize`` (``"dacs"``).
        Val items of different original sizes then do not stack into one batch under
        ``"full"``: evaluate them with batch size 1 (Cityscapes frames all have one size).

    Raises:
        ValueError: an unknown protocol (the known ones are listed), a malformed size or an
            unknown normalisation name.

    Example:
        >>> import numpy as np
        >>> out = val_transform((64, 128), protocol="dacs")(
        ...     image=np.zeros((100, 200, 3), np.uint8), mask=np.zeros((100, 200), np.uint8))
        >>> tuple(out["mask"].shape)
        (64, 128)
    """
    if protocol not in EVALUATION_PROTOCOLS:
        known = "; ".join(f"{k!r}: {v}" for k, v in EVALUATION_PROTOCOLS.items())
        raise ValueError(f"Unknown evaluation protocol {protocol!r}; choose one of {known}")
    steps: list[A.BasicTransform] = []
    if (size := _size(resize, "resize")) is not None:
        steps.append(_resize(size, masks=protocol == "dacs"))
    return _compose(steps, normalization)


def normalize_transform(normalization: NormalizationLike = "imagenet") -> A.Compose:
    """Only normalisation into the input space and conversion to tensors (datasets' default)."""
    return _compose([], normalization)


#: Keyword arguments of each preset (sizes are ``(height, width)``); every preset also takes
#: ``normalization``.
PRESETS: dict[str, dict[str, Any]] = {
    # DACS: GTA5 images (1914×1052) resized to 1280×720, random 512×512 crops.
    "gta5_train": {"resize": (720, 1280), "crop": (512, 512), "flip": False},
    # DACS: Cityscapes target images resized to 1024×512, random 512×512 crops.
    "cityscapes_train": {"resize": (512, 1024), "crop": (512, 512), "flip": False},
    # SYNTHIA-RAND-CITYSCAPES is natively 1280×760; crops as for GTA5.
    "synthia_train": {"resize": (760, 1280), "crop": (512, 512), "flip": False},
    # DAFormer/MIC: the same sizes, flips with p 0.5, source crops re-drawn while one class
    # covers > 75% (mmseg's cat_max_ratio); DAFormer's target crops are plain random crops.
    "gta5_train_daformer": {
        "resize": (720, 1280),
        "crop": (512, 512),
        "flip": True,
        "cat_max_ratio": 0.75,
    },
    "synthia_train_daformer": {
        "resize": (760, 1280),
        "crop": (512, 512),
        "flip": True,
        "cat_max_ratio": 0.75,
    },
    "cityscapes_train_daformer": {"resize": (512, 1024), "crop": (512, 512), "flip": True},
    # Cityscapes val fed at 1024×512, scored on the full-resolution labels (AdvEnt, DAFormer,
    # MIC, the official evaluation).
    "cityscapes_val": {"resize": (512, 1024), "protocol": "full"},
    # DACS' evaluation: labels nearest-resized to 1024×512 too.
    "cityscapes_val_dacs": {"resize": (512, 1024), "protocol": "dacs"},
    "normalize": {},
}


def preset(name: str, normalization: NormalizationLike = "imagenet", **overrides: Any) -> A.Compose:
    """A named pipeline from :data:`PRESETS`, optionally with some arguments overridden.

    Args:
        name: one of ``gta5_train``, ``cityscapes_train``, ``synthia_train`` and their
            ``_daformer`` variants (built with :func:`train_transform`), ``cityscapes_val``,
            ``cityscapes_val_dacs``
            (:func:`val_transform`, protocols ``"full"`` and ``"dacs"``) or ``normalize``.
        normalization: the input space of the output images (see :func:`train_transform`).
        **overrides: arguments for the underlying function, e.g. ``flip=True`` or
            ``protocol="dacs"``.

    Example:
        >>> t = preset("gta5_train", flip=True)
        >>> v = preset("cityscapes_val", normalization="caffe")
        >>> v.normalization.name
        'caffe'
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown transform preset {name!r}; choose one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    if name == "normalize":
        if kwargs:
            raise ValueError(f"preset 'normalize' takes only `normalization`, got {sorted(kwargs)}")
        return normalize_transform(normalization)
    if "protocol" in PRESETS[name]:
        return val_transform(**kwargs, normalization=normalization)
    return train_transform(**kwargs, normalization=normalization)
