"""Several validation targets end to end: per-target metrics equal each target evaluated alone,
``val/mIoU`` follows the primary target, and under DDP (2 processes) the logged values equal one
process's, with no advice from Lightning to sync them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from lightning_uda.data import UDADataModule
from lightning_uda.methods import SourceOnlyModule
from tests.helpers.methods import ToyScenes, cpu_trainer, tiny_module_kwargs


def _targets() -> dict[str, ToyScenes]:
    # even sizes: 2 DDP ranks get disjoint halves (no padded repeats)
    return {"bright": ToyScenes(8, seed=3, shift=0.5), "plain": ToyScenes(6, seed=4)}


def _datamodule(val, **kwargs) -> UDADataModule:
    return UDADataModule(
        source=ToyScenes(4, seed=1),
        target=ToyScenes(4, seed=2),
        val=val,
        val_batch_size=2,
        num_workers=0,
        **kwargs,
    )


def _module() -> SourceOnlyModule:
    torch.manual_seed(0)  # an untrained tiny U-Net: its mistakes differ per class and target
    return SourceOnlyModule(**tiny_module_kwargs())


def _validate(tmp_path: Path, datamodule: UDADataModule, **kwargs) -> dict[str, float]:
    trainer = cpu_trainer(tmp_path, limit_val_batches=1.0, **kwargs)
    trainer.validate(_module(), datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.fit
def test_each_target_equals_it_alone_and_val_miou_is_the_primary(tmp_path: Path):
    alone = {name: _validate(tmp_path, _datamodule(ds)) for name, ds in _targets().items()}
    assert alone["bright"]["val/mIoU"] != pytest.approx(alone["plain"]["val/mIoU"])
    together = _validate(tmp_path, _datamodule(_targets()))
    for name, metrics in alone.items():
        for key, value in metrics.items():  # val/mIoU, val/IoU/<class>
            assert together[f"val/{name}/" + key[4:]] == pytest.approx(value, abs=1e-9), key
    for key, value in alone["bright"].items():  # the first target is the primary
        assert together[key] == pytest.approx(value, abs=1e-9)
    assert not any("dataloader_idx" in key for key in together)
    second = _validate(tmp_path, _datamodule(_targets(), val_primary="plain"))
    assert second["val/mIoU"] == pytest.approx(alone["plain"]["val/mIoU"], abs=1e-9)
    assert second["val/bright/mIoU"] == pytest.approx(alone["bright"]["val/mIoU"], abs=1e-9)


class _Record(Callback):
    """In each process: record warnings from setup on, and the logged metrics at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: list[str] = []

    def setup(self, trainer, pl_module, stage) -> None:
        warnings.simplefilter("always")
        default = warnings.showwarning

        def record(message, *args, **kwargs) -> None:
            self.seen.append(str(message))
            default(message, *args, **kwargs)

        warnings.showwarning = record

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save({"metrics": metrics}, self.out / f"rank{trainer.global_rank}.pt")

    def teardown(self, trainer, pl_module, stage) -> None:
        torch.save(
            {**torch.load(self.out / f"rank{trainer.global_rank}.pt"), "warnings": self.seen},
            self.out / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.fit
@pytest.mark.ddp
def test_two_processes_log_the_single_process_values_without_sync_advice(tmp_path: Path):
    single = _validate(tmp_path, _datamodule(_targets()))
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    _validate(
        tmp_path,
        _datamodule(_targets()),
        devices=2,
        strategy=strategy,
        callbacks=[_Record(tmp_path)],
    )
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got["metrics"]) == set(single)
        for key, value in single.items():  # one confusion matrix per target, summed over ranks
            assert got["metrics"][key] == pytest.approx(value, abs=1e-9), key
        advice = [w for w in got["warnings"] if "sync_dist=True" in w]
        assert not advice, advice


@pytest.mark.fit
def test_checkpoints_follow_the_named_target(tmp_path: Path):
    from lightning_uda.cli import checkpoint_callbacks

    (checkpoint,) = checkpoint_callbacks("val/plain/mIoU", dirpath=str(tmp_path / "ckpt"))
    trainer = cpu_trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=1.0,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        enable_checkpointing=True,
        callbacks=[checkpoint],
    )
    trainer.fit(_module(), datamodule=_datamodule(_targets()))
    logged = float(trainer.callback_metrics["val/plain/mIoU"])
    assert checkpoint.monitor == "val/plain/mIoU"
    assert float(checkpoint.best_model_score) >= logged - 1e-9
    assert f"miou{float(checkpoint.best_model_score):.1f}" in Path(checkpoint.best_model_path).name
    with pytest.raises(ValueError, match=r"val/<target>/mIoU"):
        checkpoint_callbacks("val/a/b/mIoU")


@pytest.mark.fit
def test_loaders_without_a_datamodule_are_numbered(tmp_path: Path):
    from torch.utils.data import DataLoader

    loaders = [DataLoader(ds, batch_size=2) for ds in _targets().values()]
    trainer = cpu_trainer(tmp_path, limit_val_batches=1.0)
    trainer.validate(_module(), dataloaders=loaders, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    alone = _validate(tmp_path, _datamodule(_targets()))
    assert metrics["val/loader1/mIoU"] == pytest.approx(alone["val/plain/mIoU"], abs=1e-9)
    assert metrics["val/mIoU"] == pytest.approx(alone["val/bright/mIoU"], abs=1e-9)
