from __future__ import annotations

from pathlib import Path

import pytest

from lightning_uda.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_fit_from_a_config_chooses_method_and_data_by_class_path(tmp_path):
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "demo_dacs.yaml"),
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


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: lightning_uda" in capsys.readouterr().out
