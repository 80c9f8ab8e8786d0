"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016): 9,400 synthetic frames (1280×760) with
16-bit labels, raw SYNTHIA ids mapped to the Cityscapes train ids; read from the extracted folder
or from a zip of it (the official download is a RAR archive; see :class:`SYNTHIA`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightning_uda.data.archive_folder import ArchiveAwareFolder, Source, _check_root
from lightning_uda.data.archives import ArchiveError, ZipFolder, find_tree, missing_tree_error
from lightning_uda.data.files import DatasetLayoutError, PathLike, _show, read_unchanged
from lightning_uda.data.folder import TransformLike
from lightning_uda.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_ID_TO_TRAIN_ID,
    SYNTHIA_KNOWN_IDS,
)
from lightning_uda.normalization import NormalizationLike

__all__ = ["SYNTHIA"]


class SYNTHIA(ArchiveAwareFolder):
    """SYNTHIA-RAND-CITYSCAPES, raw SYNTHIA ids → the 19 Cityscapes train ids (16 occur).

    Expected layout (the ``RAND_CITYSCAPES`` archive)::

        root/
        ├── RGB/0000000.png ...
        └── GT/
            └── LABELS/0000000.png ...   # 16-bit, 3 channels; class id in the R channel

    Archives: the official download is a RAR archive, ``SYNTHIA_RAND_CITYSCAPES.rar`` (it
    extracts to ``RAND_CITYSCAPES/{RGB,GT/COLOR,GT/LABELS,Depth}``), which Python cannot read
    without an external ``unrar`` program. A zip of the same tree is read without extracting::

        root/
        └── SYNTHIA_RAND_CITYSCAPES.zip
            # RAND_CITYSCAPES/RGB/*.png, RAND_CITYSCAPES/GT/LABELS/*.png (or RGB/, GT/LABELS/)

    made once with ``unrar x SYNTHIA_RAND_CITYSCAPES.rar && zip -r -0 SYNTHIA_RAND_CITYSCAPES.zip
    RAND_CITYSCAPES`` (tue-mps' VFM-UDA++ code reads such a zip, with the tree under
    ``RAND_CITYSCAPES/``). Any one ``*.zip`` in ``root`` holding ``RGB/`` is used; a root holding
    only the ``.rar`` raises an error that explains this. Member names written with Windows
    separators (``RGB\\0000000.png``) are read as ``RGB/0000000.png``.

    Labels are read with OpenCV and ``cv2.IMREAD_UNCHANGED`` (BGR order, so the id is
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

    ZIP_LAYOUT = (
        "root/\n"
        "└── SYNTHIA_RAND_CITYSCAPES.zip   ([RAND_CITYSCAPES/]RGB/*.png and "
        "[RAND_CITYSCAPES/]GT/LABELS/*.png)"
    )

    def __init__(
        self,
        root: PathLike,
        transform: TransformLike = None,
        return_mask: bool = True,
        normalization: NormalizationLike | None = None,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        _check_root(self.root, type(self).__name__, self.LAYOUT, self.ZIP_LAYOUT)
        images: Source = self.root / "RGB"
        masks: Source = self.root / "GT" / "LABELS"
        if not images.is_dir():
            archive = self._find_archive()
            if archive is None:
                raise DatasetLayoutError(
                    f"SYNTHIA: {images} does not exist, and {self.root} holds no zip of the tree "
                    f"either. Expected layout:\n{self.LAYOUT}\nor, not extracted:\n"
                    f"{self.ZIP_LAYOUT}"
                )
            tree = find_tree(archive, "RGB") or ""
            images = ZipFolder((archive,), f"{tree}RGB")
            masks = masks if masks.is_dir() else ZipFolder((archive,), f"{tree}GT/LABELS")
        if return_mask:
            self._check_archive_labels(
                images, masks, suffixes=("", ""), recursive=False, labels_archive=lambda a: a.name
            )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
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

    def _find_archive(self) -> Path | None:
        """The zip in ``root`` holding ``RGB/`` (``None`` if ``root`` has no zip or RAR)."""
        zips = sorted(self.root.glob("*.zip"))
        if not zips:
            rars = sorted(self.root.glob("*.rar"))
            if rars:
                raise ArchiveError(
                    f"SYNTHIA root {self.root} holds {rars[0].name}, a RAR archive (the official "
                    "SYNTHIA_RAND_CITYSCAPES.rar is one), and no RGB/ folder. Only zip archives "
                    "are read in place: Python has no RAR reader. Either extract it (`unrar x "
                    f"{rars[0].name}`, then pass the RAND_CITYSCAPES folder as root), or repack "
                    f"it once as a zip: `unrar x {rars[0].name} && zip -r -0 "
                    "SYNTHIA_RAND_CITYSCAPES.zip RAND_CITYSCAPES`, and put the zip in root."
                )
            return None
        holding = [z for z in zips if find_tree(z, "RGB") is not None]
        if not holding:
            raise missing_tree_error(zips[0], "RGB", self.ZIP_LAYOUT)
        if len(holding) > 1:
            raise ArchiveError(
                f"SYNTHIA root {self.root} holds several zips with an RGB/ folder: "
                f"{_show([z.name for z in holding])}. Keep one (or pass a root holding one)."
            )
        return holding[0]

    def read_mask(self, path: Path) -> np.ndarray:
        """Raw SYNTHIA ids, ``H × W`` uint16: the R channel of the 16-bit label PNG."""
        label = read_unchanged(path)
        return label[..., 2] if label.ndim == 3 else label
