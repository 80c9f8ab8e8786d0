"""The example fronts over the recipe layers: resolved configs, --print-recipe, the random-init
refusal, the papers' settings (recipe fidelity) and a tiny fit."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shlex
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_uda.cli import main as cli_main
from tests.helpers.examples import EXAMPLES, gta_and_cityscapes, load_example
from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

METHODS = sorted(p.stem for p in (EXAMPLES / "recipes" / "methods").glob("*.yaml"))
#: method → its recipe's segmentor architecture
ARCHS = {
    m: yaml.safe_load((EXAMPLES / "recipes" / "methods" / f"{m}.yaml").read_text())["model"][
        "init_args"
    ]["arch"]
    for m in METHODS
}
DEEPLAB = [m for m in METHODS if ARCHS[m] == "deeplabv2"]


@pytest.fixture(scope="module")
def common():
    return load_example("_common")


def _print_recipe(common, *argv: str, source: str = "gta5") -> tuple[dict, str]:
    """The resolved config and the printed header of ``--print-recipe`` with ``argv``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.run(common.parse_args("x", [*argv, "--print-recipe"]), source=source)
    text = out.getvalue()
    return yaml.safe_load(text), "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))


def _model(config: dict) -> dict:
    return config["model"]["init_args"]


def _transform(config: dict, split: str) -> dict:
    if split == "unlabelled":
        return config["checkpoints"]["unlabelled"]["init_args"]["transform"]["init_args"]
    return config["data"]["init_args"][split]["init_args"]["transform"]["init_args"]


@pytest.mark.fit
def test_custom_method_zeroes_border_weights_and_trains(tmp_path):
    example = load_example("custom_method")
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


# ------------------------------------------------------------------ devices and scaling
@pytest.mark.parametrize(
    ("devices", "per_device", "lr", "schedule", "stop", "val_every"),
    [
        (1, 2, 2.5e-4, 250_000, 250_000, 5_000),  # the paper
        (2, 1, 2.5e-4, 250_000, 250_000, 5_000),  # global 2 kept: 1 + 1 per device
        (4, 2, 1e-3, 62_500, 62_500, 1_250),  # 2 does not split in 4: k = 4
    ],
)
def test_dacs_global_batch_and_linear_scaling(
    common, devices, per_device, lr, schedule, stop, val_every
):
    config, header = _print_recipe(
        common, "--method", "dacs", "--devices", str(devices), "--accelerator", "cpu"
    )
    assert config["data"]["init_args"]["batch_size"] == per_device
    assert _model(config)["lr"] == pytest.approx(lr)
    assert _model(config)["total_steps"] == schedule
    trainer = config["trainer"]
    assert (trainer["max_steps"], trainer["val_check_interval"]) == (stop, val_every)
    assert int(trainer["devices"]) == devices
    assert trainer["strategy"] == ("ddp" if devices > 1 else "auto")
    assert trainer["sync_batchnorm"] is False  # CPU: PyTorch has no SyncBatchNorm there
    assert ("linear scaling rule" in header) == (devices == 4)  # said, not silent


@pytest.mark.parametrize(
    ("devices", "lr", "d_lr", "schedule", "stop", "snapshot"),
    [
        (1, 2.5e-4, 1e-4, 250_000, 120_000, 2_000),
        (2, 5e-4, 2e-4, 125_000, 60_000, 1_000),
        (4, 1e-3, 4e-4, 62_500, 30_000, 500),
    ],
)
def test_advent_batch_one_scales_with_devices(common, devices, lr, d_lr, schedule, stop, snapshot):
    config, _ = _print_recipe(common, "--method", "advent", "--devices", str(devices))
    model = _model(config)
    assert config["data"]["init_args"]["batch_size"] == 1
    assert model["lr"] == pytest.approx(lr) and model["discriminator_lr"] == pytest.approx(d_lr)
    trainer = config["trainer"]
    assert (model["total_steps"], trainer["max_steps"], trainer["val_check_interval"]) == (
        schedule,
        stop,
        snapshot,
    )
    if devices > 1:  # separate backward passes leave parameters without gradients
        assert trainer["strategy"] == "ddp_find_unused_parameters_true"


def test_classmix_keeps_two_images_per_device(common):
    # ClassMix pairs images within a device's batch, so 2 + 2 on 2 devices is not 1 + 1
    config, _ = _print_recipe(common, "--method", "classmix", "--devices", "2")
    assert config["data"]["init_args"]["batch_size"] == 2
    assert _model(config)["lr"] == pytest.approx(5e-4)


# ------------------------------------------------------------------ the papers' settings
def test_deeplab_recipes_follow_the_papers(common):
    dacs, _ = _print_recipe(common, "--method", "dacs")
    model = _model(dacs)
    assert model["model_kwargs"] == {"dilations": [6, 12], "multi_level": False, "style": "caffe"}
    assert model["checkpoint"] == "pretrained/resnet101COCO-41f33a49.pth"
    assert model["teacher_bn"] == "train" and model["ema_alpha"] == 0.99
    assert model["mix_include_ignore"] and model["jitter_semantics"] == "kornia05"
    assert model["align_corners"] and model["normalization"] == "caffe"
    # one input space: every transform normalises as the model expects
    for split in ("source", "target", "val", "unlabelled"):
        assert _transform(dacs, split)["normalization"] == "caffe", split
    assert _transform(dacs, "source")["crop"] == [512, 512]
    assert _transform(dacs, "source")["resize"] == [720, 1280]
    for method in ("advent", "minent"):
        model = _model(_print_recipe(common, "--method", method)[0])
        assert model["model_kwargs"]["multi_level"] is True
        assert model["model_kwargs"]["dilations"] == [6, 12, 18, 24]
        assert model["aux_seg_weight"] == 0.1
        assert model["checkpoint"] == "pretrained/DeepLab_resnet_pretrained_imagenet.pth"
    advent, _ = _print_recipe(common, "--method", "advent")
    assert _model(advent)["aux_adv_weight"] == 2e-4
    assert _transform(advent, "source")["crop"] is None  # whole frames
    trainer = advent["trainer"]
    assert (_model(advent)["total_steps"], trainer["max_steps"], trainer["val_check_interval"]) == (
        250_000,
        120_000,
        2_000,
    )
    imagenet, _ = _print_recipe(common, "--method", "dacs", "--encoder-weights", "imagenet")
    model = _model(imagenet)
    assert model["model_kwargs"]["style"] == "torchvision" and model["checkpoint"] is None
    assert model["normalization"] == "imagenet" and model["encoder_weights"] == "imagenet"
    for split in ("source", "target", "val", "unlabelled"):
        assert _transform(imagenet, split)["normalization"] == "imagenet", split


def test_synthia_layer_keeps_synthia_frames_and_the_method_crops(common):
    config, _ = _print_recipe(common, "--method", "dacs", source="synthia")
    source = config["data"]["init_args"]["source"]
    assert source["class_path"] == "lightning_uda.data.SYNTHIA"
    assert _transform(config, "source")["resize"] == [760, 1280]
    assert _transform(config, "source")["crop"] == [512, 512]


def test_daformer_and_mic_recipes_follow_daformer(common):
    for method in ("daformer", "mic"):
        config, header = _print_recipe(common, "--method", method)
        model = _model(config)
        assert (model["arch"], model["encoder"], model["optimizer"]) == (
            "daformer",
            "mit_b5",
            "adamw",
        )
        assert (model["lr"], model["weight_decay"], model["head_lr_mult"]) == (6e-5, 0.01, 10)
        assert model["no_decay_keys"] == ["norm", "pos_block"]
        assert (model["warmup_steps"], model["warmup_ratio"], model["poly_power"]) == (
            1500,
            1e-6,
            1.0,
        )
        assert model["total_steps"] == 40_000 and config["trainer"]["max_steps"] == 40_000
        assert model["ema_alpha"] == 0.999 and model["pseudo_label_crop"] == [15, 120]
        assert model["feature_distance_weight"] == 0.005 and model["mix_mode"] == "batch_union"
        assert (model["jitter_strength"], model["jitter_p"]) == (0.2, 0.8)
        assert model["normalization"] == "imagenet"
        assert model["checkpoint"] == "pretrained/mit_b5.pth"
        # fidelity 7: mmseg's source CE, the mean over all pixels (void counting 0)
        assert model["source_ce_mean_over"] == "all"
        # source crops re-drawn by cat_max_ratio; target crops plain random crops (as DAFormer)
        assert _transform(config, "source")["cat_max_ratio"] == 0.75
        assert _transform(config, "target")["cat_max_ratio"] == 1.0
        assert _transform(config, "source")["flip"] and _transform(config, "target")["flip"]
        assert config["data"]["init_args"]["rare_class_sampling"]["temperature"] == 0.01
        # the differences that do not exist are not claimed
        assert "dropout and drop-path off" in header and "dropout active" not in header
        assert "re-draws target crops" not in header
        # 4 GPUs: 2 + 2 per device, linear scaling k = 4, the warm-up shortened with the schedule
        four, _ = _print_recipe(common, "--method", method, "--devices", "4")
        assert _model(four)["warmup_steps"] == 375 and _model(four)["total_steps"] == 10_000
        assert _model(four)["lr"] == pytest.approx(2.4e-4)
    mic = _model(_print_recipe(common, "--method", "mic")[0])
    # fidelity 4: MIC's block is 32 px at DAFormer's half resolution (64 is HRDA's)
    assert mic["masked_consistency_weight"] == 1.0 and mic["mask_block_size"] == 32
    slide, _ = _print_recipe(
        common, "--method", "daformer", "--inference", "slide", "--slide-stride", "256", "256"
    )
    assert _model(slide)["inference"] == "slide" and _model(slide)["slide_stride"] == [256, 256]


def _module(config: dict, **changes):
    """The method module the resolved config builds (no weights file needed)."""
    model = config["model"]
    module_path, _, name = model["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), name)
    kwargs = {k: v for k, v in _model(config).items() if k != "model"}
    return cls(**{**kwargs, **changes})


def test_daformer_recipe_builds_the_daformer_module(common):
    config, _ = _print_recipe(common, "--method", "daformer", "--encoder", "mit_b0")
    module = _module(config, checkpoint=None)
    assert type(module.model).__name__ == "DAFormer"
    assert module.normalization.name == "imagenet" and module.imnet_encoder is not None
    groups = module.make_optimizer(module.segmentor_param_groups()).param_groups
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert {g["name"]: g["lr"] for g in groups}["head"] == pytest.approx(6e-4)
    assert decay["backbone_no_decay"] == 0.0 and decay["backbone"] == 0.01
    named = dict(module.model.named_parameters())
    no_decay_ids = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(p) for n, p in named.items() if "norm" in n} == no_decay_ids


@pytest.mark.parametrize("method", DEEPLAB)
def test_every_deeplab_recipe_builds_its_module_with_the_papers_heads(common, method):
    config, _ = _print_recipe(common, "--method", method, "--encoder", "resnet18")
    module = _module(config, checkpoint=None)
    dilations = tuple(_model(config)["model_kwargs"]["dilations"])
    assert module.normalization.name == "caffe"
    assert module.model.encoder.maxpool.ceil_mode  # Caffe layout
    assert module.model.classifier.dilations == dilations
    if _model(config)["model_kwargs"]["multi_level"]:
        assert module.levels == ("main", "aux")
        assert module.model.aux_classifier.dilations == dilations
    else:
        assert module.model.aux_classifier is None


def test_two_branch_heads_are_the_references_and_say_why(common):
    # fidelity 6: DACS' and AdaptSegNet's classifiers return inside their loop over four
    # dilations: they sum the 6 and 12 branches only; AdvEnt's and FDA's sum all four
    for method, dilations in (("dacs", [6, 12]), ("adaptseg", [6, 12]), ("fda", [6, 12, 18, 24])):
        config, header = _print_recipe(common, "--method", method)
        assert _model(config)["model_kwargs"]["dilations"] == dilations, method
        if len(dilations) == 2:
            assert "returns inside the loop" in header.replace("\n# ", " "), method
    _, adaptseg = _print_recipe(common, "--method", "adaptseg")
    text = adaptseg.replace("\n# ", " ")
    assert "pretrained on ImageNet and then MS-COCO" in text and "not AdvEnt's" in text


def test_evaluation_sizes_are_the_references(common):
    # fidelity 1 and 5: LSD-seg evaluates at its 640×320 training size, FDA at 1344×576
    for method, size in (("lsd_seg", [320, 640]), ("fda", [576, 1344]), ("dacs", [512, 1024])):
        config, _ = _print_recipe(common, "--method", method)
        assert _transform(config, "val")["resize"] == size, method
        assert _transform(config, "unlabelled")["resize"] == size, method
    override, _ = _print_recipe(common, "--method", "fda", "--eval-size", "512", "1024")
    assert _transform(override, "val")["resize"] == [512, 1024]
    dacs, _ = _print_recipe(common, "--method", "dacs", "--eval-protocol", "dacs")
    assert _transform(dacs, "val")["protocol"] == "dacs"


def test_lsd_seg_recipe_is_the_references(common):
    config, _ = _print_recipe(common, "--method", "lsd_seg")
    model = _model(config)
    assert (model["arch"], model["encoder"], model["optimizer"]) == ("fpn", "vgg16", "adamw")
    assert (model["lr"], model["weight_decay"], model["head_lr_mult"]) == (1e-5, 0.0, 1.0)
    assert model["poly_power"] == 0.0  # constant learning rate
    assert (model["generator_lr"], model["generator_betas"]) == (1e-4, [0.7, 0.999])
    assert (model["adv_weight"], model["class_weight"], model["l1_weight"]) == (0.1, 0.1, 1.0)
    # fidelity 2: the reference sums every cross-entropy over pixels
    assert model["pixel_reduction"] == "sum"
    assert config["data"]["init_args"]["batch_size"] == 1
    for split in ("source", "target"):
        assert _transform(config, split)["resize"] == [320, 640]
        assert _transform(config, split)["crop"] is None
    module = _module(config, encoder="vgg11")
    assert type(module.model).__name__ == "FPN"


def test_fda_beta_is_one_of_the_papers_and_reaches_the_module(common):
    config, _ = _print_recipe(common, "--method", "fda", "--fda-beta", "0.05")
    model = _model(config)
    assert model["fda_beta"] == 0.05 and config["data"]["init_args"]["batch_size"] == 1
    assert _transform(config, "source")["crop"] == [512, 1024]
    assert (model["total_steps"], config["trainer"]["max_steps"]) == (150_000, 100_000)
    with pytest.raises(SystemExit):
        common.parse_args("x", ["--method", "fda", "--fda-beta", "0.2", "--print-recipe"])
    with pytest.raises(SystemExit, match="--method fda"):
        _print_recipe(common, "--method", "dacs", "--fda-beta", "0.05")


# ------------------------------------------------------------------ model selection
@pytest.mark.parametrize(
    ("method", "paper"),
    [("advent", "val/mIoU"), ("adaptseg", "val/mIoU"), ("dacs", "val/mIoU"),
     ("minent", "val/mIoU"), ("source_only", "val/mIoU"), ("lsd_seg", "val/mIoU"),
     ("daformer", "last"), ("mic", "last"), ("fda", None), ("dann", None), ("mcc", None)],
)  # fmt: skip
def test_selection_prints_the_truth_and_offers_the_papers(common, method, paper):
    # fidelity 3: the default is label-free; the paper's own choice is recorded and selectable
    config, header = _print_recipe(common, "--method", method)
    assert config["checkpoints"]["select_by"] == "val_unsup/entropy"
    assert config["checkpoints"]["paper_select_by"] == paper
    line = next(ln for ln in header.splitlines() if ln.startswith("# model selection:"))
    assert "model selection: val_unsup/entropy (label-free" in line
    said = {"val/mIoU": "its best snapshot by mIoU on the labelled target val", "last": "final"}
    assert said.get(paper, "no selection rule") in line
    chosen, header = _print_recipe(common, "--method", method, "--select-by", "paper")
    assert chosen["checkpoints"]["select_by"] == "paper"
    if paper is not None:
        assert f"model selection: paper = {paper}" in header


def test_print_recipe_command_is_the_same_config(common, capsys):
    """The printed `lightning-uda fit` line resolves to the very config the script runs."""
    config, header = _print_recipe(common, "--method", "advent", "--devices", "2")
    line = next(ln for ln in header.splitlines() if "the same run: lightning-uda " in ln)
    command = shlex.split(line.split("lightning-uda ", 1)[1])
    with pytest.raises(SystemExit):
        cli_main([*command, "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == config


@pytest.mark.parametrize("example", ["gta_to_cityscapes", "synthia_to_cityscapes"])
def test_print_recipe_for_every_method(common, example):
    source = "gta5" if example.startswith("gta") else "synthia"
    for method in METHODS:
        config, header = _print_recipe(common, "--method", method, "--devices", "4", source=source)
        assert config["model"]["class_path"].startswith("lightning_uda.methods."), method
        assert int(config["trainer"]["devices"]) == 4
        for key in ("# Initial weights:", "# Model selection:", "# model selection:",
                    "the same run: lightning-uda fit"):  # fmt: skip
            assert key in header, (method, key)
        assert f"/{source}_cityscapes.yaml" in header


# ------------------------------------------------------------------ random-init refusal
#: method → the file its refusal must name
INIT_FILES = {
    "dacs": "resnet101COCO-41f33a49.pth",
    "classmix": "resnet101COCO-41f33a49.pth",
    "source_only": "DeepLab_resnet_pretrained_imagenet.pth",
    "minent": "DeepLab_resnet_pretrained_imagenet.pth",
    "advent": "DeepLab_resnet_pretrained_imagenet.pth",
    "mcc": "DeepLab_resnet_pretrained_imagenet.pth",
    "dann": "DeepLab_resnet_pretrained_imagenet.pth",
    "adaptseg": "DeepLab_resnet_pretrained_init-f81d91e8.pth",
    "fda": "DeepLab_init.pth",
    "daformer": "mit_b5.pth",
    "mic": "mit_b5.pth",
    "lsd_seg": "ImageNet vgg16",
    "hrda": "mit_b5.pth",
    "mic_hrda": "mit_b5.pth",
    "vfm_uda": "dinov2_vitb14_pretrain.pth",
    "vfm_uda_pp_base": "dinov2_vitb14_pretrain.pth",
    "vfm_uda_large": "dinov2_vitl14_pretrain.pth",
    "vfm_uda_pp": "dinov2_vitl14_pretrain.pth",
}


def test_every_recipe_refuses_random_weights_naming_its_file(common, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pretrained/ here
    assert set(INIT_FILES) == set(METHODS)
    for method, name in INIT_FILES.items():
        recipe = common.load_recipe(common.recipe_files("gta5", method))
        with pytest.raises(SystemExit) as exit_info:
            common.refuse_random_init(method, recipe, from_scratch=False)
        message = str(exit_info.value.code)
        assert name in message and "--from-scratch" in message, method
        if ARCHS[method] != "deeplabv2":
            assert "Caffe" not in message, method
            if ARCHS[method] == "vfm":  # no ImageNet weights to offer for DINOv2
                assert "--encoder-weights" not in message, method
        else:  # the DeepLabV2 message, not the MiT one
            assert "Caffe layout" in message and "MiT" not in message, method
            assert "feature distance" not in message, method
        common.refuse_random_init(method, recipe, from_scratch=True)  # returns
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "mit_b5.pth").write_bytes(b"x")
    recipe = common.load_recipe(common.recipe_files("gta5", "mic"))
    common.refuse_random_init("mic", recipe, from_scratch=False)  # the file is there: returns


@pytest.mark.fit
@pytest.mark.parametrize(
    ("example", "method"),
    [("gta_to_cityscapes", "dacs"), ("gta_to_cityscapes", "advent"),
     ("gta_to_cityscapes", "adaptseg"), ("gta_to_cityscapes", "fda"),
     ("gta_to_cityscapes", "daformer"), ("synthia_to_cityscapes", "mic")],
)  # fmt: skip
def test_examples_refuse_random_weights_in_a_subprocess(example, method, tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py"), "--method", method,
         "--data-root", str(tmp_path / "nowhere")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()
    message = "\n".join(last[-6:])
    assert INIT_FILES[method] in message, done.stderr
    assert ("Caffe layout" in message) == (method not in ("daformer", "mic")), done.stderr


def test_resume_without_a_checkpoint_is_an_error_naming_the_folder(common, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    with pytest.raises(SystemExit, match=rf"no last\.ckpt in {folder}"):
        common.resume_checkpoint(folder)
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"x")
    assert common.resume_checkpoint(folder) == str(folder / "last.ckpt")
    config, header = _print_recipe(common, "--method", "dacs", "--resume", str(folder))
    assert f"--ckpt_path={folder / 'last.ckpt'}" in header and config["ckpt_path"]


def test_front_flags_are_overrides_of_the_recipe_keys(common, tmp_path):
    config, _ = _print_recipe(
        common, "--method", "dacs", "--data-root", str(tmp_path), "--logger", "wandb",
        "--output", str(tmp_path / "out"), "--select-by", "val/mIoU", "--seed", "3",
        "--num-workers", "1", "--checkpoint", "weights.pth", "--monitor-pseudo-labels",
    )  # fmt: skip
    data = config["data"]["init_args"]
    assert data["source"]["init_args"]["root"] == str(tmp_path / "gta5")
    for split in ("target", "val"):
        assert data[split]["init_args"]["root"] == str(tmp_path / "cityscapes")
    assert config["checkpoints"]["unlabelled"]["init_args"]["root"] == str(tmp_path / "cityscapes")
    logger = config["trainer"]["logger"]
    assert logger["class_path"].endswith("WandbLogger")
    assert logger["init_args"]["name"] == "gta52cityscapes-dacs"
    assert config["checkpoints"]["select_by"] == "val/mIoU"
    assert config["checkpoints"]["dirpath"] == str(
        tmp_path / "out/gta52cityscapes-dacs/checkpoints"
    )
    assert config["seed_everything"] == 3 and _model(config)["seed"] == 3 and data["seed"] == 3
    assert data["num_workers"] == 1 and _model(config)["checkpoint"] == "weights.pth"
    assert data["target_monitor_labels"] and data["target"]["init_args"]["return_mask"]


# ------------------------------------------------------------------ a real (tiny) run
@pytest.mark.fit
@pytest.mark.slow
def test_gta_example_trains_and_validates_on_real_format_files(common, tmp_path, fixtures_root):
    gta_and_cityscapes(tmp_path / "data", fixtures_root)
    args = common.parse_args(
        "x",
        [
            "--data-root", str(tmp_path / "data"), "--method", "dacs", "--encoder", "resnet18",
            "--from-scratch", "--accelerator", "cpu", "--max-steps", "1", "--val-every", "1",
            "--num-workers", "0", "--output", str(tmp_path / "out"), "--monitor-pseudo-labels",
            "--log-every", "1",
        ],
    )  # fmt: skip
    common.run(args, source="gta5")
    checkpoints = tmp_path / "out" / "gta52cityscapes-dacs" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    # ranked by the label-free default, with its score in the name
    assert [p.name for p in checkpoints.glob("step*-entropy*-miou*.ckpt")]
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"pseudo/accuracy", "pseudo/confident_fraction", "val/mIoU"} <= set(header)
    assert "val_unsup/entropy" in header
