"""Resuming a 2-process (CPU, gloo) run is bit-identical to the uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.methods import DACSModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

pytestmark = [pytest.mark.fit, pytest.mark.ddp]


class _SaveState(Callback):
    """Each rank writes what a resume must restore: weights, optimiser, RNG, data position."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["target"]["image"].sum().detach().clone())

    def on_train_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0].state_dict()
        torch.save(
            {
                "model": pl_module.model.state_dict(),
                "teacher": pl_module.teacher.state_dict(),
                "momentum": [s["momentum_buffer"] for s in optimizer["state"].values()],
                "rng": pl_module.rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                "last_batch": self.batches[-1],
                "uda_step": pl_module.uda_step,
            },
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


def _fit(tmp_path, name: str, max_steps: int, ckpt_path=None, every: int | None = None):
    out = tmp_path / name
    out.mkdir()
    callbacks = [_SaveState(str(out))]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=out, every_n_train_steps=every, save_top_k=-1))
    torch.manual_seed(0 if ckpt_path is None else 123)  # a resume must not depend on the init
    module = DACSModule(**tiny_module_kwargs())
    strategy = "ddp_spawn" if torch.cuda.is_initialized() else "ddp_fork"
    trainer = cpu_trainer(
        out,
        max_steps=max_steps,
        devices=2,
        strategy=strategy,
        enable_checkpointing=bool(every),
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2), ckpt_path=ckpt_path)
    return out


def test_two_process_resume_is_bit_identical(tmp_path):
    straight = _fit(tmp_path, "straight", max_steps=4, every=2)
    checkpoint = straight / "epoch=0-step=2.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in straight.iterdir())
    resumed = _fit(tmp_path, "resumed", max_steps=4, ckpt_path=str(checkpoint))
    for rank in (0, 1):
        want = torch.load(straight / f"rank{rank}.pt")
        got = torch.load(resumed / f"rank{rank}.pt")
        assert got["uda_step"] == want["uda_step"] == 4
        for part in ("model", "teacher"):
            for key, value in want[part].items():
                assert torch.equal(got[part][key], value), f"rank {rank}: {part}.{key}"
        for a, b in zip(want["momentum"], got["momentum"], strict=True):
            assert torch.equal(a, b), f"rank {rank}: optimiser state"
        assert torch.equal(want["rng"], got["rng"]), f"rank {rank}: module generator"
        assert torch.equal(want["torch_rng"], got["torch_rng"]), f"rank {rank}: torch RNG"
        assert torch.equal(want["last_batch"], got["last_batch"]), f"rank {rank}: data position"
