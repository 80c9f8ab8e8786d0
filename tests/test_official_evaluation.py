"""The official Cityscapes evaluation agrees with the module's ``val/mIoU`` (the "full" protocol).

``preset("cityscapes_val")`` feeds the network 1024×512 images and keeps the labels at their
original resolution, so ``UDAModule`` scores logits upsampled to the full label: the quantity the
official evaluation (``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``) computes from
full-resolution labelId PNGs. These tests run both on the same predictions, on the real fixture
frame as shipped (256×128) and upscaled to Cityscapes' native 2048×1024, and require the class
average IoU to agree to 1e-4 points.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch.utils.data import DataLoader

from lightning_uda.callbacks import CityscapesPredictionWriter
from lightning_uda.data import Cityscapes, preset
from lightning_uda.losses import cross_entropy
from lightning_uda.methods import SourceOnlyModule

official = pytest.importorskip(
    "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
    reason="the official evaluation needs `pip install cityscapesscripts` (the dev extra)",
)
official_labels = pytest.importorskip("cityscapesscripts.helpers.labels")

FRAME = "frankfurt_000000_000294"
CITY = "frankfurt"


# ---------------------------------------------------------------------------------- helpers
def _trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _official_scores(predictions: list[Path], ground_truths: list[Path], tmp: Path) -> dict:
    """``evaluateImgLists`` on explicit file lists: no environment variables, no files written."""
    args = copy.copy(official.args)  # the module-level defaults, left untouched
    args.evalInstLevelScore = False  # no *_instanceIds.png needed
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    args.exportFile = str(tmp / "resultPixelLevelSemanticLabeling.json")  # unused: no JSON
    args.colorized = False
    return official.evaluateImgLists(
        [str(p) for p in predictions], [str(p) for p in ground_truths], args
    )


def _upscaled_copy(source: Path, root: Path, size: tuple[int, int] = (1024, 2048)) -> Path:
    """The fixture frame resized to ``size`` (H, W) in the official layout: image bilinear,
    labels nearest."""
    height, width = size
    images = root / "leftImg8bit" / "val" / CITY
    labels = root / "gtFine" / "val" / CITY
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rgb = np.array(Image.open(source / f"leftImg8bit/val/{CITY}/{FRAME}_leftImg8bit.png"))
    ids = np.array(Image.open(source / f"gtFine/val/{CITY}/{FRAME}_gtFine_labelIds.png"))
    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
    Image.fromarray(rgb).save(images / f"{FRAME}_leftImg8bit.png")
    Image.fromarray(ids).save(labels / f"{FRAME}_gtFine_labelIds.png")
    return root


@pytest.fixture(scope="module")
def module(fixtures_root: Path) -> SourceOnlyModule:
    """A tiny U-Net fitted for a few steps on the frame, so that it predicts several classes
    (a one-class prediction would make the comparison meaningless)."""
    torch.manual_seed(0)
    module = SourceOnlyModule(arch="tiny_unet", num_classes=19)
    small = preset("cityscapes_val_dacs", resize=(128, 256))
    item = Cityscapes(fixtures_root / "cityscapes_mini", split="val", transform=small)[0]
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-2)
    module.train()
    for _ in range(25):
        logits = module.model(item["image"][None])
        loss = cross_entropy(logits, item["mask"][None], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


def _compare(module: SourceOnlyModule, root: Path, tmp: Path) -> dict[str, object]:
    """Validate and predict on ``root``'s val split, evaluate the PNGs officially."""
    dataset = Cityscapes(root, split="val", transform=preset("cityscapes_val"), return_meta=True)
    trainer = _trainer()
    trainer.validate(module, dataloaders=DataLoader(dataset, batch_size=1), verbose=False)
    module_miou = float(trainer.callback_metrics["val/mIoU"])
    module_per_class = module.last_iou["val"].double()

    predictions_dir = tmp / "predictions"
    trainer = _trainer(callbacks=[CityscapesPredictionWriter(predictions_dir)])
    trainer.predict(module, dataloaders=DataLoader(dataset, batch_size=1), return_predictions=False)
    ground_truths = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [
        predictions_dir / f"{gt.name.removesuffix('_gtFine_labelIds.png')}_pred_labelIds.png"
        for gt in ground_truths
    ]
    scores = _official_scores(predictions, ground_truths, tmp)
    names = [official_labels.trainId2label[t].name for t in range(19)]
    return {
        "module_miou": module_miou,
        "module_per_class": module_per_class,
        "official_miou": 100.0 * scores["averageScoreClasses"],
        "official_per_class": torch.tensor([100.0 * scores["classScores"][n] for n in names]),
        "prediction": np.array(Image.open(predictions[0])),
        "label": np.array(Image.open(ground_truths[0])),
    }


def _assert_agree(result: dict[str, object]) -> None:
    prediction, label = result["prediction"], result["label"]
    assert prediction.shape == label.shape  # full resolution (the evaluator checks it too)
    assert len(np.unique(prediction)) >= 3, "the model must predict several classes"
    module_per_class, official_per_class = result["module_per_class"], result["official_per_class"]
    # Same classes without a defined IoU (absent from label and prediction), same values.
    assert torch.equal(module_per_class.isnan(), official_per_class.isnan())
    defined = ~official_per_class.isnan()
    assert torch.allclose(module_per_class[defined], official_per_class[defined], atol=1e-4)
    assert int((official_per_class[defined] > 0).sum()) >= 3  # several classes really scored
    assert math.isclose(result["module_miou"], result["official_miou"], abs_tol=1e-4)


# ---------------------------------------------------------------------------------- tests
@pytest.mark.fit
def test_official_evaluation_matches_val_miou_on_the_fixture(
    module: SourceOnlyModule, fixtures_root: Path, tmp_path: Path
):
    root = tmp_path / "cityscapes"
    shutil.copytree(fixtures_root / "cityscapes_mini", root)
    result = _compare(module, root, tmp_path)
    assert result["label"].shape == (128, 256)
    _assert_agree(result)


@pytest.mark.fit
def test_official_evaluation_matches_val_miou_at_native_resolution(
    module: SourceOnlyModule, fixtures_root: Path, tmp_path: Path
):
    root = _upscaled_copy(fixtures_root / "cityscapes_mini", tmp_path / "cityscapes")
    result = _compare(module, root, tmp_path)
    assert result["label"].shape == (1024, 2048)
    _assert_agree(result)


def test_protocols_on_the_fixture(fixtures_root: Path):
    root = fixtures_root / "cityscapes_mini"
    full = Cityscapes(root, split="val", transform=preset("cityscapes_val"))[0]
    dacs = Cityscapes(root, split="val", transform=preset("cityscapes_val", protocol="dacs"))[0]
    assert full["image"].shape == dacs["image"].shape == (3, 512, 1024)
    assert torch.equal(full["image"], dacs["image"])
    assert full["mask"].shape == (128, 256)  # the label's own resolution
    assert dacs["mask"].shape == (512, 1024)  # nearest-resized with the image (DACS)
