from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch.utils.data import DataLoader

from lightning_uda.callbacks import CityscapesPredictionWriter, train_ids_to_label_ids
from lightning_uda.data import CITYSCAPES_LABELS, Cityscapes
from lightning_uda.methods import SourceOnlyModule

FRAME = "frankfurt_000000_000294"


def test_train_ids_map_back_to_official_label_ids(fixtures_root):
    gt = fixtures_root / "cityscapes_mini" / "gtFine" / "val" / "frankfurt"
    train_ids = np.array(Image.open(gt / f"{FRAME}_gtFine_labelTrainIds.png"))
    label_ids = train_ids_to_label_ids(torch.from_numpy(train_ids))
    # independent table: the official (name, id, train_id) rows with a real train id
    official = {lab.train_id: lab.id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 19}
    for train_id, label_id in official.items():
        assert np.all(label_ids[train_ids == train_id] == label_id), train_id
    assert np.all(label_ids[train_ids == 255] == 0)  # void → "unlabeled"
    assert label_ids.dtype == np.uint8


@pytest.mark.fit
def test_predict_writes_full_resolution_label_id_pngs(fixtures_root, tmp_path):
    dataset = Cityscapes(
        fixtures_root / "cityscapes_mini", split="val", transform="cityscapes_val", return_meta=True
    )
    module = SourceOnlyModule(num_classes=19, arch="tiny_unet")
    writer = CityscapesPredictionWriter(tmp_path / "preds")
    trainer = Trainer(
        accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False
    )
    trainer.predict(module, dataloaders=DataLoader(dataset, batch_size=1), return_predictions=False)
    written = sorted((tmp_path / "preds").iterdir())
    assert [p.name for p in written] == [f"{FRAME}_pred_labelIds.png"]
    out = np.array(Image.open(written[0]))
    assert out.shape == (128, 256)  # the image's size on disk, not the 512×1024 network input
    valid_label_ids = {lab.id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 19}
    assert set(np.unique(out).tolist()) <= valid_label_ids


@pytest.mark.fit
def test_acdc_predictions_are_train_ids_named_like_their_images(fixtures_root, tmp_path):
    from lightning_uda.callbacks import BenchmarkPredictionWriter
    from lightning_uda.data.acdc import ACDC
    from tests.helpers.trees import acdc_tree, frame

    rgb, ids, _ = frame(fixtures_root)
    root = acdc_tree(tmp_path / "acdc", rgb, ids, conditions=("night",))
    test = ACDC(root, split="test", conditions="night", return_mask=False, return_meta=True)
    torch.manual_seed(0)
    module = SourceOnlyModule(num_classes=19, arch="tiny_unet")
    writer = BenchmarkPredictionWriter(tmp_path / "preds", benchmark="acdc")
    trainer = Trainer(
        accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False
    )
    outputs = trainer.predict(module, dataloaders=DataLoader(test, batch_size=1))
    written = sorted((tmp_path / "preds").iterdir())
    assert [p.name for p in written] == ["GOPR0475_frame_000040_rgb_anon.png"]
    out = np.array(Image.open(written[0]))
    assert out.shape == (128, 256)
    assert (out == outputs[0]["pred"][0].numpy()).all()  # train ids as predicted, not label ids
    with pytest.raises(ValueError, match=r"unknown benchmark 'kitti'.*'acdc', 'darkzurich'"):
        BenchmarkPredictionWriter(tmp_path, benchmark="kitti")
