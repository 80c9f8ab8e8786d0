"""SLURM pre-emption: the requeue signal checkpoints at a step boundary (checksummed, finite) and
requeues; the requeued job resumes from that checkpoint by itself, bit-identically.

SLURM is simulated: its job variables are set (so Lightning's ``SLURMEnvironment`` is detected,
with ``auto_requeue=True``) and ``scontrol`` on ``PATH`` is a script that records its arguments.
The signal is sent to this process from inside a training step (after the backward pass, before
the optimiser step), where a checkpoint written on the spot would mix two steps.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_uda.callbacks import ChecksummedCheckpointIO, SlurmRequeue, verify_checkpoint
from lightning_uda.methods import DACSModule, SourceOnlyModule
from tests.helpers.methods import tiny_module_kwargs, toy_datamodule

pytestmark = pytest.mark.fit


class _SignalInStep(Callback):
    """Sends SIGUSR1 to this process in the middle of step ``step`` (before its optimiser step)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step - 1 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


class _Record(Callback):
    """The step training starts at, and the final state that a resume must reproduce."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0].state_dict()
        self.state = {
            "model": {k: v.clone() for k, v in pl_module.model.state_dict().items()},
            "teacher": {k: v.clone() for k, v in pl_module.teacher.state_dict().items()},
            "momentum": [s["momentum_buffer"].clone() for s in optimizer["state"].values()],
            "rng": pl_module.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }


class _Poison(Callback):
    """Puts a NaN into the first parameter at the end of step ``step`` (after the module's own
    finite-state checks of that step), to see that the requeue refuses to checkpoint it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).view(-1)[0] = float("nan")


@pytest.fixture
def slurm_job(tmp_path, monkeypatch) -> Path:
    """A simulated SLURM job 4242 of one task; returns the file ``scontrol`` records into."""
    calls = tmp_path / "scontrol_calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    job = dict(
        SLURM_JOB_ID="4242", SLURM_JOB_NAME="train", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
    )  # fmt: skip
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_ARRAY_JOB_ID", "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return calls


def _fit(root: Path, *callbacks: Callback, seed: int = 0, method: type = DACSModule) -> Trainer:
    torch.manual_seed(seed)  # a resumed run must not depend on its own initialisation
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=root,
        plugins=[ChecksummedCheckpointIO()],
        callbacks=[*callbacks, SlurmRequeue()],
    )
    trainer.fit(method(**tiny_module_kwargs()), datamodule=toy_datamodule(batch_size=2))
    return trainer


def test_signal_checkpoints_at_the_step_boundary_and_the_requeued_job_resumes_exactly(
    tmp_path, slurm_job
):
    root = tmp_path / "run"
    signalled = _Record()
    _fit(root, _SignalInStep(2), signalled)
    # Lightning's handler ran, at the end of step 2: a checksummed checkpoint, then the requeue
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    checkpoint = root / "hpc_ckpt_1.ckpt"
    assert verify_checkpoint(checkpoint) is True  # its digest is in .hpc_digests/
    assert sorted(p.name for p in root.glob("hpc_ckpt_*")) == ["hpc_ckpt_1.ckpt"]
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == 2 and saved["uda"]["uda_step"] == 2
    for name, value in saved["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    # the requeued job: the same command, no ckpt_path (no --resume); it finds hpc_ckpt_1
    requeued = _Record()
    _fit(root, requeued, seed=123)
    assert requeued.start == 2
    want, got = signalled.state, requeued.state
    for part in ("model", "teacher"):
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), f"{part}.{key}"
    for a, b in zip(want["momentum"], got["momentum"], strict=True):
        assert torch.equal(a, b), "optimiser state"
    assert torch.equal(want["rng"], got["rng"]) and torch.equal(want["torch_rng"], got["torch_rng"])


def test_a_non_finite_state_is_neither_checkpointed_nor_requeued(tmp_path, slurm_job):
    root = tmp_path / "run"
    # SourceOnly: no EMA teacher whose update would carry the NaN into its own check first
    with pytest.raises(FloatingPointError, match=r"requeue signal at step 2: .* NaN or inf"):
        _fit(root, _SignalInStep(2), _Poison(2), method=SourceOnlyModule)
    assert not list(root.glob("hpc_ckpt_*"))
    assert not slurm_job.exists()


def test_outside_slurm_the_signal_is_not_watched(tmp_path, monkeypatch):
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    requeue = SlurmRequeue()
    trainer = _fit(tmp_path, requeue)
    assert trainer.global_step == 4 and not requeue.active
    assert not list(tmp_path.glob("hpc_ckpt_*"))
