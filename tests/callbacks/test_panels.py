from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_uda.callbacks import SegmentationPanels
from lightning_uda.callbacks.panels import denormalize
from lightning_uda.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_uda.methods import DACSModule

from ..methods.helpers import cpu_trainer, tiny_module_kwargs, toy_datamodule


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
    trainer.fit(module, datamodule=toy_datamodule())
    assert "val/mIoU" in trainer.callback_metrics

    plain = cpu_trainer(tmp_path, max_steps=1, callbacks=[SegmentationPanels(every_n_steps=1)])
    plain.fit(DACSModule(**tiny_module_kwargs()), datamodule=toy_datamodule())
