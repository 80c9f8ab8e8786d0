"""The shipped examples: resolved recipes, --print-recipe, the random-init refusal, a tiny fit."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .methods.helpers import cpu_trainer, tiny_module_kwargs, toy_datamodule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FRAME = "frankfurt_000000_000294"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def common():
    return _load("_common")


def test_custom_method_zeroes_border_weights_and_trains(tmp_path):
    example = _load("custom_method")
    module = example.BorderMaskedDACS(border=2, **tiny_module_kwargs())
    images = torch.randn(2, 3, 16, 16)
    _, weights = module.pseudo_label(images)
    assert torch.all(weights[:, :2] == 0) and torch.all(weights[:, :, -2:] == 0)
    # one class choice for the batch: the same classes are pasted into every image
    labels = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    mask = module.mix_mask(labels)
    chosen = [set(labels[b][mask[b]].tolist()) for b in range(2)]
    assert chosen[0] == chosen[1] and len(chosen[0]) == 2  # ceil(3/2) of the batch's classes
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy_datamodule())
    assert torch.isfinite(trainer.callback_metrics["train/loss_mixed"])


# ------------------------------------------------------------------ resolved recipes
@pytest.mark.parametrize(
    ("devices", "per_device", "global_batch", "lr", "schedule", "stop"),
    [
        (1, 2, 2, 2.5e-4, 250_000, 250_000),  # the paper
        (2, 1, 2, 2.5e-4, 250_000, 250_000),  # global 2 kept: 1 + 1 per device
        (4, 2, 8, 1e-3, 62_500, 62_500),  # 2 does not split in 4: k = 4
    ],
)
def test_dacs_global_batch_and_linear_scaling(
    common, devices, per_device, global_batch, lr, schedule, stop
):
    r = common.resolve_recipe("dacs", devices=devices, checkpoint="coco.pth")
    assert (r.batch_per_device, r.global_batch) == (per_device, global_batch)
    assert r.lr == pytest.approx(lr)
    assert (r.schedule_steps, r.stop_steps) == (schedule, stop)
    assert r.module_kwargs()["lr"] == pytest.approx(lr)
    assert r.module_kwargs()["total_steps"] == schedule
    assert r.sync_batchnorm == (devices > 1)
    assert (r.scale != 1) == bool(r.notes)  # the scaling is said, not silent


@pytest.mark.parametrize(
    ("devices", "per_device", "lr", "d_lr", "schedule", "stop", "snapshot"),
    [
        (1, 1, 2.5e-4, 1e-4, 250_000, 120_000, 2_000),
        (2, 1, 5e-4, 2e-4, 125_000, 60_000, 1_000),
        (4, 1, 1e-3, 4e-4, 62_500, 30_000, 500),
    ],
)
def test_advent_batch_one_scales_with_devices(
    common, devices, per_device, lr, d_lr, schedule, stop, snapshot
):
    r = common.resolve_recipe("advent", devices=devices, checkpoint="imagenet.pth")
    assert r.batch_per_device == per_device and r.global_batch == devices
    assert r.lr == pytest.approx(lr) and r.discriminator_lr == pytest.approx(d_lr)
    assert (r.schedule_steps, r.stop_steps, r.snapshot_every) == (schedule, stop, snapshot)


def test_classmix_keeps_two_images_per_device(common):
    # ClassMix pairs images within a device's batch, so 2 + 2 on 2 devices is not 1 + 1
    r = common.resolve_recipe("classmix", devices=2, checkpoint="coco.pth")
    assert r.batch_per_device == 2 and r.global_batch == 4 and r.lr == pytest.approx(5e-4)


def test_recipes_follow_the_papers(common):
    dacs = common.resolve_recipe("dacs", checkpoint="x.pth").module_kwargs()
    assert dacs["model_kwargs"] == {"dilations": (6, 12), "multi_level": False, "style": "caffe"}
    assert dacs["normalization"] == "caffe" and dacs["teacher_bn"] == "train"
    assert dacs["mix_include_ignore"] and dacs["jitter_semantics"] == "kornia05"
    assert dacs["align_corners"] and dacs["ema_alpha"] == 0.99
    for method in ("advent", "minent"):
        kwargs = common.resolve_recipe(method, checkpoint="x.pth").module_kwargs()
        assert kwargs["model_kwargs"]["multi_level"] is True
        assert kwargs["model_kwargs"]["dilations"] == (6, 12, 18, 24)
        assert kwargs["aux_seg_weight"] == 0.1
    advent = common.RECIPES["advent"]
    assert advent.module_kwargs["aux_adv_weight"] == 2e-4
    assert common.RECIPES["minent"].module_kwargs["aux_ent_weight"] == 2e-4
    assert (advent.schedule_steps, advent.stop_steps, advent.snapshot_every) == (
        250_000,
        120_000,
        2_000,
    )
    imagenet = common.resolve_recipe("dacs", encoder_weights="imagenet")
    assert imagenet.style == "torchvision" and imagenet.normalization == "imagenet"


def test_daformer_and_mic_recipes_follow_daformer(common):
    for method in ("daformer", "mic"):
        r = common.resolve_recipe(method, checkpoint="mit_b5.pth")
        kwargs = r.module_kwargs()
        assert (kwargs["arch"], kwargs["encoder"], kwargs["optimizer"]) == (
            "daformer",
            "mit_b5",
            "adamw",
        )
        assert (kwargs["lr"], kwargs["weight_decay"], kwargs["head_lr_mult"]) == (6e-5, 0.01, 10)
        assert tuple(kwargs["no_decay_keys"]) == ("norm", "pos_block")
        assert (kwargs["warmup_steps"], kwargs["warmup_ratio"], kwargs["poly_power"]) == (
            1500,
            1e-6,
            1.0,
        )
        assert kwargs["total_steps"] == 40_000 and r.stop_steps == 40_000
        assert kwargs["ema_alpha"] == 0.999 and kwargs["pseudo_label_crop"] == (15, 120)
        assert kwargs["feature_distance_weight"] == 0.005 and kwargs["mix_mode"] == "batch_union"
        assert (kwargs["jitter_strength"], kwargs["jitter_p"]) == (0.2, 0.8)
        assert kwargs["normalization"] == "imagenet" and "model_kwargs" not in kwargs
        assert r.recipe.rare_class_sampling
        assert (r.source_preset, r.target_preset) == (
            "gta5_train_daformer",
            "cityscapes_train_daformer",
        )
        # 4 GPUs: 2 + 2 per device, linear scaling k = 4, the warm-up shortened with the schedule
        four = common.resolve_recipe(method, devices=4, checkpoint="mit_b5.pth")
        assert four.module_kwargs()["warmup_steps"] == 375 and four.schedule_steps == 10_000
        assert four.lr == pytest.approx(2.4e-4)
    assert common.RECIPES["mic"].module_kwargs["masked_consistency_weight"] == 1.0
    assert common.RECIPES["mic"].module_cls.__name__ == "MICModule"
    slide = common.resolve_recipe("daformer", inference="slide", slide_stride=(256, 256))
    assert slide.module_kwargs()["inference"] == "slide"
    assert "sliding windows 512×512 every 256×256" in slide.format()


def test_daformer_recipe_builds_the_daformer_module(common):
    r = common.resolve_recipe("daformer", checkpoint="x.pth", encoder="mit_b0")
    module = r.recipe.module_cls(num_classes=19, **r.module_kwargs())
    assert type(module.model).__name__ == "DAFormer"
    assert module.normalization.name == "imagenet" and module.imnet_encoder is not None
    groups = module.make_optimizer(module.segmentor_param_groups()).param_groups
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert {g["name"]: g["lr"] for g in groups}["head"] == pytest.approx(6e-4)
    assert decay["backbone_no_decay"] == 0.0 and decay["backbone"] == 0.01
    named = dict(module.model.named_parameters())
    no_decay_ids = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(p) for n, p in named.items() if "norm" in n} == no_decay_ids


def test_daformer_refuses_random_mit_weights(common):
    args = common.parse_args("x", ["--method", "daformer", "--data-root", "/nowhere"])
    resolved = common.resolve_recipe("daformer")
    with pytest.raises(SystemExit, match="mit_b5.pth"):
        common.refuse_random_init(resolved, args)


def test_every_recipe_builds_its_module_with_the_papers_heads(common):
    for method, recipe in common.RECIPES.items():
        if recipe.arch != "deeplabv2":
            continue
        r = common.resolve_recipe(method, checkpoint="x.pth", encoder="resnet18")
        module = r.recipe.module_cls(num_classes=19, **r.module_kwargs())
        assert module.normalization.name == "caffe", method
        assert module.model.encoder.maxpool.ceil_mode, method  # Caffe layout
        if recipe.multi_level:
            assert module.model.aux_classifier is not None and module.levels == ("main", "aux")
            assert len(module.model.aux_classifier.branches) == 4
        else:
            assert module.model.aux_classifier is None


@pytest.mark.parametrize("example", ["gta_to_cityscapes", "synthia_to_cityscapes"])
def test_print_recipe_for_every_method(common, example, capsys):
    script = _load(example)
    for method in common.RECIPES:
        args = common.parse_args("x", ["--method", method, "--devices", "4", "--print-recipe"])
        source = "gta5" if example.startswith("gta") else "synthia"
        common.run(args, source_factory=None, source_name=source)
        out = capsys.readouterr().out
        for key in (
            "initial weights",
            "input normalisation",
            "batch",
            "learning rates",
            "iterations",
            "teacher",
            "evaluation",
            "published mIoU",
            "differs from the paper",
        ):
            assert key in out, (method, key)
        assert "per device × 4" in out
        assert common.RECIPES[method].init[0] in out
    assert hasattr(script, "parse_args")


def test_examples_refuse_random_deeplab_weights(common):
    args = common.parse_args("x", ["--data-root", "/nowhere", "--method", "advent"])
    resolved = common.resolve_recipe("advent")
    with pytest.raises(SystemExit) as exit_info:
        common.refuse_random_init(resolved, args)
    message = str(exit_info.value.code)
    assert "DeepLab_resnet_pretrained_imagenet.pth" in message and "ADVENT" in message
    assert "--checkpoint" in message and "--from-scratch" in message
    dacs = common.resolve_recipe("dacs")
    with pytest.raises(SystemExit, match="resnet101COCO-41f33a49.pth"):
        common.refuse_random_init(dacs, common.parse_args("x", ["--data-root", "/d"]))
    allowed = common.parse_args("x", ["--data-root", "/d", "--from-scratch"])
    common.refuse_random_init(dacs, allowed)  # returns


def test_resume_without_a_checkpoint_is_an_error_naming_the_folder(common, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    with pytest.raises(SystemExit, match=rf"no last\.ckpt in {folder}"):
        common.resume_checkpoint(folder)
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"x")
    assert common.resume_checkpoint(folder) == str(folder / "last.ckpt")


# ------------------------------------------------------------------ a real (tiny) run
def _gta_and_cityscapes(root: Path, fixtures: Path) -> None:
    mini = fixtures / "cityscapes_mini"
    city = root / "cityscapes"
    for split in ("train", "val"):
        for kind, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
            folder = city / kind / split / "frankfurt"
            folder.mkdir(parents=True)
            for i in range(2):
                shutil.copy(
                    mini / kind / "val" / "frankfurt" / f"{FRAME}_{suffix}.png",
                    folder / f"frankfurt_000000_00000{i}_{suffix}.png",
                )
    ids = np.array(Image.open(mini / "gtFine/val/frankfurt" / f"{FRAME}_gtFine_labelIds.png"))
    (root / "gta5" / "images").mkdir(parents=True)
    (root / "gta5" / "labels").mkdir()
    for i in range(2):
        shutil.copy(
            mini / "leftImg8bit/val/frankfurt" / f"{FRAME}_leftImg8bit.png",
            root / "gta5" / "images" / f"0000{i}.png",
        )
        # a paletted PNG whose indices are the ids (saved without a palette, Pillow would
        # rewrite the indices: the label check caught exactly that here)
        label = Image.fromarray(ids)
        label.putpalette([(v * 37) % 256 for v in range(768)])
        label.save(root / "gta5" / "labels" / f"0000{i}.png")


@pytest.mark.slow
def test_gta_example_trains_and_validates_on_real_format_files(common, tmp_path, fixtures_root):
    _gta_and_cityscapes(tmp_path / "data", fixtures_root)
    args = common.parse_args(
        "x",
        [
            "--data-root",
            str(tmp_path / "data"),
            "--method",
            "dacs",
            "--encoder",
            "resnet18",
            "--from-scratch",
            "--accelerator",
            "cpu",
            "--max-steps",
            "1",
            "--val-every",
            "1",
            "--num-workers",
            "0",
            "--output",
            str(tmp_path / "out"),
            "--monitor-pseudo-labels",
            "--log-every",
            "1",
        ],
    )
    from lightning_uda.data import GTA5

    common.run(
        args,
        source_factory=lambda root, **kwargs: GTA5(root / "gta5", **kwargs),
        source_name="gta5",
    )
    assert list((tmp_path / "out").rglob("last.ckpt"))
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"pseudo/accuracy", "pseudo/confident_fraction", "val/mIoU"} <= set(header)


def test_fda_beta_is_one_of_the_papers_and_reaches_the_module(common):
    args = common.parse_args("x", ["--method", "fda", "--fda-beta", "0.05", "--print-recipe"])
    r = common.resolve_recipe("fda", overrides=common.method_overrides(args))
    assert r.module_kwargs()["fda_beta"] == 0.05 and "fda_beta=0.05" in r.format()
    assert r.recipe.crop == (512, 1024) and r.recipe.batch_size == 1
    assert (r.schedule_steps, r.stop_steps) == (150_000, 100_000)
    with pytest.raises(SystemExit):
        common.parse_args("x", ["--method", "fda", "--fda-beta", "0.2", "--print-recipe"])
    wrong = common.parse_args("x", ["--method", "dacs", "--fda-beta", "0.05", "--print-recipe"])
    with pytest.raises(SystemExit, match="--method fda"):
        common.method_overrides(wrong)


def test_lsd_seg_recipe_is_the_references(common):
    r = common.resolve_recipe("lsd_seg", checkpoint="vgg16.pth")
    kwargs = r.module_kwargs()
    assert (kwargs["arch"], kwargs["encoder"], kwargs["optimizer"]) == ("fpn", "vgg16", "adamw")
    assert (kwargs["lr"], kwargs["weight_decay"], kwargs["head_lr_mult"]) == (1e-5, 0.0, 1.0)
    assert kwargs["poly_power"] == 0.0  # constant learning rate
    assert (kwargs["generator_lr"], tuple(kwargs["generator_betas"])) == (1e-4, (0.7, 0.999))
    assert (kwargs["adv_weight"], kwargs["class_weight"], kwargs["l1_weight"]) == (0.1, 0.1, 1.0)
    assert r.recipe.resize == (320, 640) and r.recipe.batch_size == 1
    assert "640×320" in r.format()
    module = r.recipe.module_cls(num_classes=19, **{**kwargs, "encoder": "vgg11"})
    assert type(module.model).__name__ == "FPN"
