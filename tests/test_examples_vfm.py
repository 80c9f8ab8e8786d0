"""The VFM-UDA recipes: their settings are the references', --print-recipe shows the group
learning rates, and (slow) one real-format step with a ViT-S built from a generated DINOv2 file."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import yaml

from lightning_uda.cli import main as cli_main
from lightning_uda.models.vit import create_dinov2
from tests.helpers.examples import EXAMPLES, gta_and_cityscapes, load_example

RECIPES = EXAMPLES / "recipes"
VFM = ("vfm_uda", "vfm_uda_large", "vfm_uda_pp", "vfm_uda_pp_base")


@pytest.fixture(scope="module")
def common():
    return load_example("_common")


def _print_recipe(common, method: str) -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.run(common.parse_args("x", ["--method", method, "--print-recipe"]), source="gta5")
    text = out.getvalue()
    return yaml.safe_load(text), "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))


def test_recipes_are_the_references_and_print_group_rates(common):
    expected = {  # method: (class, encoder, head, lr, layer decay, published figure)
        "vfm_uda": ("VFMUDAModule", "dinov2_vitb14", "light", 1.414e-4, 1.0, "77.1"),
        "vfm_uda_large": ("VFMUDAModule", "dinov2_vitl14", "light", 1.414e-4, 1.0, "78.4"),
        "vfm_uda_pp": ("VFMUDAPlusPlusModule", "dinov2_vitl14", "pyramid", 2.828e-5, 0.9, "79.8"),
        "vfm_uda_pp_base": ("VFMUDAPlusPlusModule", "dinov2_vitb14", "pyramid", 1.414e-4, 0.9,
                            "69.7"),
    }  # fmt: skip
    for method, (cls, encoder, head, lr, decay, figure) in expected.items():
        config, header = _print_recipe(common, method)
        init = config["model"]["init_args"]
        assert config["model"]["class_path"] == f"lightning_uda.methods.{cls}"
        assert (init["encoder"], init["model_kwargs"]["head"]) == (encoder, head)
        assert init["lr"] == pytest.approx(lr) and init["layer_decay"] == decay
        assert init["encoder_lr_mult"] == 0.1 and init["weight_decay"] == 0.01
        assert init["warmup_steps"] == 1500 and init["ema_alpha"] == 0.999
        assert init["mask_ratio"] == 0.7 and init["masked_consistency_weight"] == 1.0
        assert config["data"]["init_args"]["batch_size"] == 8  # 8 images per step
        assert figure in header
        depth = 24 if "vitl" in encoder else 12
        assert f"# lr encoder.block{depth}: {lr * 0.1:.4g}" in header
        assert f"# lr encoder.embed: {lr * 0.1 * decay**depth:.4g}" in header
        if cls == "VFMUDAPlusPlusModule":
            assert init["distill_encoder"] == "dinov2_vitl14_reg"
            assert init["distill_source_weight"] == init["distill_target_weight"] == 0.1
            assert init["distill_checkpoint"].endswith("dinov2_vitl14_reg4_pretrain.pth")


def _generated_official_file(path, name: str) -> None:
    """A DINOv2 file in the official layout, from a randomly initialised timm model."""
    torch.manual_seed(0)
    state = create_dinov2(name).state_dict()
    if "reg_token" in state:
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat(
            [torch.zeros_like(state["cls_token"]), state["pos_embed"]], 1
        )
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    torch.save(state, path)


@pytest.mark.fit
@pytest.mark.slow
@pytest.mark.parametrize("method", ["vfm_uda", "vfm_uda_pp"])
def test_one_real_format_step_with_a_vit_s(method, tmp_path, fixtures_root):
    data = tmp_path / "data"
    gta_and_cityscapes(data, fixtures_root)
    weights, frozen = tmp_path / "dinov2_vits14_pretrain.pth", tmp_path / "frozen.pth"
    _generated_official_file(weights, "dinov2_vits14")
    _generated_official_file(frozen, "dinov2_vits14_reg")
    init, transform = "--model.init_args", "init_args.transform.init_args"
    small = {"resize": [126, 252]}
    args = [
        "fit",
        *(a for layer in ("base.yaml", "data/gta5_cityscapes.yaml", f"methods/{method}.yaml")
          for a in ("--config", str(RECIPES / layer))),
        f"{init}.encoder=dinov2_vits14", f"{init}.checkpoint={weights}",
        f"{init}.slide_window=[112, 112]", f"{init}.slide_stride=[56, 56]",
        "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        f"--data.init_args.source.init_args.root={data / 'gta5'}",
        f"--data.init_args.source.{transform}.resize={small['resize']}",
        f"--data.init_args.source.{transform}.crop=[112, 112]",
        f"--data.init_args.target.init_args.root={data / 'cityscapes'}",
        f"--data.init_args.target.{transform}.resize={small['resize']}",
        f"--data.init_args.target.{transform}.crop=[112, 112]",
        f"--data.init_args.val.init_args.root={data / 'cityscapes'}",
        f"--data.init_args.val.{transform}.resize={small['resize']}",
        f"--checkpoints.unlabelled.init_args.root={data / 'cityscapes'}",
        f"--checkpoints.unlabelled.{transform}.resize={small['resize']}",
        "--checkpoints.num_workers=0", f"--checkpoints.dirpath={tmp_path / 'ckpt'}",
        "--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    if method == "vfm_uda_pp":
        args += [f"{init}.distill_encoder=dinov2_vits14_reg", f"{init}.distill_checkpoint={frozen}"]
    cli_main(args)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(k.startswith("distill_encoder.") for k in state)  # frozen model left out
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss_masked", "val/mIoU"} <= set(header)
    if method == "vfm_uda_pp":
        assert "train/loss_distill_target" in header
