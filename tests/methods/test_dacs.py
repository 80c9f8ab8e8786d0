from __future__ import annotations

import re

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_uda.callbacks import EMATeacher, PseudoLabelThreshold
from lightning_uda.methods import ClassMixModule, DACSModule
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule


@pytest.mark.parametrize("module_cls", [DACSModule, ClassMixModule])
@pytest.mark.fit
def test_fits_with_finite_losses_and_default_callbacks(module_cls, tmp_path):
    torch.manual_seed(0)
    module = module_cls(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path)
    trainer.fit(module, datamodule=toy_datamodule(target_monitor_labels=True))
    metrics = trainer.callback_metrics
    for key in ("train/loss_source", "train/loss_mixed", "pseudo/confident_fraction"):
        assert torch.isfinite(metrics[key]), key
    assert "pseudo/accuracy" in metrics  # monitoring labels are logged, not trained on
    assert sum(isinstance(c, EMATeacher) for c in trainer.callbacks) == 1
    assert sum(isinstance(c, PseudoLabelThreshold) for c in trainer.callbacks) == 1
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


@pytest.mark.fit
def test_user_callbacks_are_kept_and_duplicates_rejected(tmp_path):
    module = DACSModule(**tiny_module_kwargs(), ema_alpha=0.5, ema_warmup=False)
    mine = EMATeacher(alpha=0.5, warmup=False)
    trainer = cpu_trainer(tmp_path, max_steps=1, callbacks=[mine])
    trainer.fit(module, datamodule=toy_datamodule())
    assert mine in trainer.callbacks and mine.updates == 1

    module = DACSModule(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, callbacks=[PseudoLabelThreshold(), PseudoLabelThreshold()])
    with pytest.raises(ValueError, match="exactly one PseudoLabelThreshold"):
        trainer.fit(module, datamodule=toy_datamodule())


@pytest.mark.parametrize(
    ("callback", "module_kwargs", "named"),
    [
        (EMATeacher(alpha=0.5), {}, "ema_alpha=0.99 but the Trainer's EMATeacher has alpha=0.5"),
        (EMATeacher(buffers="none"), {}, "ema_buffers='copy' but the Trainer's EMATeacher has"),
        (
            PseudoLabelThreshold(threshold=0.9),
            {},
            "pseudo_label_threshold=0.968 but the Trainer's PseudoLabelThreshold has threshold=0.9",
        ),
        (
            PseudoLabelThreshold(weighting="pixel"),
            {"pseudo_label_weighting": "uniform"},
            "pseudo_label_weighting='uniform' but the Trainer's PseudoLabelThreshold has",
        ),
    ],
    ids=["ema_alpha", "ema_buffers", "threshold", "weighting"],
)
@pytest.mark.fit
def test_a_trainer_callback_that_disagrees_with_the_module_is_an_error(
    tmp_path, callback, module_kwargs, named
):
    # one source of truth: the module's arguments; a disagreeing callback is never applied
    module = DACSModule(**tiny_module_kwargs(), **module_kwargs)
    trainer = cpu_trainer(tmp_path, max_steps=1, callbacks=[callback])
    with pytest.raises(ValueError, match=re.escape(named)):
        trainer.fit(module, datamodule=toy_datamodule())


@pytest.mark.fit
def test_teacher_equals_student_after_first_update_with_warmup(tmp_path):
    module = DACSModule(**tiny_module_kwargs())
    trainer = cpu_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=toy_datamodule())
    teacher, student = module.teacher.state_dict(), module.model.state_dict()
    assert teacher.keys() == student.keys()
    for key, value in teacher.items():
        assert torch.equal(value, student[key]), key


def test_dacs_mix_pastes_source_gt_with_weight_one_on_target_pseudo_labels():
    module = DACSModule(**tiny_module_kwargs(), strong_augmentation=False)
    source_mask = torch.zeros(2, 16, 16, dtype=torch.long)
    source_mask[:, :8] = 1  # two classes per image → ceil(2/2) = 1 class pasted
    batch = {
        "source": {"image": torch.full((2, 3, 16, 16), 7.0), "mask": source_mask},
        "target": {"image": torch.full((2, 3, 16, 16), -7.0)},
    }
    pseudo = torch.full((2, 16, 16), 2, dtype=torch.long)
    parts = module.mix_inputs(batch, pseudo, torch.full((2, 16, 16), 0.3))
    mask = module.mix_mask(parts.foreground_label)
    # the mask is exactly the pixels of one of the two source classes
    for b in range(2):
        chosen = source_mask[b][mask[b]].unique()
        assert chosen.numel() == 1
        assert torch.equal(mask[b], source_mask[b] == chosen)
    from lightning_uda.mixing import mix

    weights = mix(mask, parts.foreground_weight, parts.background_weight)
    labels = mix(mask, parts.foreground_label, parts.background_label)
    images = mix(mask, parts.foreground_image, parts.background_image)
    assert torch.all(weights[mask] == 1.0) and torch.allclose(weights[~mask], torch.tensor(0.3))
    assert torch.equal(labels[mask], source_mask[mask])
    assert torch.all(labels[~mask] == 2)
    assert torch.all(images.permute(0, 2, 3, 1)[mask] == 7.0)
    assert torch.all(images.permute(0, 2, 3, 1)[~mask] == -7.0)


def test_shape_mismatch_between_domains_is_explained():
    module = DACSModule(**tiny_module_kwargs())
    batch = {
        "source": {"image": torch.zeros(2, 3, 16, 16), "mask": torch.zeros(2, 16, 16).long()},
        "target": {"image": torch.zeros(1, 3, 16, 16)},
    }
    with pytest.raises(ValueError, match="same shape"):
        module.mix_inputs(batch, torch.zeros(1, 16, 16).long(), torch.ones(1, 16, 16))


def _states(module):
    return {
        "model": {k: v.clone() for k, v in module.model.state_dict().items()},
        "teacher": {k: v.clone() for k, v in module.teacher.state_dict().items()},
    }


@pytest.mark.fit
def test_resume_from_mid_run_checkpoint_is_exact(tmp_path):
    """A DACS run stopped at step 3 and resumed ends where an uninterrupted 6-step run ends."""
    kwargs = tiny_module_kwargs()
    torch.manual_seed(0)
    uninterrupted = DACSModule(**kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    cpu_trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        uninterrupted, datamodule=toy_datamodule(batch_size=4)
    )
    reference = _states(uninterrupted)
    step3 = tmp_path / "epoch=0-step=3.ckpt"
    assert step3.exists(), sorted(p.name for p in tmp_path.iterdir())

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed = DACSModule(**kwargs)
    cpu_trainer(tmp_path / "resume", max_steps=6).fit(
        resumed, datamodule=toy_datamodule(batch_size=4), ckpt_path=step3
    )
    assert resumed.uda_step == 6
    got = _states(resumed)
    for part in ("model", "teacher"):
        for key, value in reference[part].items():
            assert torch.equal(got[part][key], value), f"{part}.{key} differs after resume"


class _SaveTeacher(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {"teacher": pl_module.teacher.state_dict(), "rng": pl_module.rng.get_state()},
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.fit
@pytest.mark.ddp
def test_ddp_two_processes_keep_identical_teachers(tmp_path):
    module = DACSModule(**tiny_module_kwargs())
    trainer = cpu_trainer(
        tmp_path,
        max_steps=3,
        devices=2,
        strategy="ddp_fork",
        callbacks=[_SaveTeacher(str(tmp_path))],
    )
    trainer.fit(module, datamodule=toy_datamodule(batch_size=2))
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for key, value in rank0["teacher"].items():
        assert torch.equal(value, rank1["teacher"][key]), key
    # the ranks drew different masks/augmentations (different generator streams)
    assert not torch.equal(rank0["rng"], rank1["rng"])
