"""Checkpoint integrity: a digest beside each file; clear errors for bad files."""

from __future__ import annotations

import hashlib

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.callbacks import CheckpointError, ChecksummedCheckpointIO
from lightning_uda.methods import DACSModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

pytestmark = pytest.mark.fit


def _fit(tmp_path, max_steps: int, ckpt_path=None):
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True
    )
    trainer = cpu_trainer(
        tmp_path,
        max_steps=max_steps,
        enable_checkpointing=True,
        callbacks=[checkpoints],
        plugins=[ChecksummedCheckpointIO()],
    )
    module = DACSModule(**tiny_module_kwargs())
    trainer.fit(module, datamodule=toy_datamodule(), ckpt_path=ckpt_path)
    return module


def test_every_checkpoint_gets_a_matching_sha256(tmp_path):
    _fit(tmp_path, max_steps=2)
    files = sorted(tmp_path.glob("*.ckpt"))
    assert {p.name for p in files} == {"epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"}
    for path in files:
        recorded = (tmp_path / f"{path.name}.sha256").read_text().split()[0]
        assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupted_checkpoint_is_refused_and_a_good_one_suggested(tmp_path):
    _fit(tmp_path, max_steps=2)
    last = tmp_path / "last.ckpt"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    last.write_bytes(bytes(data))
    # torch.load alone reads the flipped bytes as tensor data without complaint
    torch.load(last, weights_only=False)
    with pytest.raises(CheckpointError, match=r"last\.ckpt does not match its SHA-256") as error:
        _fit(tmp_path / "resume", max_steps=3, ckpt_path=str(last))
    assert "epoch=0-step=2.ckpt" in str(error.value)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_and_truncated_checkpoints_name_the_file(tmp_path, damage):
    _fit(tmp_path, max_steps=1)
    path = tmp_path / "last.ckpt"
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    (tmp_path / "last.ckpt.sha256").unlink()  # e.g. copied without its digest
    with pytest.raises(CheckpointError, match=r"last\.ckpt (is empty|cannot be read)"):
        _fit(tmp_path / "resume", max_steps=2, ckpt_path=str(path))
