"""``lightning-uda predict`` on images no one prepared for it.

A real checkpoint (a TinyUNet fitted on the fixture frame and saved through the Trainer) predicts
the frame upscaled to 2048×1024, odd sizes, a JPEG, a grey-scale and an RGBA image, and bad
inputs beside good ones. Outputs are checked against independent facts: the official Cityscapes
label table (``cityscapesscripts``) for colours and label ids, the overlay's closed form, the
softmax bound ``max p >= 1/C``, and the labels of the frame.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_uda.cli import main as cli_main
from lightning_uda.predict import InferenceSettings, predict
from lightning_uda.run_info import (
    RUN_INFO_KEY,
    CheckpointInfo,
    NotALibraryCheckpointError,
)
from tests.helpers.checkpoints import CITY, FRAME, TRAIN_CROP, fixture_checkpoint

pytestmark = pytest.mark.fit  # every test runs Trainer.predict (the fixture Trainer.fit)

_QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def checkpoint(fixtures_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixture_checkpoint(fixtures_root, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def frame(fixtures_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fixture frame (256×128 RGB) and its train-id label."""
    root = fixtures_root / "cityscapes_mini"
    rgb = np.array(Image.open(root / f"leftImg8bit/val/{CITY}/{FRAME}_leftImg8bit.png"))
    ids = np.array(Image.open(root / f"gtFine/val/{CITY}/{FRAME}_gtFine_labelTrainIds.png"))
    return rgb, ids


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_checkpoint_records_what_predict_needs(checkpoint: Path):
    info = CheckpointInfo.from_file(checkpoint)
    assert set(info.recorded) >= {"class_names", "palette", "train_crop", "eval_scale"}
    assert info.train_crop == TRAIN_CROP
    assert info.eval_scale == 0.5  # 64×128 network input for 128×256 labels
    assert info.is_cityscapes and info.normalization.name == "imagenet"


def test_outputs_of_a_native_size_frame(checkpoint: Path, frame, tmp_path: Path):
    labels_table = pytest.importorskip("cityscapesscripts.helpers.labels")
    rgb, label = frame
    big = cv2.resize(rgb, (2048, 1024), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(big).save(tmp_path / "big.png")
    written, skipped = predict(
        checkpoint,
        [str(tmp_path / "big.png")],
        tmp_path / "out",
        label_ids=True,
        confidence=True,
        scale=1 / 16,  # the network saw the frame at 64×128
        trainer_kwargs=_QUIET,
    )
    assert written == [tmp_path / "big.png"] and skipped == []
    out = tmp_path / "out"
    train_ids = _read(out / "big_trainIds.png")
    assert train_ids.shape == (1024, 2048) and train_ids.dtype == np.uint8
    assert train_ids.max() < 19
    # colours and label ids from the official table, not the library's
    official_color = np.array([labels_table.trainId2label[t].color for t in range(19)], np.uint8)
    official_id = np.array([labels_table.trainId2label[t].id for t in range(19)], np.uint8)
    color = _read(out / "big_color.png")
    assert np.array_equal(color, official_color[train_ids])
    assert np.array_equal(_read(out / "big_labelIds.png"), official_id[train_ids])
    # overlay: the closed form with alpha 0.5, up to rounding
    expected = 0.5 * big.astype(np.float64) + 0.5 * color.astype(np.float64)
    assert np.abs(_read(out / "big_overlay.png") - expected).max() <= 0.5 + 1e-9
    # the top softmax probability of 19 classes is at least 1/19
    confidence = _read(out / "big_confidence.png")
    assert confidence.shape == (1024, 2048) and confidence.min() >= np.floor(255 / 19)
    # the model learned the frame: most labelled pixels are right at 8× the label resolution
    label_big = cv2.resize(label, (2048, 1024), interpolation=cv2.INTER_NEAREST)
    valid = label_big != 255
    assert (train_ids[valid] == label_big[valid]).mean() > 0.6
    assert len(np.unique(train_ids)) >= 3


def test_odd_sizes_grey_and_rgba(checkpoint: Path, frame, tmp_path: Path):
    rgb, _ = frame
    inputs = tmp_path / "in"
    inputs.mkdir()
    odd = cv2.resize(rgb, (1001, 517), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(odd).save(inputs / "odd.jpg", quality=95)
    small = cv2.resize(rgb, (97, 61), interpolation=cv2.INTER_AREA)
    Image.fromarray(small).save(inputs / "small.png")
    grey = np.array(Image.fromarray(small).convert("L"))
    Image.fromarray(grey).save(inputs / "grey.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(inputs / "grey_as_rgb.png")
    alpha = np.full((*rgb.shape[:2], 1), 77, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(inputs / "rgba.png")
    Image.fromarray(rgb).save(inputs / "rgb.png")
    written, skipped = predict(checkpoint, [str(inputs)], tmp_path / "out", trainer_kwargs=_QUIET)
    assert skipped == [] and len(written) == 6
    out = tmp_path / "out"
    sizes = {"odd": (517, 1001), "small": (61, 97), "grey": (61, 97), "rgba": (128, 256)}
    for name, size in sizes.items():
        for kind in ("trainIds", "color", "overlay"):
            assert _read(out / f"{name}_{kind}.png").shape[:2] == size, (name, kind)
    # grey-scale is read as three equal channels; RGBA as its RGB (alpha dropped)
    assert np.array_equal(_read(out / "grey_trainIds.png"), _read(out / "grey_as_rgb_trainIds.png"))
    assert np.array_equal(_read(out / "rgba_trainIds.png"), _read(out / "rgb_trainIds.png"))


def test_bad_inputs_are_skipped_and_the_others_written(
    checkpoint: Path, frame, tmp_path: Path, capsys: pytest.CaptureFixture
):
    rgb, _ = frame
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rgb).save(inputs / "good.png")
    (inputs / "notes.png").write_text("not an image")
    data = (inputs / "good.png").read_bytes()
    (inputs / "truncated.png").write_bytes(data[: len(data) // 2])
    status = cli_main_status(
        [
            "predict",
            str(checkpoint),
            str(inputs),
            str(tmp_path / "missing.png"),
            str(tmp_path / "nothing-*.jpg"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress-bar",
            "--accelerator",
            "cpu",
        ]
    )
    assert status == 1  # something was skipped
    err = capsys.readouterr().err
    assert "notes.png: not an image" in err
    assert "truncated.png: unreadable or truncated image" in err
    assert "missing.png: no such file or folder" in err
    assert "nothing-*.jpg: pattern matched no file" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good_color.png",
        "good_overlay.png",
        "good_trainIds.png",
    ]


def cli_main_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    return int(exit_info.value.code or 0)


def test_checkpoints_of_other_libraries_are_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(NotALibraryCheckpointError, match="not a PyTorch checkpoint"):
        CheckpointInfo.from_file(text)
    bare = tmp_path / "bare.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(NotALibraryCheckpointError, match="no 'state_dict' entry"):
        CheckpointInfo.from_file(bare)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}, "hyper_parameters": {}}, foreign)
    with pytest.raises(NotALibraryCheckpointError, match="not of a lightning_uda method"):
        CheckpointInfo.from_file(foreign)
    # the command reports it and names the file
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert cli_main_status(["predict", str(foreign), str(image), "--out", str(tmp_path)]) == 2
    assert f"{foreign} is a Lightning checkpoint but not of a lightning_uda method" in (
        capsys.readouterr().err
    )


def test_checkpoint_without_run_info_still_predicts(checkpoint: Path, frame, tmp_path: Path):
    old = torch.load(checkpoint, map_location="cpu", weights_only=False)
    del old[RUN_INFO_KEY]  # as written before the entry existed
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    info = CheckpointInfo.from_file(old_path)
    assert info.recorded == () and info.train_crop == (512, 512) and info.eval_scale == 1.0
    assert info.is_cityscapes  # 19 classes: Cityscapes' names and palette
    rgb, _ = frame
    Image.fromarray(rgb).save(tmp_path / "f.png")
    written, _ = predict(
        old_path, [str(tmp_path / "f.png")], tmp_path / "out", trainer_kwargs=_QUIET
    )
    assert written and _read(tmp_path / "out" / "f_trainIds.png").shape == (128, 256)


def test_automatic_slide_beyond_the_training_crop(checkpoint: Path):
    info = CheckpointInfo.from_file(checkpoint)  # crop 64×64, scale 0.5, whole inference
    auto = InferenceSettings(info)
    assert auto.window == (64, 64) and auto.stride == (43, 43)  # ⌈2/3 · 64⌉
    assert auto.mode(128, 128) == "whole"  # 64×64 at scale 0.5: fits the crop
    assert auto.mode(128, 130) == "slide"  # 64×65
    assert auto.mode(1024, 2048) == "slide"
    assert InferenceSettings(info, inference="whole").mode(1024, 2048) == "whole"
    forced = InferenceSettings(info, inference="slide", window=(32, 48), scale=1.0)
    assert forced.mode(8, 8) == "slide" and forced.stride == (22, 32)
    with pytest.raises(ValueError, match="--window"):
        InferenceSettings(info, window=(0, 4))


def test_label_ids_need_cityscapes_classes(checkpoint: Path, tmp_path: Path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt[RUN_INFO_KEY]["class_names"] = [f"part {i}" for i in range(19)]
    renamed = tmp_path / "parts.ckpt"
    torch.save(ckpt, renamed)
    with pytest.raises(ValueError, match="--label-ids writes Cityscapes label ids"):
        predict(renamed, [str(tmp_path)], tmp_path / "out", label_ids=True)


def test_predict_folder_keeps_sub_folders(checkpoint: Path, frame, tmp_path: Path):
    rgb, _ = frame
    for city in ("a", "b"):
        (tmp_path / "in" / city).mkdir(parents=True)
        Image.fromarray(rgb[:64, :64]).save(tmp_path / "in" / city / "same.png")
    written, _ = predict(
        checkpoint, [str(tmp_path / "in")], tmp_path / "out", trainer_kwargs=_QUIET
    )
    assert len(written) == 2
    assert (tmp_path / "out" / "a" / "same_color.png").is_file()
    assert (tmp_path / "out" / "b" / "same_color.png").is_file()
    shutil.rmtree(tmp_path / "out")
