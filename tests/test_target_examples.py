"""The adverse-condition and domain-generalisation fronts (examples/cityscapes_to_acdc.py,
cityscapes_to_darkzurich.py, gta_to_many.py) and the recipe layers they resolve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lightning_uda.methods import HRDAModule, MICModule
from lightning_uda.recipes import lookup as get
from tests.helpers.examples import gta_and_cityscapes, load_example
from tests.helpers.trees import (
    acdc_tree,
    frame,
    synthia_tree,
    to_train_ids,
    write_jpg,
    write_png,
)

DATA = "data.init_args"
#: The DG data layers' sources (``data/<source>_dg.yaml``).
SOURCES = ("gta5", "gta5_synthia")


@pytest.fixture(scope="module")
def common():
    return load_example("_common")


@pytest.mark.parametrize("target", ["acdc", "darkzurich"])
def test_hrda_layers_undo_the_cityscapes_only_settings(common, target):
    files = common.recipe_files("cityscapes", "mic_hrda", target=target)
    assert [f.name for f in files][-2:] == ["mic_hrda.yaml", f"cityscapes_{target}.mic_hrda.yaml"]
    recipe = common.load_recipe(files)
    target_transform = get(recipe, f"{DATA}.target.init_args.transform.init_args")
    # MIC experiment 80: ACDC / Dark Zurich at 1920×1080 (960×540 × 2), no pseudo-label margins
    assert target_transform["resize"] == [540, 960] and target_transform["resize_scale"] == 2.0
    assert target_transform["pseudo_label_margins"] is None
    assert get(recipe, f"{DATA}.val.init_args.transform.init_args.resize") == [1080, 1920]
    assert get(recipe, "model.init_args.slide_window") == [1024, 1024]
    source = get(recipe, f"{DATA}.source.class_path")
    assert source == "lightning_uda.data.Cityscapes"


@pytest.mark.parametrize("method", ["daformer", "mic"])
def test_daformer_layers_drop_the_pseudo_label_crop(common, method):
    recipe = common.load_recipe(common.recipe_files("cityscapes", method, target="acdc"))
    assert get(recipe, "model.init_args.pseudo_label_crop") == [0, 0]
    assert get(recipe, f"{DATA}.val.init_args.transform.init_args.resize") == [540, 960]
    # without an adjustment layer the GTA5 → Cityscapes recipe is unchanged
    plain = common.load_recipe(common.recipe_files("gta5", method))
    assert get(plain, "model.init_args.pseudo_label_crop") == [15, 120]


def test_data_root_goes_to_each_dataset_by_class(common, tmp_path):
    front = load_example("gta_to_many")
    args = common.parse_args("x", ["--data-root", str(tmp_path)], methods=front.METHODS)
    files = common.recipe_files("gta5", args.method, target="dg", method_dir="dg")
    values, _ = common.overrides(args, "gta5", common.load_recipe(files), target="dg")
    assert values[f"{DATA}.source.init_args.root"] == str(tmp_path / "gta5")
    assert values[f"{DATA}.val.bdd100k.init_args.root"] == str(tmp_path / "bdd100k")
    assert values[f"{DATA}.val.mapillary.init_args.root"] == str(tmp_path / "mapillary")
    assert values["checkpoints.dirpath"].endswith("gta52dg-source_only_daformer/checkpoints")
    with pytest.raises(SystemExit, match="several validation sets"):
        common.overrides(
            common.parse_args("x", ["--print-recipe", "--eval-size", "64", "128"]),
            "gta5",
            common.load_recipe(files),
            target="dg",
        )


@pytest.mark.parametrize(
    ("front", "published"),
    [("cityscapes_to_acdc", "MIC (HRDA) 70.4"), ("cityscapes_to_darkzurich", "MIC (HRDA) 60.2")],
)
def test_print_recipe_shows_the_published_figures(front, published, capsys):
    module = load_example(front)
    module.main(["--method", "mic_hrda", "--print-recipe"])
    out = capsys.readouterr().out
    assert published in out and f"cityscapes_{front.split('_to_')[1]}.mic_hrda.yaml" in out
    with pytest.raises(SystemExit):  # DACS has no recipe for these benchmarks
        module.parse_args("x", ["--method", "dacs"], module.METHODS)


def _dg_tree(root: Path, fixtures_root: Path) -> None:
    gta_and_cityscapes(root, fixtures_root)
    rgb, ids, train_ids = frame(fixtures_root)
    for i in range(2):
        write_jpg(root / f"bdd100k/images/10k/val/b{i}.jpg", rgb)
        write_png(root / f"bdd100k/labels/sem_seg/masks/val/b{i}.png", train_ids)
        # a portrait Mapillary image: shorter side 128 → 512
        write_jpg(root / f"mapillary/validation/images/m{i}.jpg", np.ascontiguousarray(rgb[:, :96]))
        write_png(root / f"mapillary/validation/labels/m{i}.png", np.full((128, 96), 13, np.uint8))


def _fit_small(common, front, source: str, target: str, argv: list[str], small: dict) -> None:
    """The front's ``lightning-uda fit`` command for ``argv``, with ``small`` overrides (tiny
    crops and evaluation sizes: the recipes' 512² crops take minutes on a CPU)."""
    from lightning_uda.cli import main

    args = common.parse_args("x", argv, front.METHODS, list(getattr(front, "SOURCES", [])) or None)
    method_dir = "dg" if target == "dg" else "methods"
    files = common.recipe_files(source, args.method, target=target, method_dir=method_dir)
    values, _ = common.overrides(args, source, common.load_recipe(files), target=target)
    values.update(small)
    command = ["fit", *(a for f in files for a in ("--config", str(f)))]
    command += [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    main(command)


def _small(train: list[str], val: dict) -> dict:
    out = {"trainer.num_sanity_val_steps": 0, "model.init_args.checkpoint": None}
    for key in train:
        out[f"{DATA}.{key}.init_args.transform.init_args.resize"] = [64, 128]
        out[f"{DATA}.{key}.init_args.transform.init_args.crop"] = [64, 64]
    out.update({f"{DATA}.{k}.init_args.transform.init_args.{a}": v for k, (a, v) in val.items()})
    return out


def _argv(root: Path, out: Path) -> list[str]:
    argv = ["--data-root", str(root), "--encoder", "mit_b0", "--accelerator", "cpu"]
    argv += ["--max-steps", "1", "--val-every", "1", "--num-workers", "0"]
    return [*argv, "--output", str(out)]


@pytest.mark.fit
def test_dg_recipe_trains_and_logs_every_target(common, tmp_path, fixtures_root):
    _dg_tree(tmp_path / "data", fixtures_root)
    front = load_example("gta_to_many")
    val = {
        "val.cityscapes": ("resize", [64, 128]),
        "val.bdd100k": ("short_side", 64),
        "val.mapillary": ("short_side", 64),
    }
    small = _small(["source", "target"], val)
    _fit_small(common, front, "gta5", "dg", _argv(tmp_path / "data", tmp_path / "out"), small)
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = set(metrics.read_text().splitlines()[0].split(","))
    expected = {"val/mIoU", *(f"val/{n}/mIoU" for n in ("cityscapes", "bdd100k", "mapillary"))}
    assert expected <= header, sorted(header)


@pytest.mark.fit
@pytest.mark.slow
def test_acdc_recipe_trains(common, tmp_path, fixtures_root):
    data = tmp_path / "data"
    gta_and_cityscapes(data, fixtures_root)
    shutil.rmtree(data / "gta5")
    rgb, ids, _ = frame(fixtures_root)
    acdc_tree(data / "acdc", rgb, ids)
    front = load_example("cityscapes_to_acdc")
    argv = [*_argv(data, tmp_path / "out"), "--method", "daformer", "--select-by", "val/mIoU"]
    small = _small(["source", "target"], {"val": ("resize", [64, 128])})
    small["checkpoints.unlabelled.init_args.transform.init_args.resize"] = [64, 128]
    _fit_small(common, front, "cityscapes", "acdc", argv, small)
    names = sorted(p.name for p in (tmp_path / "out").rglob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("step") for n in names), names


@pytest.mark.parametrize(
    ("front", "method", "mode"),
    [
        ("cityscapes_to_acdc", "mic", "separate"),
        ("cityscapes_to_darkzurich", "mic_hrda", "separate"),
    ],
)
def test_mic_layers_set_mics_mask_mode_and_it_reaches_the_module(front, method, mode, capsys):
    # MIC experiment 80: 'separate' for Cityscapes → ACDC / Dark Zurich
    load_example(front).main(["--method", method, "--print-recipe"])
    config = yaml.safe_load(capsys.readouterr().out)
    init = config["model"]["init_args"]
    assert init["mask_mode"] == mode
    # the printed arguments build the module (a small encoder, no MiT-B5 weights file)
    kwargs = {k: v for k, v in init.items() if k not in ("checkpoint", "encoder", "arch")}
    if method == "mic":
        kwargs.update(arch="tiny_unet")
    else:
        kwargs.update(arch="hrda", encoder="mit_b0")
    cls = {"mic": MICModule, "mic_hrda": HRDAModule}[method]
    assert cls(**kwargs).hparams.mask_mode == mode


def test_mics_separate_mode_keeps_two_images_per_device(capsys):
    # 'separate' masks one source and one target image of each device's batch: the recipe's
    # batch of 2 must not split into 1 + 1 over two devices (the linear scaling rule instead)
    front = load_example("cityscapes_to_acdc")
    front.main(["--method", "mic", "--devices", "2", "--print-recipe"])
    out = capsys.readouterr().out
    config = yaml.safe_load(out)
    assert config["data"]["init_args"]["batch_size"] == 2
    assert "linear scaling rule" in out
    front.main(["--method", "daformer", "--devices", "2", "--print-recipe"])
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["batch_size"] == 1


def test_gta5_mic_recipes_keep_the_augmented_target(common):
    for method in ("mic", "mic_hrda"):
        recipe = common.load_recipe(common.recipe_files("gta5", method))
        assert get(recipe, "model.init_args.mask_mode") == "separatetrgaug"


def test_gta5_synthia_source_gets_each_part_s_root_and_prints_no_figure(common, tmp_path, capsys):
    front = load_example("gta_to_many")
    argv = ["--data-root", str(tmp_path), "--source", "gta5+synthia"]
    args = common.parse_args("x", argv, methods=front.METHODS, sources=list(front.SOURCES))
    files = common.recipe_files("gta5_synthia", args.method, target="dg", method_dir="dg")
    values, _ = common.overrides(args, "gta5_synthia", common.load_recipe(files), target="dg")
    parts = values[f"{DATA}.source.init_args.datasets"]
    assert [p["init_args"]["root"] for p in parts] == [
        str(tmp_path / d) for d in ("gta5", "synthia")
    ]
    assert values["checkpoints.dirpath"].endswith(
        "gta5_synthia2dg-source_only_daformer/checkpoints"
    )
    # the two DG data layers differ in their source only
    one, two = (common.load_recipe([common.RECIPES / f"data/{s}_dg.yaml"]) for s in SOURCES)
    for key in ("val", "val_primary", "target", "target_batch_size", "batch_size"):
        assert get(one, f"{DATA}.{key}") == get(two, f"{DATA}.{key}"), key
    front.main(["--source", "gta5+synthia", "--print-recipe"])
    out = capsys.readouterr().out
    assert "published: none quoted" in out and "GTA5 + SYNTHIA" in out
    assert "lightning_uda.data.ConcatSegmentation" in out and "data/synthia" in out


@pytest.mark.fit
def test_gta5_synthia_dg_recipe_trains_on_both_sources_and_scores_19_classes(
    common, tmp_path, fixtures_root, monkeypatch
):
    from lightning_uda.methods import SourceOnlyModule

    data = tmp_path / "data"
    _dg_tree(data, fixtures_root)
    rgb, ids, _ = frame(fixtures_root)
    synthia_tree(data / "synthia", rgb, to_train_ids(ids).astype(np.uint8))
    seen: list[tuple[list[int], dict]] = []
    step = SourceOnlyModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((batch["source"]["index"].tolist(), self.class_subsets))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SourceOnlyModule, "training_step", recording)
    front = load_example("gta_to_many")
    val = {
        "val.cityscapes": ("resize", [64, 128]),
        "val.bdd100k": ("short_side", 64),
        "val.mapillary": ("short_side", 64),
    }
    small = _small(["target"], val)
    argv = [*_argv(data, tmp_path / "out"), "--source", "gta5+synthia", "--max-steps", "3"]
    args = common.parse_args("x", argv, front.METHODS, sources=list(front.SOURCES))
    files = common.recipe_files("gta5_synthia", args.method, target="dg", method_dir="dg")
    values, _ = common.overrides(args, "gta5_synthia", common.load_recipe(files), target="dg")
    parts = values[f"{DATA}.source.init_args.datasets"]  # rooted under data/; frames made small
    for part in parts:
        part["init_args"]["transform"]["init_args"].update(resize=[64, 128], crop=[64, 64])
    small[f"{DATA}.source.init_args.datasets"] = parts
    _fit_small(common, front, "gta5_synthia", "dg", argv, small)
    indices = [i for batch, _ in seen for i in batch]
    assert len(seen) == 3 and {0, 1} & set(indices) and {2, 3} & set(indices), indices
    assert all(subsets == {"mIoU": list(range(19))} for _, subsets in seen)
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert "val/cityscapes/mIoU" in header
    assert not any("mIoU16" in key or "mIoU13" in key for key in header)  # SYNTHIA's subsets
