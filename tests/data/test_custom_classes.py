"""Own datasets: class files, the label-id → train-id mapping, IoU with absent classes, and a
2-class dataset trained, evaluated and predicted end to end from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lightning_uda.cli import main as cli_main
from lightning_uda.data import SegmentationFolder
from lightning_uda.data.class_file import ClassFileError, load_class_file
from lightning_uda.methods import SourceOnlyModule
from lightning_uda.predict import predict

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
FRAME = "frankfurt_000000_000294"

FIVE = """
classes:
  - {name: sky, color: [10, 20, 30], ids: [3]}
  - {name: tree, ids: [5, 6]}
  - {name: house, color: [200, 0, 0], ids: [9]}
  - {name: car, color: [0, 0, 200], ids: [12]}
  - {name: boat, color: [0, 200, 0], ids: [13]}
void_ids: [0]
"""


def test_class_file_yaml_and_json_give_the_same_classes(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(FIVE)
    (tmp_path / "c.json").write_text(json.dumps(yaml.safe_load(FIVE)))
    for name in ("c.yaml", "c.json"):
        spec = load_class_file(tmp_path / name)
        assert spec.names == ["sky", "tree", "house", "car", "boat"]
        assert spec.label_map == {3: 0, 5: 1, 6: 1, 9: 2, 12: 3, 13: 4, 0: 255}
        assert spec.palette.shape == (5, 3) and spec.palette.dtype == np.uint8
        assert spec.palette[0].tolist() == [10, 20, 30] and spec.palette[4].tolist() == [0, 200, 0]
        assert len({tuple(c) for c in spec.palette.tolist()}) == 5  # generated colour differs


def test_class_file_without_ids_means_train_id_masks(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("classes: [background, crack]\n")
    spec = load_class_file(tmp_path / "c.yaml")
    assert spec.names == ["background", "crack"] and spec.label_map is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: []", "non-empty 'classes' list"),
        ("classes: [{color: [1, 2, 3]}]", r"classes\[0\] needs a 'name'"),
        ("classes: [a, a]", "'a' appears twice"),
        ("classes: [{name: a, ids: [1]}, {name: b, ids: [1]}]", "raw value 1 is listed for both"),
        ("classes: [{name: a, ids: [1]}, b]", r"\['b'\] do not"),
        ("classes: [{name: a, color: [1, 2]}]", r"classes\[0\].color must be"),
        ("classes: [{name: a, ids: [300]}]", "0..255"),
        ("classes: [{name: a, ids: [1]}]\nvoid_ids: [1]", "both void and 'a'"),
        ("classes: [a]\nvoid_ids: [3]", "void_ids needs"),
        ("classes: [{name: a, colour: [1, 2, 3]}]", "unknown keys"),
    ],
)
def test_class_file_errors_name_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClassFileError, match=message) as info:
        load_class_file(path)
    assert str(path) in str(info.value)


def _folder(root: Path, masks: list[np.ndarray]) -> tuple[Path, Path]:
    images, labels = root / "images", root / "masks"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i, mask in enumerate(masks):
        Image.fromarray(np.full((*mask.shape, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(labels / f"{i}.png")
    return images, labels


def test_segmentation_folder_maps_raw_values_with_the_class_file(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(FIVE)
    raw = np.array([[3, 5, 6], [9, 12, 13], [0, 3, 3]])
    images, masks = _folder(tmp_path / "d", [raw])
    dataset = SegmentationFolder(images, masks, class_file=tmp_path / "c.yaml")
    assert dataset.classes == ["sky", "tree", "house", "car", "boat"]
    assert dataset[0]["mask"].tolist() == [[0, 1, 1], [2, 3, 4], [255, 0, 0]]
    assert dataset.palette[2].tolist() == [200, 0, 0]
    with pytest.raises(ValueError, match="leave classes unset"):
        SegmentationFolder(images, masks, class_file=tmp_path / "c.yaml", classes=["x"])


class ConstantSegmentor(nn.Module):
    """Predicts class ``label`` everywhere (logits 1 there, 0 elsewhere)."""

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.num_classes, self.label = num_classes, label
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = images.new_zeros((images.shape[0], self.num_classes, *images.shape[-2:]))
        logits[:, self.label] = self.scale
        return logits


@pytest.mark.fit
@pytest.mark.parametrize("num_classes", [2, 5])
def test_a_class_absent_from_labels_and_predictions_is_left_out_of_the_mean(
    tmp_path: Path, num_classes: int
):
    """Labels hold classes 0 and 1 (1 only for 5 classes) on 4×4 images, plus void; the model
    predicts 0 everywhere. Hand-computed: with 2 classes, labels are all 0 (class 1 absent from
    both), IoU(0) = 1 and mIoU = 100, not 50 and not NaN. With 5 classes, labels hold 12 pixels
    of 0 and 3 of 1 (one void): IoU(0) = 12/15, IoU(1) = 0, classes 2–4 absent from both:
    mIoU = (80 + 0) / 2 = 40."""
    mask = np.zeros((4, 4), np.int64)
    mask[0, 0] = 255
    if num_classes == 5:
        mask[1:4, 3] = 1
    names = [f"c{i}" for i in range(num_classes)]
    images, masks = _folder(tmp_path / "d", [mask])
    dataset = SegmentationFolder(images, masks, classes=names)
    module = SourceOnlyModule(
        model=ConstantSegmentor(num_classes, label=0), num_classes=num_classes, class_names=names
    )
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    metrics = trainer.validate(module, DataLoader(dataset, batch_size=1), verbose=False)[0]
    iou = module.last_iou["val"]
    if num_classes == 2:
        assert iou[0] == pytest.approx(100.0) and math.isnan(iou[1])
        assert metrics["val/mIoU"] == pytest.approx(100.0)
    else:
        assert iou[0] == pytest.approx(80.0) and iou[1] == pytest.approx(0.0)
        assert all(math.isnan(v) for v in iou[2:].tolist())
        assert metrics["val/mIoU"] == pytest.approx(40.0)
    assert "val/IoU/c4" not in metrics  # no NaN logged


def _binary_dataset(fixtures_root: Path, root: Path) -> None:
    """Road / not-road from the fixture frame in the layout of custom/data.yaml."""
    cs = fixtures_root / "cityscapes_mini"
    rgb = np.array(Image.open(cs / f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))
    ids = np.array(Image.open(cs / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png"))
    for split, images in (("source", [rgb, rgb[:, ::-1]]), ("val", [rgb]), ("target", [rgb])):
        (root / split / "images").mkdir(parents=True)
        for i, image in enumerate(images):
            if split == "target":
                image = (image.astype(np.float32) * 0.7).astype(np.uint8)  # a darker domain
            Image.fromarray(np.ascontiguousarray(image)).save(root / split / "images" / f"{i}.png")
            if split != "target":
                (root / split / "masks").mkdir(exist_ok=True)
                label = ids if i == 0 else ids[:, ::-1]
                Image.fromarray(np.ascontiguousarray(label)).save(
                    root / split / "masks" / f"{i}.png"
                )


@pytest.mark.fit
def test_two_class_dataset_end_to_end_from_the_cli(fixtures_root: Path, tmp_path: Path, capsys):
    root = tmp_path / "custom"
    _binary_dataset(fixtures_root, root)
    classes = RECIPES / "custom" / "classes.yaml"
    data = "--data.init_args"
    roots = [
        f"{data}.source.init_args.images={root / 'source/images'}",
        f"{data}.source.init_args.masks={root / 'source/masks'}",
        f"{data}.target.init_args.images={root / 'target/images'}",
        f"{data}.val.init_args.images={root / 'val/images'}",
        f"{data}.val.init_args.masks={root / 'val/masks'}",
        f"--checkpoints.unlabelled.init_args.images={root / 'target/images'}",
        *(
            f"{key}.init_args.class_file={classes}"
            for key in (
                f"{data}.source",
                f"{data}.target",
                f"{data}.val",
                "--checkpoints.unlabelled",
            )
        ),
    ]
    small = [
        "--model.init_args.arch=tiny_unet",
        "--model.init_args.encoder=null",
        "--model.init_args.lr=1e-2",
        f"{data}.source.init_args.transform.init_args.crop=[64, 64]",
        f"{data}.target.init_args.transform.init_args.crop=[64, 64]",
        f"{data}.num_workers=0",
        "--checkpoints.num_workers=0",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=4",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoints.dirpath={tmp_path / 'ckpts'}",
    ]
    layers = ["base.yaml", "custom/data.yaml", "methods/dacs.yaml", "custom/model.yaml"]
    configs = [a for layer in layers for a in ("--config", str(RECIPES / layer))]
    cli_main(["fit", *configs, *roots, *small])
    checkpoint = tmp_path / "ckpts" / "last.ckpt"
    assert checkpoint.is_file()
    capsys.readouterr()
    cli_main(["validate", *configs, *roots, *small, f"--ckpt_path={checkpoint}"])
    assert "val/mIoU" in capsys.readouterr().out
    # predict with the class file's palette: only its two colours appear
    written, skipped = predict(
        checkpoint,
        [str(root / "val" / "images")],
        tmp_path / "pred",
        trainer_kwargs={"enable_progress_bar": False, "accelerator": "cpu"},
    )
    assert len(written) == 1 and skipped == []
    color = np.array(Image.open(tmp_path / "pred" / "0_color.png")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(color, axis=0).tolist()} <= {(0, 0, 0), (128, 64, 128)}
    train_ids = np.array(Image.open(tmp_path / "pred" / "0_trainIds.png"))
    assert train_ids.shape == (128, 256) and set(np.unique(train_ids).tolist()) <= {0, 1}
