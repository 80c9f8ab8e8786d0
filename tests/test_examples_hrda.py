"""The HRDA and MIC-on-HRDA recipes: what --print-recipe resolves, and a 1-step run of each in
both examples on real-format files (slow)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers.examples import FRAME, gta_and_cityscapes, load_example

METHODS = ("hrda", "mic_hrda")


@pytest.fixture(scope="module")
def common():
    return load_example("_common")


def _print_recipe(common, *argv: str, source: str = "gta5") -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.run(common.parse_args("x", [*argv, "--print-recipe"]), source=source)
    text = out.getvalue()
    return yaml.safe_load(text), "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))


def _transform(config: dict, split: str) -> dict:
    if split == "unlabelled":
        return config["checkpoints"]["unlabelled"]["init_args"]["transform"]["init_args"]
    return config["data"]["init_args"][split]["init_args"]["transform"]["init_args"]


@pytest.mark.parametrize("method", METHODS)
def test_recipes_are_hrdas_and_print_the_published_figures(common, method):
    for source, frame in (("gta5", [720, 1280]), ("synthia", [760, 1280])):
        config, header = _print_recipe(common, "--method", method, source=source)
        model = config["model"]["init_args"]
        assert config["model"]["class_path"] == "lightning_uda.methods.HRDAModule"
        assert (model["arch"], model["encoder"]) == ("hrda", "mit_b5")
        assert model["model_kwargs"]["detail_size"] == [512, 512]
        assert (model["hr_loss_weight"], model["lr_loss_weight"]) == (0.1, 0.0)
        assert model["pseudo_label_crop"] == [0, 0]
        assert (model["inference"], model["slide_window"], model["slide_stride"]) == (
            "slide",
            [1024, 1024],
            [512, 512],
        )
        # the HR frames: each data layer's frame ×2 (GTA5 2560×1440, SYNTHIA 2560×1520, CS
        # 2048×1024), 1024² crops, margins of the full target frame, full-resolution evaluation
        source_t, target_t = _transform(config, "source"), _transform(config, "target")
        assert source_t["resize"] == frame and source_t["resize_scale"] == 2.0
        assert target_t["resize"] == [512, 1024] and target_t["resize_scale"] == 2.0
        assert source_t["crop"] == target_t["crop"] == [1024, 1024]
        assert target_t["pseudo_label_margins"] == [30, 240, 30, 30]
        assert _transform(config, "val")["resize"] == [1024, 2048]
        assert _transform(config, "unlabelled")["resize"] == [1024, 2048]
        assert config["data"]["init_args"]["rare_class_sampling"]["min_crop_ratio"] == 2.0
        if method == "mic_hrda":
            assert (model["masked_consistency_weight"], model["mask_block_size"]) == (1.0, 64)
            assert "75.9" in header and "67.3 (mIoU16, 16" in header
        else:
            assert model.get("masked_consistency_weight", 0) == 0
            assert "73.8" in header and "65.8 (mIoU16, 16 classes)" in header
        assert "# Initial weights: mit_b5.pth" in header


def _synthia(root: Path, fixtures: Path) -> None:
    """``root/synthia`` with 2 frames: the fixture image and a 16-bit label (id in R)."""
    mini = fixtures / "cityscapes_mini"
    (root / "synthia" / "RGB").mkdir(parents=True)
    (root / "synthia" / "GT" / "LABELS").mkdir(parents=True)
    raw = np.random.default_rng(0).choice([1, 2, 3, 4, 5, 8, 10], size=(128, 256))
    label = np.zeros((128, 256, 3), dtype=np.uint16)  # BGR for OpenCV: the id in R
    label[..., 2] = raw
    for i in range(2):
        shutil.copy(
            mini / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png",
            root / "synthia" / "RGB" / f"000000{i}.png",
        )
        assert cv2.imwrite(str(root / "synthia" / "GT" / "LABELS" / f"000000{i}.png"), label)


#: Sizes shrunk so that one CPU step takes seconds: the recipe's 1024² crops, 512² detail
#: windows and full-resolution evaluation become 64², 32² and 64×128 (the rest is the recipe's).
SHRUNK = {
    "data.init_args.source.init_args.transform.init_args.crop": [64, 64],
    "data.init_args.target.init_args.transform.init_args.crop": [64, 64],
    "model.init_args.model_kwargs": {"head": "daformer", "detail_size": [32, 32]},
}


@pytest.mark.fit
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("example", ["gta_to_cityscapes", "synthia_to_cityscapes"])
def test_one_step_on_real_format_files(
    common, tmp_path, fixtures_root, monkeypatch, example, method
):
    source = "gta5" if example.startswith("gta") else "synthia"
    gta_and_cityscapes(tmp_path / "data", fixtures_root)
    if source == "synthia":
        _synthia(tmp_path / "data", fixtures_root)
    ran: list[list[str]] = []
    cli = common._cli

    def shrunk_cli(command: list[str], **kwargs) -> None:
        extra = [f"--{k}={json.dumps(v)}" for k, v in SHRUNK.items()]
        ran.append([*command, *extra])
        cli(ran[-1], **kwargs)

    monkeypatch.setattr(common, "_cli", shrunk_cli)
    args = common.parse_args(
        "x",
        [
            "--data-root", str(tmp_path / "data"), "--method", method, "--encoder", "mit_b0",
            "--from-scratch", "--accelerator", "cpu", "--max-steps", "1", "--val-every", "1",
            "--num-workers", "0", "--output", str(tmp_path / "out"), "--eval-size", "64", "128",
            "--slide-window", "64", "64", "--slide-stride", "32", "32", "--log-every", "1",
            "--class-stats", str(tmp_path / "stats.npz"),
        ],
    )  # fmt: skip
    common.run(args, source=source)
    assert ran and f"methods/{method}.yaml" in " ".join(ran[0])
    run = tmp_path / "out" / f"{source}2cityscapes-{method}"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = run.rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    losses = {"train/loss_source", "train/loss_mixed", "val/mIoU"}
    if method == "mic_hrda":
        losses.add("train/loss_masked")
    assert losses <= set(header)
    if source == "synthia":
        assert "val/mIoU16" in header and "val/mIoU13" in header
