from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Subset, TensorDataset

from lightning_uda.callbacks import UnsupervisedValidation
from lightning_uda.cli import checkpoint_callbacks, main, resolve_select_by, unlabelled_subset
from lightning_uda.recipes.demo import demo_config

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
METHODS = sorted(p.stem for p in (RECIPES / "methods").glob("*.yaml"))


def _demo_yaml(tmp_path: Path, method: str = "dacs") -> Path:
    path = tmp_path / f"demo_{method}.yaml"
    path.write_text(yaml.safe_dump(demo_config(method)))
    return path


@pytest.mark.fit
def test_fit_from_the_demo_recipe_chooses_method_and_data_by_class_path(tmp_path):
    main(
        [
            "fit",
            "--config",
            str(_demo_yaml(tmp_path)),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.init_args.source.init_args.num_images",
            "32",
            "--data.init_args.target.init_args.num_images",
            "32",
            "--data.init_args.val.init_args.num_images",
            "8",
        ]
    )
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "fit through the CLI should leave a checkpoint"


@pytest.mark.parametrize("source", ["gta5", "synthia"])
@pytest.mark.parametrize("method", METHODS)
def test_shipped_recipe_layers_parse(source, method, capsys):
    layers = [RECIPES / "base.yaml", RECIPES / "data" / f"{source}_cityscapes.yaml"]
    layers.append(RECIPES / "methods" / f"{method}.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(a for p in layers for a in ("--config", str(p))), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].startswith("lightning_uda.methods.")
    assert config["checkpoints"]["select_by"] == "val_unsup/entropy"
    assert config["checkpoints"]["unlabelled"]["class_path"] == "lightning_uda.data.Cityscapes"


def test_select_by_builds_the_checkpoint_callbacks():
    assert checkpoint_callbacks(None) == []  # Lightning's default checkpointing
    (labelled,) = checkpoint_callbacks("val/mIoU", dirpath="ckpts")
    assert isinstance(labelled, ModelCheckpoint)
    assert (labelled.monitor, labelled.mode, labelled.save_last) == ("val/mIoU", "max", True)
    assert labelled.dirpath.endswith("ckpts")
    (last,) = checkpoint_callbacks("paper", paper_select_by="last")  # DAFormer/MIC: final model
    assert last.monitor is None and last.save_last and last.save_top_k == 0
    images = TensorDataset(torch.zeros(10, 3, 4, 4))
    signal, ranking = checkpoint_callbacks(
        "val_unsup/entropy", unlabelled=images, unlabelled_images=4
    )
    assert isinstance(signal, UnsupervisedValidation)
    assert (ranking.monitor, ranking.mode) == ("val_unsup/entropy", "min")  # lower is better
    with pytest.raises(ValueError, match="checkpoints.unlabelled"):
        checkpoint_callbacks("val_unsup/im")
    with pytest.raises(ValueError, match="does not say"):
        checkpoint_callbacks("paper", paper_select_by=None)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_select_by("val/loss", None)
    assert resolve_select_by("paper", "val/mIoU") == "val/mIoU"


def test_unlabelled_subset_is_fixed_and_in_file_order():
    images = TensorDataset(torch.arange(20.0))
    first, second = unlabelled_subset(images, 5), unlabelled_subset(images, 5)
    assert isinstance(first, Subset) and first.indices == second.indices
    assert first.indices == sorted(first.indices) and len(first.indices) == 5
    assert unlabelled_subset(images, 50) is images


@pytest.mark.fit
def test_fit_ranks_checkpoints_by_the_selected_signal(tmp_path):
    """`checkpoints.select_by` through LightningCLI: the label-free signal is logged and ranks."""
    unlabelled = {
        "class_path": "lightning_uda.data.demo.DigitScenes",
        "init_args": {"domain": "target", "split": "train", "num_images": 8, "return_mask": False},
    }
    main(
        [
            "fit",
            "--config",
            str(_demo_yaml(tmp_path)),
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",  # LightningCLI writes config.yaml there
            "--data.init_args.source.init_args.num_images=32",
            "--data.init_args.target.init_args.num_images=32",
            "--data.init_args.val.init_args.num_images=8",
            "--checkpoints.select_by=val_unsup/entropy",
            f"--checkpoints.dirpath={tmp_path / 'ckpts'}",
            f"--checkpoints.unlabelled={yaml.safe_dump(unlabelled, default_flow_style=True)}",
        ]
    )
    names = sorted(p.name for p in (tmp_path / "ckpts").glob("*.ckpt"))
    assert "last.ckpt" in names
    assert any(n.startswith("step2-entropy") and "-miou" in n for n in names), names
