"""``lightning-uda evaluate`` against the official Cityscapes evaluation (``cityscapesscripts``).

The command's per-class IoU must equal what ``evalPixelLevelSemanticLabeling`` computes from the
label-id PNGs the command writes, on the fixture frame as shipped (256×128) and upscaled to
Cityscapes' native 2048×1024; classes absent from labels and predictions are ``n/a`` in both.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_uda.cli import main as cli_main
from lightning_uda.data.labels import CITYSCAPES_CLASSES
from lightning_uda.evaluate import evaluate, format_scores, official_scores
from lightning_uda.extras import require
from lightning_uda.run_info import RUN_INFO_KEY
from tests.helpers.checkpoints import CITY, FRAME, fixture_checkpoint

_QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def checkpoint(fixtures_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_checkpoint(fixtures_root, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _upscaled(source: Path, root: Path) -> Path:
    images, labels = root / "leftImg8bit/val" / CITY, root / "gtFine/val" / CITY
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rgb = np.array(Image.open(source / f"leftImg8bit/val/{CITY}/{FRAME}_leftImg8bit.png"))
    ids = np.array(Image.open(source / f"gtFine/val/{CITY}/{FRAME}_gtFine_labelIds.png"))
    Image.fromarray(cv2.resize(rgb, (2048, 1024), interpolation=cv2.INTER_LINEAR)).save(
        images / f"{FRAME}_leftImg8bit.png"
    )
    Image.fromarray(cv2.resize(ids, (2048, 1024), interpolation=cv2.INTER_NEAREST)).save(
        labels / f"{FRAME}_gtFine_labelIds.png"
    )
    return root


def _agree_with_official(iou: torch.Tensor, out: Path, root: Path) -> None:
    pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    official = official_scores(out, root)
    reference = torch.tensor([official["per_class"][n] for n in CITYSCAPES_CLASSES]).double()
    assert torch.equal(iou.isnan(), reference.isnan())
    defined = ~reference.isnan()
    assert int((reference[defined] > 0).sum()) >= 3  # several classes really scored
    assert torch.allclose(iou.double()[defined], reference[defined], atol=1e-4)
    assert math.isclose(float(torch.nanmean(iou.double())), official["mIoU"], abs_tol=1e-4)


@pytest.mark.fit
def test_matches_the_official_evaluation_on_the_fixture(
    checkpoint: Path, fixtures_root: Path, tmp_path: Path
):
    root = tmp_path / "cityscapes"
    shutil.copytree(fixtures_root / "cityscapes_mini", root)
    names, iou = evaluate(checkpoint, root, tmp_path / "out", trainer_kwargs=_QUIET)
    assert names == CITYSCAPES_CLASSES
    prediction = np.array(Image.open(tmp_path / "out" / f"{FRAME}_pred_labelIds.png"))
    assert prediction.shape == (128, 256)  # the label's resolution
    _agree_with_official(iou, tmp_path / "out", root)


@pytest.mark.fit
def test_matches_the_official_evaluation_at_native_resolution(
    checkpoint: Path, fixtures_root: Path, tmp_path: Path
):
    root = _upscaled(fixtures_root / "cityscapes_mini", tmp_path / "cityscapes")
    # the network sees 64×128, as in training; labels stay 2048×1024
    names, iou = evaluate(checkpoint, root, tmp_path / "out", scale=1 / 16, trainer_kwargs=_QUIET)
    prediction = np.array(Image.open(tmp_path / "out" / f"{FRAME}_pred_labelIds.png"))
    assert prediction.shape == (1024, 2048)
    _agree_with_official(iou, tmp_path / "out", root)


@pytest.mark.fit
def test_command_prints_per_class_iou(
    checkpoint: Path, fixtures_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    argv = ["evaluate", str(checkpoint), "--data-root", str(fixtures_root / "cityscapes_mini")]
    with pytest.raises(SystemExit) as status:
        cli_main([*argv, "--out", str(tmp_path / "out"), "--no-progress-bar"])
    assert status.value.code == 0
    printed = capsys.readouterr().out
    for name in CITYSCAPES_CLASSES:
        assert any(line.startswith(name) for line in printed.splitlines()), name
    assert "n/a" in printed  # the frame has no train, bus, ...: left out of the mean
    assert "mIoU" in printed and (tmp_path / "out" / f"{FRAME}_pred_labelIds.png").is_file()


def test_format_scores_leaves_absent_classes_out_of_the_mean():
    text = format_scores(["a", "b", "c"], torch.tensor([50.0, float("nan"), 25.0]))
    lines = text.splitlines()
    assert lines[2].split() == ["b", "n/a"]
    assert lines[-1].split()[:2] == ["mIoU", "37.50"]  # (50 + 25) / 2
    assert "mean over 2 of 3 classes" in lines[-1]


def test_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"pip install 'lightning_uda\[cityscapes\]'"):
        require("cityscapesscripts_not_here.x", extra="cityscapes", feature="the official eval")


def test_refuses_a_checkpoint_of_other_classes(checkpoint: Path, fixtures_root: Path, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt[RUN_INFO_KEY]["class_names"] = [f"part {i}" for i in range(19)]
    torch.save(ckpt, tmp_path / "parts.ckpt")
    with pytest.raises(ValueError, match="not the 19 Cityscapes classes"):
        evaluate(tmp_path / "parts.ckpt", fixtures_root / "cityscapes_mini", tmp_path / "out")
