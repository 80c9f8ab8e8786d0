"""Tiny dataset trees in the official layouts, built from the real Cityscapes fixture frame.

Every tree holds copies of the one 256×128 frame (``tests/fixtures/cityscapes_mini``) under the
file names and folders the dataset's archives use; labels are the frame's real label ids (or
their train ids / Mapillary indices), so loaders are checked on real label content.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FRAME = "frankfurt_000000_000294"

#: Cityscapes label id → train id, as the reference loaders (DACS/AdvEnt) write it: independent
#: of lightning_uda/data/labels.py.
ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def frame(fixtures_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb H×W×3 uint8, label ids H×W uint8, train ids H×W uint8)`` of the fixture frame."""
    mini = fixtures_root / "cityscapes_mini"
    rgb = np.array(Image.open(mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))
    ids = np.array(Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"))
    train = np.array(Image.open(mini / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png"))
    return rgb, ids, train


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Label ids → train ids with :data:`ID_TO_TRAIN` (others 255), int64."""
    out = np.full(label_ids.shape, 255, dtype=np.int64)
    for k, v in ID_TO_TRAIN.items():
        out[label_ids == k] = v
    return out


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (H×W or H×W×3 RGB) as a PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpg(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB image as a JPEG (OpenCV, quality 100), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    return path


def acdc_tree(
    root: Path,
    rgb: np.ndarray,
    ids: np.ndarray,
    conditions: tuple[str, ...] = ("fog", "night", "rain", "snow"),
    frames: int = 1,
) -> Path:
    """ACDC: ``rgb_anon/<cond>/{train,val,test,train_ref}/<seq>/``, ``gt/<cond>/{train,val}/...``.

    Frame ``i`` of condition ``c`` is ``GOPR0475_frame_00004{i}``; beside every labelIds file lie
    the other label formats of the archive (train ids, colours), which must not be read.
    """
    seq = "GOPR0475"
    for condition in conditions:
        for i in range(frames):
            name = f"{seq}_frame_00004{i}"
            for split in ("train", "val", "test"):
                write_png(root / f"rgb_anon/{condition}/{split}/{seq}/{name}_rgb_anon.png", rgb)
            write_png(root / f"rgb_anon/{condition}/train_ref/{seq}/{name}_rgb_ref_anon.png", rgb)
            for split in ("train", "val"):
                gt = root / f"gt/{condition}/{split}/{seq}"
                write_png(gt / f"{name}_gt_labelIds.png", ids)
                write_png(gt / f"{name}_gt_labelTrainIds.png", np.full_like(ids, 7))
                write_png(gt / f"{name}_gt_labelColor.png", np.dstack([ids] * 3))
    return root


def dark_zurich_tree(root: Path, rgb: np.ndarray, ids: np.ndarray, day: bool = True) -> Path:
    """Dark Zurich merged into ``root``: train night (2 frames), twilight (1), day (2, if
    ``day``), val night GOPR0356 (2 labelled frames), test night (1)."""
    for i in range(2):
        write_png(root / f"rgb_anon/train/night/GOPR0351/GOPR0351_frame_00015{i}_rgb_anon.png", rgb)
        if day:
            write_png(
                root / f"rgb_anon/train/day/GOPR0350/GOPR0350_frame_00026{i}_rgb_anon.png",
                rgb[::-1].copy(),  # references differ from their night frames
            )
        write_png(root / f"rgb_anon/val/night/GOPR0356/GOPR0356_00000{i}_rgb_anon.png", rgb)
        write_png(root / f"gt/val/night/GOPR0356/GOPR0356_00000{i}_gt_labelIds.png", ids)
        write_png(root / f"gt/val/night/GOPR0356/GOPR0356_00000{i}_gt_labelTrainIds.png", ids)
    write_png(root / "rgb_anon/train/twilight/GOPR0352/GOPR0352_frame_000001_rgb_anon.png", rgb)
    write_png(root / "rgb_anon/test/night/GOPR0364/GOPR0364_frame_000001_rgb_anon.png", rgb)
    return root


#: Cityscapes train id → SYNTHIA class id (SYNTHIA-RAND-CITYSCAPES' README class list: 1 sky,
#: 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign,
#: 10 pedestrian, 11 bicycle, 12 motorcycle, 15 traffic light, 16 terrain, 17 rider, 18 truck,
#: 19 bus, 20 train, 21 wall): independent of lightning_uda/data/labels.py.
TRAIN_TO_SYNTHIA = {
    0: 3, 1: 4, 2: 2, 3: 21, 4: 5, 5: 7, 6: 15, 7: 9, 8: 6, 9: 16,
    10: 1, 11: 10, 12: 17, 13: 8, 14: 18, 15: 19, 16: 20, 17: 12, 18: 11,
}  # fmt: skip


def synthia_tree(root: Path, rgb: np.ndarray, train_ids: np.ndarray, frames: int = 2) -> Path:
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/000000{i}.png`` and 16-bit ``GT/LABELS/000000{i}.png``
    whose R channel holds the SYNTHIA ids of ``train_ids`` (:data:`TRAIN_TO_SYNTHIA`; 255 → 0,
    void) and whose G channel an instance id above 255, as the archive stores them."""
    raw = np.zeros(train_ids.shape, dtype=np.uint16)
    for train, synthia in TRAIN_TO_SYNTHIA.items():
        raw[train_ids == train] = synthia
    for i in range(frames):
        write_png(root / f"RGB/000000{i}.png", rgb)
        label = np.zeros((*raw.shape, 3), dtype=np.uint16)  # BGR order for OpenCV
        label[..., 2] = raw
        label[..., 1] = 1000 + i
        (root / "GT/LABELS").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / f"GT/LABELS/000000{i}.png"), label)
    return root
