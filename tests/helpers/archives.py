"""Tiny dataset trees made of the fixture frame, extracted and as their official zip archives.

Each builder writes the extracted tree under ``root / "folders"`` and the archives, packed from
those same files with the member names of the official downloads, under ``root / "zips"``.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np

from tests.helpers.examples import FRAME, gta_and_cityscapes


def zip_tree(
    archive: Path,
    folder: Path,
    under: str = "",
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
    only: str = "",
) -> Path:
    """Pack the files below ``folder`` into ``archive``, named ``under`` + their path relative
    to ``folder`` (only those starting with ``only``), plus ``extra`` members (name -> bytes)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", compression=compression) as handle:
        for name, data in (extra or {}).items():
            handle.writestr(name, data)
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel.startswith(only):
                handle.write(path, under + rel)
    return archive


#: The two text files at the top of the official Cityscapes archives.
CITYSCAPES_EXTRAS = {"README": b"The Cityscapes Dataset\n", "license.txt": b"terms of use\n"}


def cityscapes(root: Path, fixtures: Path) -> tuple[Path, Path]:
    """(folders root, zips root): 2 train + 2 val frames, the zips named and laid out as
    ``leftImg8bit_trainvaltest.zip`` (``leftImg8bit/...``) and ``gtFine_trainvaltest.zip``."""
    folders, zips = root / "folders", root / "zips"
    if not (folders / "cityscapes").is_dir():
        gta_and_cityscapes(folders, fixtures)
    city = folders / "cityscapes"
    for kind in ("leftImg8bit", "gtFine"):
        zip_tree(
            zips / "cityscapes" / f"{kind}_trainvaltest.zip",
            city,
            only=f"{kind}/",
            extra=CITYSCAPES_EXTRAS,
        )
    return city, zips / "cityscapes"


def gta5(root: Path, fixtures: Path) -> tuple[Path, Path]:
    """(folders root, zips root): 2 GTA5 images with paletted labels, one per part, in
    ``01_images.zip``/``02_images.zip`` (``images/0000i.png``) and ``0N_labels.zip``."""
    folders, zips = root / "folders", root / "zips"
    if not (folders / "gta5").is_dir():
        gta_and_cityscapes(folders, fixtures)
    gta = folders / "gta5"
    for part, name in enumerate(sorted(p.name for p in (gta / "images").iterdir()), start=1):
        for kind in ("images", "labels"):
            zip_tree(zips / "gta5" / f"{part:02d}_{kind}.zip", gta, only=f"{kind}/{name}")
    return gta, zips / "gta5"


def synthia(
    root: Path, fixtures: Path, raw: np.ndarray, under: str = "RAND_CITYSCAPES/"
) -> tuple[Path, Path]:
    """(folders root, zips root): one SYNTHIA frame (the fixture image, 16-bit labels holding
    ``raw`` in the R channel) and ``SYNTHIA_RAND_CITYSCAPES.zip`` with the tree under ``under``
    (a zip of the folder the official ``.rar`` extracts to)."""
    tree = root / "folders" / "synthia"
    (tree / "RGB").mkdir(parents=True)
    (tree / "GT" / "LABELS").mkdir(parents=True)
    image = fixtures / f"cityscapes_mini/leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"
    for i in range(2):
        shutil.copy(image, tree / "RGB" / f"000000{i}.png")
        label = np.zeros((*raw.shape, 3), dtype=np.uint16)  # BGR order for OpenCV
        label[..., 2] = raw
        label[..., 1] = 1000 + i  # an instance id in G, as SYNTHIA stores
        assert cv2.imwrite(str(tree / "GT" / "LABELS" / f"000000{i}.png"), label)
    archive = zip_tree(root / "zips" / "synthia" / "SYNTHIA_RAND_CITYSCAPES.zip", tree, under)
    return tree, archive.parent
