"""Mapillary Vistas v1.2 (Neuhold et al., ICCV 2017), its 66 classes mapped to Cityscapes' 19.

25,000 street-level images from six continents at many resolutions (18,000 train, 2,000 val,
5,000 test); v1.2 labels are single-channel PNGs of class indices 0..65 (the order of
``config_v1.2.json``). A target of the domain-generalisation benchmark, evaluated in the 19
Cityscapes classes: :data:`MAPILLARY_V12_TO_CITYSCAPES` maps every v1.2 class to a train id or to
void (255); ``void--unlabeled`` (65) and classes Cityscapes does not evaluate become 255.

The mapping (:data:`MAPILLARY_V12_TO_CITYSCAPES`) is the one of the conversion that the
domain-generalisation works evaluate with (``mapillary2cityscape.py``, from openseg.pytorch, as
used by Rein and others), which matches v1.2's readable names to Cityscapes':

=====================  ==============================================================
Cityscapes train id    Mapillary v1.2 classes (index)
=====================  ==============================================================
0 road                 bike-lane 7, crosswalk-plain 8, parking 10, road 13, service-lane
                       14, marking crosswalk-zebra 23, marking general 24
1 sidewalk             curb 2, curb-cut 9, pedestrian-area 11, sidewalk 15
2 building             building 17
3 wall                 wall 6
4 fence                fence 3
5 pole                 street-light 44, pole 45, utility-pole 47
6 traffic light        traffic-light 48
7 traffic sign         traffic-sign-frame 46, traffic-sign back 49, front 50
8 vegetation           vegetation 30
9 terrain              terrain 29
10 sky                 sky 27
11 person              person 19
12 rider               bicyclist 20, motorcyclist 21, other-rider 22
13 car                 car 55
14 truck               truck 61
15 bus                 bus 54
16 train               on-rails 58
17 motorcycle          motorcycle 57
18 bicycle             bicycle 52
255 void               every other class, and unlabeled 65
=====================  ==============================================================

Note that Cityscapes itself leaves parking, rail track, guard rail, bridge and tunnel void; this
mapping folds parking (and lane markings, curbs) into road/sidewalk as the conversion does, so
Mapillary's road/sidewalk IoUs are not measured exactly as Cityscapes' are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lightning_uda.data.archive_folder import (
    ArchiveAwareFolder,
    Source,
    _check_root,
    child,
    exists,
    locate,
)
from lightning_uda.data.archives import ZipFolder, member_path, members, read_member
from lightning_uda.data.files import DatasetLayoutError, PathLike, UnknownLabelError
from lightning_uda.data.folder import TransformLike
from lightning_uda.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, lookup_table
from lightning_uda.normalization import NormalizationLike

__all__ = ["MAPILLARY_V12_CLASSES", "MAPILLARY_V12_TO_CITYSCAPES", "MapillaryVistas"]

#: The 66 classes of Mapillary Vistas v1.2, by label index (``config_v1.2.json``'s ``name``).
MAPILLARY_V12_CLASSES: tuple[str, ...] = (
    "animal--bird",  # 0
    "animal--ground-animal",
    "construction--barrier--curb",
    "construction--barrier--fence",
    "construction--barrier--guard-rail",
    "construction--barrier--other-barrier",  # 5
    "construction--barrier--wall",
    "construction--flat--bike-lane",
    "construction--flat--crosswalk-plain",
    "construction--flat--curb-cut",
    "construction--flat--parking",  # 10
    "construction--flat--pedestrian-area",
    "construction--flat--rail-track",
    "construction--flat--road",
    "construction--flat--service-lane",
    "construction--flat--sidewalk",  # 15
    "construction--structure--bridge",
    "construction--structure--building",
    "construction--structure--tunnel",
    "human--person",
    "human--rider--bicyclist",  # 20
    "human--rider--motorcyclist",
    "human--rider--other-rider",
    "marking--crosswalk-zebra",
    "marking--general",
    "nature--mountain",  # 25
    "nature--sand",
    "nature--sky",
    "nature--snow",
    "nature--terrain",
    "nature--vegetation",  # 30
    "nature--water",
    "object--banner",
    "object--bench",
    "object--bike-rack",
    "object--billboard",  # 35
    "object--catch-basin",
    "object--cctv-camera",
    "object--fire-hydrant",
    "object--junction-box",
    "object--mailbox",  # 40
    "object--manhole",
    "object--phone-booth",
    "object--pothole",
    "object--street-light",
    "object--support--pole",  # 45
    "object--support--traffic-sign-frame",
    "object--support--utility-pole",
    "object--traffic-light",
    "object--traffic-sign--back",
    "object--traffic-sign--front",  # 50
    "object--trash-can",
    "object--vehicle--bicycle",
    "object--vehicle--boat",
    "object--vehicle--bus",
    "object--vehicle--car",  # 55
    "object--vehicle--caravan",
    "object--vehicle--motorcycle",
    "object--vehicle--on-rails",
    "object--vehicle--other-vehicle",
    "object--vehicle--trailer",  # 60
    "object--vehicle--truck",
    "object--vehicle--wheeled-slow",
    "void--car-mount",
    "void--ego-vehicle",
    "void--unlabeled",  # 65
)

_TO_TRAIN_ID_BY_NAME: dict[str, int] = {
    "construction--flat--bike-lane": 0,
    "construction--flat--crosswalk-plain": 0,
    "construction--flat--parking": 0,
    "construction--flat--road": 0,
    "construction--flat--service-lane": 0,
    "marking--crosswalk-zebra": 0,
    "marking--general": 0,
    "construction--barrier--curb": 1,
    "construction--flat--curb-cut": 1,
    "construction--flat--pedestrian-area": 1,
    "construction--flat--sidewalk": 1,
    "construction--structure--building": 2,
    "construction--barrier--wall": 3,
    "construction--barrier--fence": 4,
    "object--street-light": 5,
    "object--support--pole": 5,
    "object--support--utility-pole": 5,
    "object--traffic-light": 6,
    "object--support--traffic-sign-frame": 7,
    "object--traffic-sign--back": 7,
    "object--traffic-sign--front": 7,
    "nature--vegetation": 8,
    "nature--terrain": 9,
    "nature--sky": 10,
    "human--person": 11,
    "human--rider--bicyclist": 12,
    "human--rider--motorcyclist": 12,
    "human--rider--other-rider": 12,
    "object--vehicle--car": 13,
    "object--vehicle--truck": 14,
    "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16,
    "object--vehicle--motorcycle": 17,
    "object--vehicle--bicycle": 18,
}

#: Mapillary v1.2 label index → Cityscapes train id (255: void), for the 66 classes.
MAPILLARY_V12_TO_CITYSCAPES: dict[int, int] = {
    index: _TO_TRAIN_ID_BY_NAME.get(name, 255) for index, name in enumerate(MAPILLARY_V12_CLASSES)
}

_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
#: The official archives, in order of preference (v2.0 also holds the v1.2 labels).
ARCHIVES = ("mapillary-vistas-dataset_public_v1.2.zip", "mapillary-vistas-dataset_public_v2.0.zip")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class MapillaryVistas(ArchiveAwareFolder):
    """Mapillary Vistas v1.2 labels mapped to the 19 Cityscapes train ids (see the module table).

    Expected layout (``mapillary-vistas-dataset_public_v1.2.zip``, or the v2.0 archive, which
    also holds the v1.2 labels under ``v1.2/``)::

        root/
        ├── config_v1.2.json                     # optional; checked against the 66 classes
        ├── training/
        │   ├── images/*.jpg
        │   └── labels/*.png    (v1.2 archive)   or   v1.2/labels/*.png   (v2.0 archive)
        ├── validation/...
        └── testing/images/*.jpg                 # no labels

    Labels are single-channel PNGs of v1.2 indices 0..65; a value above 65 is an error that
    says the labels are not v1.2 (v2.0's 124 classes need another table).

    Archives: ``root`` may instead hold the official archive, read without extracting:
    ``root/mapillary-vistas-dataset_public_v1.2.zip`` (or ``…_v2.0.zip``; v1.2 is preferred
    when both are there), holding the tree above at its top (``training/images``,
    ``training/labels``, …, ``config_v1.2.json``), as the v1.1 package's README describes and as
    tue-mps' VFM-UDA code reads it (``training/images``, ``validation/labels`` inside the
    archive). The download link may save the file under a long generated name: rename it to the
    official name. An archive of the tree inside one top-level folder is accepted too; an
    extracted split folder (``validation/``) wins over the archive; ``config_v1.2.json`` is
    checked inside the archive as on disk.

    Args:
        root: dataset root (see the tree).
        split: ``"train"``, ``"val"`` (the DG benchmarks evaluate on the 2,000 val images) or
            ``"test"`` (no labels).
        transform: see :class:`SegmentationFolder`. Images differ in size and aspect ratio:
            evaluate with ``val_batch_size=1``.
        return_mask: ``False`` for images only.
        normalization: input space of the images (see :class:`SegmentationFolder`).
        **kwargs: ``return_meta``, ``check_labels``, ``resize_mismatched_masks``.

    Raises:
        ValueError: labels asked of the test split.
        DatasetLayoutError: a missing split folder, labels in the v2.0 place only, or a
            ``config_v1.2.json`` that does not list the 66 v1.2 classes.
        ArchiveError: (a :class:`DatasetLayoutError`) an official archive that is truncated,
            holds another archive's folders, or lacks labels of some images (named).
    """

    LAYOUT = (
        "root/\n"
        "├── {training,validation}/images/*.jpg\n"
        "└── {training,validation}/labels/*.png   (v1.2: class indices 0..65; or v1.2/labels/)"
    )

    ZIP_LAYOUT = (
        "root/\n"
        f"└── {ARCHIVES[0]}   ({{training,validation}}/images/*.jpg, "
        "{training,validation}/labels/*.png; or the v2.0 archive)"
    )

    #: Likely cause when labels load as all-void (see UDADataModule's label check).
    LABEL_HINT = "Mapillary v1.2 labels hold class indices 0..65, not colours or v2.0 indices"

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
        if split not in _SPLITS:
            raise ValueError(f"{name}: split must be one of {list(_SPLITS)}, got {split!r}")
        if split == "test" and return_mask:
            raise ValueError(
                f"{name}: the test split of {self.root} has no labels; pass return_mask=False "
                "or evaluate on split='val'."
            )
        archive = next((a for a in ARCHIVES if (self.root / a).is_file()), ARCHIVES[0])
        folder = locate(
            self.root,
            _SPLITS[split],
            pattern=archive,
            layouts=(self.LAYOUT, self.ZIP_LAYOUT),
            misnamed=lambda archive: {},
            required_by=name,
        )
        images = child(folder, "images")
        if not exists(images):
            raise DatasetLayoutError(
                f"{name}: {images} does not exist. Put the Mapillary Vistas archive ({archive}) "
                f"or its extracted folders in {self.root}. Expected layout:\n{self.LAYOUT}\nor, "
                f"not extracted:\n{self.ZIP_LAYOUT}"
            )
        self._check_config(folder)
        masks = self._labels_folder(folder) if return_mask else None
        if masks is not None:
            self._check_archive_labels(
                images,
                masks,
                suffixes=("", ""),
                recursive=False,
                labels_archive=lambda archive: archive.name,
                image_extensions=_IMAGE_EXTENSIONS,
            )
        super().__init__(
            images=self._bind(images),
            masks=self._bind(masks),
            label_map=lookup_table(MAPILLARY_V12_TO_CITYSCAPES),
            transform=transform,
            classes=CITYSCAPES_CLASSES,
            palette=CITYSCAPES_PALETTE,
            image_extensions=_IMAGE_EXTENSIONS,
            return_mask=return_mask,
            normalization=normalization,
            **kwargs,
        )
        self.known_values = _known_v12()

    def _labels_folder(self, folder: Source) -> Source:
        for candidate in (child(folder, "v1.2/labels"), child(folder, "labels")):
            if exists(candidate):
                return candidate
        v2 = child(folder, "v2.0/labels")
        if exists(v2):
            raise DatasetLayoutError(
                f"{type(self).__name__}: only v2.0 labels found ({v2}); their 124 classes are "
                "not the v1.2 classes this dataset maps to Cityscapes. Use the v1.2 labels "
                f"(the v2.0 archive holds them in {child(folder, 'v1.2/labels')})."
            )
        raise DatasetLayoutError(
            f"{type(self).__name__}: no labels in {folder} (looked for v1.2/labels/ and "
            f"labels/). Expected layout:\n{self.LAYOUT}"
        )

    def _check_config(self, folder: Source) -> None:
        """Check ``config_v1.2.json`` beside the split folders, on disk or in the archive."""
        if isinstance(folder, ZipFolder):
            archive = folder.archives[0]
            name = folder.prefix.rpartition("/")[0]
            member = f"{name}/config_v1.2.json".lstrip("/")
            if member not in members(archive):
                return
            config, text = member_path(archive, member), read_member(archive, member).decode()
        else:
            config = self.root / "config_v1.2.json"
            if not config.is_file():
                return
            text = config.read_text()
        labels = json.loads(text).get("labels", [])
        names = tuple(label.get("name") for label in labels)
        if names != MAPILLARY_V12_CLASSES:
            raise DatasetLayoutError(
                f"{type(self).__name__}: {config} lists {len(names)} classes that are not the "
                f"66 classes of Mapillary Vistas v1.2 this mapping expects; is it another "
                "version's configuration?"
            )

    def load_mask(self, path: Path) -> np.ndarray:
        """Read a v1.2 label and map it to train ids, ``H × W`` uint8 (255 = void).

        Raises:
            UnknownLabelError: a value above 65 (if ``check_labels``), naming the file and
                saying the labels are not v1.2.
        """
        raw = self.read_mask(path)
        if self.check_labels and raw.size and int(raw.max()) > 65:
            values = np.unique(raw[raw > 65])[:5].tolist()
            raise UnknownLabelError(
                f"Label file {path} holds values {values} above 65: these are not Mapillary "
                "Vistas v1.2 labels (66 classes, 0..65) — v2.0 labels (124 classes) or colour "
                "images? Use the v1.2 labels (v1.2/labels/ in the v2.0 archive)."
            )
        return self.lut[np.minimum(raw, 255)]


def _known_v12() -> np.ndarray:
    known = np.zeros(256, dtype=bool)
    known[: len(MAPILLARY_V12_CLASSES)] = True
    known.flags.writeable = False
    return known
