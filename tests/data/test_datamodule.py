"""Tests for lightning_uda/data/datamodule.py: batch contract, cycling, determinism, resume, DDP."""

from __future__ import annotations

import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from lightning_uda.data.datamodule import UDADataModule
from lightning_uda.data.labels import CITYSCAPES_CLASSES
from lightning_uda.normalization import CAFFE, IMAGENET
from tests.helpers.data import Preempt, Recorder, read_log, stream_trainer

CLASSES = ["a", "b", "c"]
FRAME = "frankfurt_000000_000294"


class TinyDataset(Dataset):
    """``n`` items of ``size``; pixel (y, x) of item i holds ``i + (y*W + x)/100`` after a random
    crop, so a batch shows which samples and which crops were drawn."""

    def __init__(self, n: int, size: int = 6, crop: int | None = None, classes=CLASSES, masks=True):
        self.n, self.size, self.classes, self.return_mask = n, size, list(classes), masks
        self.ignore_index = 255
        steps = [A.RandomCrop(crop, crop)] if crop else []
        self.transform = A.Compose([*steps, ToTensorV2()])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        grid = np.arange(self.size * self.size, dtype=np.float32).reshape(self.size, self.size)
        image = np.repeat((i + grid / 100)[..., None], 3, axis=2)
        mask = np.full((self.size, self.size), i % len(self.classes), dtype=np.uint8)
        out = self.transform(image=image, mask=mask)
        item = {"image": out["image"].float()}
        if self.return_mask:
            item["mask"] = out["mask"].long()
        return item


def _dm(n_source=5, n_target=3, **kwargs) -> UDADataModule:
    kwargs.setdefault("num_workers", 0)
    return UDADataModule(
        source=kwargs.pop("source", TinyDataset(n_source)),
        target=kwargs.pop("target", TinyDataset(n_target)),
        val=kwargs.pop("val", TinyDataset(2)),
        **kwargs,
    )


def _stream(dm: UDADataModule, epochs: int) -> list[dict]:
    loader = dm.train_dataloader()
    batches = []
    for _ in range(epochs):
        batches += [batch for batch, _, _ in loader]
    return batches


# ---------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("monitor", [False, True])
def test_batch_contract(monitor: bool):
    dm = _dm(batch_size=2, target_batch_size=3, target_monitor_labels=monitor)
    batch = _stream(dm, 1)[0]
    assert set(batch) == {"source", "target"}
    assert set(batch["source"]) == {"image", "mask", "index"}
    assert set(batch["target"]) == ({"image", "mask", "index"} if monitor else {"image", "index"})
    assert batch["source"]["image"].dtype == torch.float32
    assert batch["source"]["image"].shape == (2, 3, 6, 6)
    assert batch["source"]["mask"].dtype == torch.int64 and batch["source"]["mask"].shape == (
        2,
        6,
        6,
    )
    assert batch["target"]["image"].shape == (3, 3, 6, 6)
    # The index key says which sample it is (image value = index).
    assert (batch["source"]["image"][:, 0, 0, 0] == batch["source"]["index"].float()).all()


def test_label_space_properties():
    dm = _dm()
    assert dm.classes == CLASSES and dm.num_classes == 3 and dm.ignore_index == 255
    assert dm.class_subsets == {"mIoU": [0, 1, 2]}
    source = TinyDataset(4)
    source.class_subsets = {"mIoU2": [0, 1]}  # e.g. SYNTHIA's mIoU16/mIoU13
    assert _dm(source=source).class_subsets == {"mIoU2": [0, 1]}
    assert _dm(class_subsets={"x": [2]}).class_subsets == {"x": [2]}


def test_mismatched_classes_name_both_lists():
    with pytest.raises(ValueError, match=r"target dataset's classes differ[\s\S]*'road'[\s\S]*'a'"):
        _dm(target=TinyDataset(3, classes=CITYSCAPES_CLASSES))


def test_bad_arguments():
    with pytest.raises(ValueError, match="source dataset is empty"):
        _dm(source=TinyDataset(0))
    with pytest.raises(ValueError, match="return_mask=False"):
        _dm(target=TinyDataset(3, masks=False), target_monitor_labels=True)
    with pytest.raises(ValueError, match="batch_size"):
        _dm(batch_size=0)
    with pytest.raises(ValueError, match="test dataset"):
        _dm().test_dataloader()


def test_predict_items_carry_path_and_size(fixtures_root: Path):
    from lightning_uda.data.datasets import Cityscapes

    city = fixtures_root / "cityscapes_mini"
    predict = Cityscapes(city, split="val", transform="cityscapes_val", return_mask=False)
    dm = _dm(
        source=Cityscapes(city, split="val"),
        target=Cityscapes(city, split="val", return_mask=False),
        val=Cityscapes(city, split="val"),
        predict=predict,
    )
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (1, 3, 512, 1024)
    assert batch["orig_size"].tolist() == [[128, 256]]
    assert batch["path"][0].endswith("_leftImg8bit.png")
    assert predict.return_meta is False  # the user's dataset is not modified
    assert str(dm).startswith("UDADataModule(source=Cityscapes(1 samples")


def test_eval_loaders_are_sequential():
    dm = _dm(val=TinyDataset(5), val_batch_size=2)
    indices = [int(v) for b in dm.val_dataloader() for v in b["image"][:, 0, 0, 0]]
    assert indices == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------- sampling
def test_shorter_domain_cycles_and_epoch_is_longer_domain():
    dm = _dm(n_source=7, n_target=3, batch_size=2)
    assert dm.steps_per_epoch == 4  # ceil(7 / 2)
    batches = _stream(dm, 3)
    assert len(batches) == 12
    source = [i for b in batches for i in b["source"]["index"].tolist()]
    target = [i for b in batches for i in b["target"]["index"].tolist()]
    for stream, n in ((source, 7), (target, 3)):
        cycles = [stream[k : k + n] for k in range(0, len(stream) - n + 1, n)]
        assert all(sorted(c) == list(range(n)) for c in cycles)  # every cycle: a permutation
        assert len({tuple(c) for c in cycles}) > 1  # ... and a fresh one


def test_order_is_deterministic_given_seed():
    def record(seed: int) -> list:
        batches = _stream(_dm(n_source=9, n_target=4, seed=seed, batch_size=3), 2)
        return [(b["source"]["index"].tolist(), b["target"]["index"].tolist()) for b in batches]

    assert record(1) == record(1)
    assert record(1) != record(2)


def test_transform_randomness_is_per_sample_and_independent_of_workers():
    def crops(num_workers: int) -> torch.Tensor:
        dm = _dm(source=TinyDataset(6, size=8, crop=4), num_workers=num_workers, batch_size=2)
        return torch.cat([b["source"]["image"] for b in _stream(dm, 1)])

    serial = crops(0)
    assert len({float(v) for v in serial[:, 0, 0, 0] % 1}) > 1  # crops do differ
    assert torch.equal(serial, crops(2))


# ---------------------------------------------------------------------------------- Lightning
def _resume_dm(num_workers: int = 0) -> UDADataModule:
    return _dm(
        source=TinyDataset(9, size=8, crop=4),
        target=TinyDataset(4),
        batch_size=2,
        num_workers=num_workers,
    )


@pytest.mark.parametrize(
    ("saved_at", "checkpoint_name", "num_workers"),
    [(7, "epoch=1-step=7.ckpt", 0), (5, "epoch=0-step=5.ckpt", 1)],
    ids=["mid-epoch", "epoch-end-with-worker"],
)
@pytest.mark.fit
def test_fit_resumed_from_checkpoint_sees_the_same_stream(
    tmp_path: Path, recwarn, saved_at: int, checkpoint_name: str, num_workers: int
):
    # 5 batches per epoch (ceil(9 / 2)); checkpoint at `saved_at`, pre-empted at step 9.
    straight = tmp_path / "straight.jsonl"
    stream_trainer(tmp_path, [], enable_checkpointing=False).fit(
        Recorder(str(straight)), _resume_dm(num_workers)
    )

    interrupted = tmp_path / "interrupted.jsonl"
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=saved_at, save_top_k=-1
    )
    with pytest.raises(RuntimeError, match="pre-empted"):
        stream_trainer(tmp_path, [checkpoint, Preempt(9)]).fit(
            Recorder(str(interrupted)), _resume_dm(num_workers)
        )
    resumed = tmp_path / "resumed.jsonl"
    stream_trainer(tmp_path, []).fit(
        Recorder(str(resumed)),
        _resume_dm(num_workers),
        ckpt_path=str(tmp_path / "ckpt" / checkpoint_name),
    )

    expected = read_log(straight)
    assert len(expected) == 11
    # Same sample indices, same crops, same batch_idx and epoch, step by step.
    assert read_log(interrupted)[:saved_at] + read_log(resumed) == expected
    first = read_log(resumed)[0]
    assert (first["epoch"], first["batch_idx"]) == divmod(saved_at, 5)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


class ShardRecorder(Recorder):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.log_file = f"{self.log_file.rsplit('.', 2)[0]}.{self.global_rank}.jsonl"
        return super().training_step(batch, batch_idx)


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_ranks_see_disjoint_shards(tmp_path: Path):
    # 8 target images, 2 ranks × 2 per batch: the first 2 steps are one cycle, split in two.
    dm = _dm(n_source=8, n_target=8, batch_size=2, target_batch_size=2)
    # ddp_fork (2 CPU processes, gloo) starts in well under a second; Lightning refuses to fork
    # once CUDA is initialised (e.g. by an earlier test on a GPU machine): spawn then.
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = stream_trainer(
        tmp_path, [], max_steps=2, devices=2, strategy=strategy, enable_checkpointing=False
    )
    trainer.fit(ShardRecorder(str(tmp_path / "log.jsonl")), dm)
    seen = [
        [i for r in read_log(tmp_path / f"log.{rank}.jsonl") for i in r["target"]]
        for rank in (0, 1)
    ]
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(8))


# ---------------------------------------------------------------------------------- input space
def _in_space(dataset: TinyDataset, space) -> TinyDataset:
    dataset.normalization = space
    return dataset


def test_normalization_is_the_common_space_of_the_datasets():
    assert _dm().normalization == IMAGENET  # no dataset says: the library's default
    caffe = _dm(source=_in_space(TinyDataset(5), CAFFE), val=_in_space(TinyDataset(2), "caffe"))
    assert caffe.normalization == CAFFE
    subset = torch.utils.data.Subset(_in_space(TinyDataset(5), CAFFE), [0, 1, 2])
    assert _dm(source=subset, val=_in_space(TinyDataset(2), CAFFE)).normalization == CAFFE
    with pytest.raises(AttributeError):
        caffe.normalization = IMAGENET  # read-only


def test_mismatched_normalization_names_every_dataset_and_the_fix():
    with pytest.raises(ValueError) as error:
        _dm(
            source=_in_space(TinyDataset(5), CAFFE),
            target=_in_space(TinyDataset(3), CAFFE),
            val=_in_space(TinyDataset(2), IMAGENET),
        )
    message = str(error.value)
    assert "different input spaces" in message
    assert "source (TinyDataset): caffe (BGR" in message
    assert "target (TinyDataset): caffe (BGR" in message
    assert "val (TinyDataset): imagenet (RGB" in message
    assert "normalization='caffe'" in message  # the fix, with the majority's space
    with pytest.raises(ValueError, match=r"the target dataset's normalization.*'cafe'"):
        _dm(target=_in_space(TinyDataset(3), "cafe"))


class MixedSizes(TinyDataset):
    """Item ``i`` is ``(6 + 2i) × (6 + 2i)``, like a folder of images of different sizes."""

    def __getitem__(self, i: int) -> dict:
        grid = np.zeros((6 + 2 * i, 6 + 2 * i), dtype=np.float32)
        out = self.transform(
            image=np.repeat(grid[..., None], 3, axis=2), mask=grid.astype(np.uint8)
        )
        return {"image": out["image"].float(), "mask": out["mask"].long()}


def test_full_resolution_val_masks_collate_and_mixed_sizes_are_explained(
    fixtures_root: Path, tmp_path: Path
):
    from lightning_uda.data.datasets import Cityscapes

    root = tmp_path / "cityscapes"
    shutil.copytree(fixtures_root / "cityscapes_mini", root)
    for folder, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        city = root / folder / "val" / "frankfurt"
        shutil.copy(city / f"{FRAME}_{suffix}.png", city / f"frankfurt_000000_000295_{suffix}.png")
    val = Cityscapes(root, split="val", transform="cityscapes_val")
    dm = _dm(source=val, target=val, val=val, val_batch_size=2)
    assert dm.normalization == IMAGENET
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 512, 1024)  # the network input
    assert batch["mask"].shape == (2, 128, 256) and batch["mask"].dtype == torch.int64
    mixed = _dm(val=MixedSizes(2), val_batch_size=2)
    with pytest.raises(ValueError, match=r"different sizes.*\(6, 6\), \(8, 8\).*val_batch_size=1"):
        next(iter(mixed.val_dataloader()))
    assert len(list(_dm(val=MixedSizes(2), val_batch_size=1).val_dataloader())) == 2
