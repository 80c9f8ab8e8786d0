from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from lightning_uda.callbacks import SegmentationPanels
from lightning_uda.callbacks.panels import denormalize, wandb_class_labels, wandb_mask
from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.methods import DACSModule
from tests.helpers.methods import (
    CLASSES,
    NUM_CLASSES,
    cpu_trainer,
    tiny_module_kwargs,
    toy_datamodule,
)
from tests.helpers.wandb_offline import STEP_WARNING, OfflineRun


def test_denormalize_inverts_imagenet_normalisation():
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = denormalize((rgb - mean) / std)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 128, 255]


def test_denormalize_undoes_the_caffe_space():
    # hand-made: pixel (R, G, B) = (10, 128, 250) is stored as BGR minus the Caffe mean
    caffe_mean_bgr = (104.00698793, 116.66876762, 122.67891434)
    bgr = torch.tensor([250.0, 128.0, 10.0]) - torch.tensor(caffe_mean_bgr)
    out = denormalize(bgr.view(1, 3, 1, 1), "caffe")
    assert out[0, 0, 0].tolist() == [10, 128, 250]


@pytest.mark.fit
def test_panels_run_with_a_wandb_logger_and_do_nothing_without(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # offline no-op run: nothing is sent
    module = DACSModule(**tiny_module_kwargs())
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    trainer = cpu_trainer(
        tmp_path,
        max_steps=2,
        logger=logger,
        callbacks=[SegmentationPanels(every_n_steps=1, max_images=2)],
        limit_val_batches=1,
        val_check_interval=2,
    )
    try:
        trainer.fit(module, datamodule=toy_datamodule())
    finally:
        wandb.finish()  # else the next WandbLogger would reuse this run
    assert "val/mIoU" in trainer.callback_metrics

    plain = cpu_trainer(tmp_path, max_steps=1, callbacks=[SegmentationPanels(every_n_steps=1)])
    plain.fit(DACSModule(**tiny_module_kwargs()), datamodule=toy_datamodule())


# ---------------------------------------------------------------------- offline W&B runs read back
def _fit_offline(tmp_path, monkeypatch, **trainer_kwargs) -> OfflineRun:
    """Fit a tiny DACS module for 6 steps (validating after steps 2, 4 and 6, a mixed-batch
    panel every 2 steps) with an offline W&B run under ``tmp_path``, and read the run back."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # WandbLogger(offline=True) also sets it
    monkeypatch.setenv("WANDB_SILENT", "false")
    if wandb.run is not None:  # left open by an earlier test: WandbLogger would reuse it
        wandb.finish()
    # mode= too: wandb keeps the settings of its first run in the process (e.g. "disabled")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, mode="offline")
    trainer = cpu_trainer(
        tmp_path,
        max_steps=6,
        logger=logger,
        callbacks=[SegmentationPanels(every_n_steps=2, max_images=2)],
        limit_val_batches=1,
        val_check_interval=2,
        **trainer_kwargs,
    )
    try:
        trainer.fit(DACSModule(**tiny_module_kwargs()), datamodule=toy_datamodule())
    finally:
        wandb.finish()
    _wait_for_the_log(tmp_path)
    return OfflineRun.load(tmp_path)


def _wait_for_the_log(save_dir, timeout_s: float = 30.0) -> None:
    """Wait until the offline run's transaction log ends with its ``exit`` record.

    W&B writes the log from its own service process; on a loaded machine the last records (the
    last validation's panels) were seen arriving after ``wandb.finish()`` returned, so a test
    that read the file at once missed them now and then. The ``exit`` record is written last.
    """
    import time

    from tests.helpers.wandb_offline import read_records

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = list(save_dir.glob("wandb/offline-run-*/run-*.wandb"))
        try:
            kinds = [r.WhichOneof("record_type") for log in logs for r in read_records(log)]
        except ValueError:  # a chunk still being written
            kinds = []
        if kinds and kinds[-1] == "exit":
            return
        time.sleep(0.25)


@pytest.mark.parametrize("log_every_n_steps", [1, None], ids=["log_every_step", "default"])
@pytest.mark.fit
def test_every_panel_reaches_the_offline_run(tmp_path, monkeypatch, capfd, log_every_n_steps):
    kwargs = {} if log_every_n_steps is None else {"log_every_n_steps": log_every_n_steps}
    run = _fit_offline(tmp_path, monkeypatch, **kwargs)
    console = capfd.readouterr()

    mixed = run.rows_with("train/mixed_batch")
    examples = run.rows_with("val/examples")
    charts = run.rows_with("val/IoU_per_class_table")  # the table behind the bar chart
    confusion = run.rows_with("val/confusion_matrix")
    warnings = sum(text.count(STEP_WARNING) for text in (run.output, console.out, console.err))
    found = {
        "train/mixed_batch": len(mixed),
        "val/examples": len(examples),
        "val/IoU_per_class": len(charts),
        "val/confusion_matrix": len(confusion),
        "past-step warnings": warnings,
    }
    assert found == {
        "train/mixed_batch": 3,  # after steps 2, 4, 6
        "val/examples": 3,
        "val/IoU_per_class": 3,
        "val/confusion_matrix": 3,
        "past-step warnings": 0,
    }
    assert "val/IoU_per_class" in run.config["_wandb"]["visualize"]  # the chart's spec
    for row in mixed + examples:
        for key in ("train/mixed_batch", "val/examples"):
            if key in row:
                assert row[key]["_type"] == "images/separated" and row[key]["count"] == 2
    for row in charts:
        assert row["val/IoU_per_class_table"]["_type"] == "table-file"

    # each panel sits on Lightning's x-axis at the step of the scalars it belongs to
    val_steps = [row["trainer/global_step"] for row in run.rows_with("val/mIoU")]
    assert len(val_steps) == 3
    assert [row["trainer/global_step"] for row in examples] == val_steps
    assert [row["trainer/global_step"] for row in charts] == val_steps
    assert [row["trainer/global_step"] for row in mixed] == [1, 3, 5]  # batches 2, 4, 6


@pytest.mark.fit
def test_ignore_label_reaches_the_offline_run_under_its_own_id(tmp_path, monkeypatch):
    run = _fit_offline(tmp_path, monkeypatch)
    labels = run.config["_wandb"]["mask/class_labels"]
    expected = {"0": "background", "1": "square", "2": "bar", "3": "ignore"}
    for key in ("val/examples", "train/mixed_batch"):
        for mask in ("ground_truth", "prediction") if key == "val/examples" else ("mixed_label",):
            assert labels[f"{key}_wandb_delimeter_{mask}"]["value"] == expected
    # every toy image has an ignored pixel at (0, 0): its ground-truth mask shows class 3 there
    (row, *_) = run.rows_with("val/examples")
    for masks in row["val/examples"]["all_masks"]:
        stored = np.asarray(Image.open(run.directory / "files" / masks["ground_truth"]["path"]))
        assert stored[0, 0] == NUM_CLASSES
        assert stored.max() == NUM_CLASSES and set(np.unique(stored)) <= {0, 1, 2, 3}


def test_masks_map_the_ignore_label_to_a_class_id_that_fits_int8():
    mask = torch.tensor([[0, 1, 2], [255, 255, 1]])
    labels = wandb_class_labels(CLASSES)
    assert labels == {0: "background", 1: "square", 2: "bar", 3: "ignore"}
    data = wandb_mask(mask, num_classes=3)
    assert data.dtype == np.uint8 and data.tolist() == [[0, 1, 2], [3, 3, 1]]
    assert np.array_equal(data.astype(np.int8), data)  # what W&B stores is the same ids

    image = wandb.Image(
        np.zeros((2, 3, 3), dtype=np.uint8),
        masks={"ground_truth": {"mask_data": data, "class_labels": labels}},
    )
    stored = np.asarray(Image.open(image._masks["ground_truth"]._path))
    assert stored.tolist() == [[0, 1, 2], [3, 3, 1]]
    assert image._masks["ground_truth"]._val["class_labels"][3] == "ignore"


def test_normalized_confusion_and_heatmap_by_hand():
    from lightning_uda.callbacks.panels import confusion_heatmap, normalized_confusion

    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    normalized = normalized_confusion(confusion)
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    torch.testing.assert_close(normalized, expected.double())
    picture = confusion_heatmap(normalized, cell=2)
    assert picture.shape == (6, 6, 3) and picture.dtype == np.uint8
    assert picture[0, 4].tolist() == [255, 255, 255]  # 0: white
    assert picture[4, 4].tolist() == [131, 151, 181]  # 0.5: half-way to dark blue


@pytest.mark.fit
def test_validation_keeps_the_confusion_matrix_of_the_split():
    from torch.utils.data import DataLoader

    from lightning_uda.methods import SourceOnlyModule
    from tests.helpers.methods import OneHotModel

    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 0, 1]])
    label = torch.tensor([[0, 1, 1, 1, 2, 0, 255, 1]])
    image = pred.float().view(1, 1, 1, 8).expand(1, 3, 1, 8)
    data = [{"image": image[0], "mask": label.view(1, 8)}]
    module = SourceOnlyModule(OneHotModel(3), num_classes=3, class_names=["a", "b", "c"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(module, dataloaders=DataLoader(data, batch_size=1))
    # rows = labels, columns = predictions, the void pixel left out
    expected = torch.tensor([[1, 0, 1], [1, 3, 0], [0, 0, 1]])
    assert torch.equal(module.last_confusion["val"].long(), expected)
