"""The examples' command line: a front over the recipe layers in ``examples/recipes/``.

The flags become overrides of the keys of ``base.yaml``, ``data/<source>_cityscapes.yaml`` and
``methods/<method>.yaml``, and the run is ``lightning-uda fit`` on them (:mod:`lightning_uda.cli`),
so both ways of starting a run rank checkpoints and log alike. ``--devices N`` (per node) and
``--num-nodes M`` keep the recipe's global batch where it divides by N × M processes, else the
per-device batch with the linear scaling rule (docs/recipes.md, docs/cluster.md). Any other recipe
key is passed through as ``--section.key=value`` (e.g. ``--trainer.gradient_clip_val=1.0``).
``--print-recipe`` prints the resolved config.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from _weights import (  # a sibling of this file
    FROM_SCRATCH_NOTE,
    refuse_random_init,
    starts_from_random_weights,
    weights_overrides,
)

from lightning_uda.cli import SELECT_BY, main
from lightning_uda.extras import require
from lightning_uda.recipes import lookup as get
from lightning_uda.recipes import merge

RECIPES = Path(__file__).resolve().parent / "recipes"
METHODS = sorted(p.stem for p in (RECIPES / "methods").glob("*.yaml"))
#: ClassMix pairs images within a device's batch.
MIN_BATCH_PER_DEVICE = {"classmix": 2}
#: MIC's mask modes that build the masked batch from one source and one target image.
_TWO_IMAGE_MASK_MODES = ("separate", "separateaug")
#: Methods whose separate segmentor and discriminator backward passes leave parameters without
#: gradients in one of them: DDP must be told (the modules check it).
ADVERSARIAL = ("advent", "adaptseg", "lsd_seg")
_DATA = "data.init_args"


def parse_args(
    description: str,
    argv: list[str] | None = None,
    methods: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> argparse.Namespace:
    """The fronts' flags; ``methods`` limits ``--method`` (default: every method layer);
    ``sources`` adds ``--source`` with these choices (default the first) for fronts that offer
    several source data layers."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--data-root", type=Path, help="folder with the datasets (for training)")
    choices = list(methods or METHODS)
    add("--method", choices=choices, default="dacs" if "dacs" in choices else choices[0])
    if sources:
        add("--source", choices=list(sources), default=sources[0], help="training source")
    add("--encoder", default=None, help="backbone (default the recipe's; e.g. resnet18, mit_b0)")
    add("--devices", type=int, default=1, help="GPUs (or CPU processes) per node")
    add(
        "--num-nodes",
        type=int,
        default=1,
        help="machines, each running --devices processes (torchrun, SLURM: docs/cluster.md)",
    )
    add(
        "--global-batch",
        type=int,
        default=None,
        metavar="G",
        help="images per domain per step over all processes (default: the recipe's where it "
        "splits, else its per-device batch); learning rates and iterations scale linearly",
    )
    add("--accelerator", default="auto")
    add("--precision", default=None, help="e.g. bf16-mixed on Ampere+ (default the recipe's)")
    add("--max-steps", type=int, default=None, help="stop earlier (schedule kept)")
    add("--val-every", type=int, default=None, help="default: the recipe's snapshot rate")
    add("--log-every", type=int, default=None, help="steps between logged scalars")
    add("--eval-protocol", choices=["full", "dacs"], default=None, help="default: full")
    add("--eval-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    add("--inference", choices=["whole", "slide"], default=None)
    add("--slide-window", type=int, nargs=2, default=None, metavar=("H", "W"))
    add("--slide-stride", type=int, nargs=2, default=None, metavar=("H", "W"))
    add("--logger", choices=["csv", "wandb"], default="csv")
    add("--project", default="lightning_uda", help="W&B project")
    add("--checkpoint", default=None, help="initial weights (default: the recipe's file)")
    add("--encoder-weights", default=None, help="'imagenet': downloaded, not the papers' init")
    add("--style", choices=["caffe", "torchvision"], default=None, help="DeepLabV2 layout")
    add(
        "--from-scratch",
        action="store_true",
        help="allow random initial weights: a plumbing check, not a result (the recipes' "
        "learning rates are for pretrained weights; the loss rises at first)",
    )
    add("--class-stats", default=None, help="rare-class statistics cache (daformer, mic)")
    add("--fda-beta", type=float, choices=[0.01, 0.05, 0.09], default=None)
    add(
        "--select-by",
        choices=SELECT_BY,
        default=None,
        help="default val_unsup/entropy (label-free); 'paper': as the method's paper",
    )
    add("--monitor-pseudo-labels", action="store_true", help="log pseudo-label accuracy")
    add("--print-recipe", action="store_true", help="print the resolved config and exit")
    add("--output", type=Path, default=Path("outputs"))
    add(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="resume from DIR/last.ckpt (default DIR: OUTPUT/RUN/checkpoints)",
    )
    add("--num-workers", type=int, default=None)
    add("--seed", type=int, default=None)
    args, extra = parser.parse_known_args(argv)
    for token in extra:  # recipe keys the flags do not cover, passed to lightning-uda fit as given
        key = token.split("=", 1)[0]
        if not (token.startswith("--") and "=" in token and "." in key):
            parser.error(
                f"unrecognized argument {token!r}: the front's flags are listed by --help; other "
                "recipe keys are passed as --section.key=value (e.g. "
                "--trainer.gradient_clip_val=1.0)"
            )
    args.recipe_overrides = extra
    if not args.print_recipe and args.data_root is None:
        parser.error("--data-root is required (unless --print-recipe)")
    for flag, value in (("--devices", args.devices), ("--num-nodes", args.num_nodes)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    return args


def recipe_files(
    source: str, method: str, target: str = "cityscapes", method_dir: str = "methods"
) -> list[Path]:
    """The layers of a run, in order: base, ``data/<source>_<target>.yaml``, the method layer,
    and ``data/<source>_<target>.<method>.yaml`` when the data layer adjusts that method (e.g.
    Cityscapes-only settings undone for ACDC)."""
    layers = ["base.yaml", f"data/{source}_{target}.yaml", f"{method_dir}/{method}.yaml"]
    if (RECIPES / f"data/{source}_{target}.{method}.yaml").is_file():
        layers.append(f"data/{source}_{target}.{method}.yaml")
    return [RECIPES / layer for layer in layers]


#: The folder under ``--data-root`` each dataset class is read from.
DATA_FOLDERS = {
    "GTA5": "gta5",
    "SYNTHIA": "synthia",
    "Cityscapes": "cityscapes",
    "ACDC": "acdc",
    "DarkZurich": "dark_zurich",
    "BDD100K": "bdd100k",
    "MapillaryVistas": "mapillary",
}


def dataset_keys(recipe: dict[str, Any]) -> list[str]:
    """Dotted keys of the recipe's datasets (``data.init_args.source``, …, one per named
    validation set, ``checkpoints.unlabelled``): the nodes holding ``class_path``."""
    keys = [f"{_DATA}.{name}" for name in ("source", "target", "test", "predict")]
    val = get(recipe, f"{_DATA}.val", None)
    if isinstance(val, dict) and "class_path" not in val:
        keys += [f"{_DATA}.val.{name}" for name in val]
    else:
        keys.append(f"{_DATA}.val")
    keys.append("checkpoints.unlabelled")
    return [k for k in keys if isinstance(get(recipe, k, None), dict)]


def val_keys(recipe: dict[str, Any]) -> list[str]:
    """The dotted keys of the validation set(s) (one per named set)."""
    return [k for k in dataset_keys(recipe) if k.startswith(f"{_DATA}.val")]


def load_recipe(files: list[Path]) -> dict[str, Any]:
    """The layers merged as LightningCLI merges them."""
    recipe: dict[str, Any] = {}
    for path in files:
        recipe = merge(recipe, yaml.safe_load(path.read_text()) or {})
    return recipe


def overrides(
    args: argparse.Namespace, source: str, recipe: dict[str, Any], target: str = "cityscapes"
) -> tuple[dict[str, Any], list[str]]:
    """The flags as ``{dotted key: value}`` overrides of the recipe, and notes to print."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    model = "model.init_args"
    method = args.method
    init = dict(get(recipe, model, {}))
    devices, nodes = max(1, args.devices), args.num_nodes
    world = devices * nodes  # processes: the global batch splits over all of them
    # the linear scaling rule
    batch = get(recipe, f"{_DATA}.batch_size")
    least = MIN_BATCH_PER_DEVICE.get(method, 1)
    if init.get("mask_mode") in _TWO_IMAGE_MASK_MODES:  # ACDC / Dark Zurich MIC
        least = max(least, 2)
    per_device = batch // world if batch % world == 0 else 0
    scale = 1.0
    where = f"{devices} device{'s' if devices > 1 else ''}" + (f" × {nodes} nodes" * (nodes > 1))
    if args.global_batch is not None:  # the user's global batch: it must split evenly
        per_device = _split_global_batch(args.global_batch, devices, nodes, least)
        scale = args.global_batch / batch
        notes.append(
            f"--global-batch {args.global_batch}: {per_device} + {per_device} per device × "
            f"{where}; linear scaling rule with k = {scale:g} (learning rates × {scale:g}, "
            f"iterations ÷ {scale:g})"
        )
    elif per_device < least:
        per_device = max(batch, least)
        scale = per_device * world / batch
        notes.append(
            f"the recipe's global batch of {batch} + {batch} does not split into {world} "
            f"process batches ({where}) of at least {least}: keeping {per_device} + {per_device} "
            f"per device (global {per_device * world}) and applying the linear scaling rule with "
            f"k = {scale:g}: learning rates × {scale:g}, iterations ÷ {scale:g}"
        )
    elif world > 1:
        notes.append(
            f"global batch {batch} + {batch} = {per_device} + {per_device} per device × {where}"
        )
    out[f"{_DATA}.batch_size"] = per_device
    for key in ("lr", "discriminator_lr", "generator_lr"):
        if key in init:
            out[f"{model}.{key}"] = init[key] * scale
    steps = {
        f"{model}.total_steps": init.get("total_steps"),
        "trainer.max_steps": get(recipe, "trainer.max_steps"),
        "trainer.val_check_interval": get(recipe, "trainer.val_check_interval"),
        f"{model}.warmup_steps": init.get("warmup_steps") or None,
    }
    out.update({k: max(1, round(v / scale)) for k, v in steps.items() if v is not None})
    if args.max_steps is not None:
        out["trainer.max_steps"] = min(out["trainer.max_steps"], args.max_steps)
        notes.append(
            f"--max-steps {args.max_steps}: training stops at {out['trainer.max_steps']} "
            "(schedule unchanged)"
        )
    if args.val_every is not None:
        out["trainer.val_check_interval"] = args.val_every
    if nodes > 1:
        out["trainer.num_nodes"] = nodes
    if world > 1:
        out["trainer.strategy"] = (
            "ddp_find_unused_parameters_true" if method in ADVERSARIAL else "ddp"
        )
        # DeepLabV2 and the DAFormer head normalise with batch statistics: share them (PyTorch
        # has no SyncBatchNorm on CPUs)
        gpu = torch.cuda.is_available() if args.accelerator == "auto" else args.accelerator
        out["trainer.sync_batchnorm"] = gpu in (True, "gpu", "cuda")
    simple = {
        "trainer.devices": devices,
        "trainer.accelerator": args.accelerator,
        "trainer.precision": args.precision,
        "trainer.log_every_n_steps": args.log_every,
        f"{model}.encoder": args.encoder,
        f"{model}.inference": args.inference,
        f"{model}.slide_window": args.slide_window,
        f"{model}.slide_stride": args.slide_stride,
        "checkpoints.select_by": args.select_by,
        "seed_everything": args.seed,
        f"{model}.seed": args.seed,
        f"{_DATA}.seed": args.seed,
        f"{_DATA}.num_workers": args.num_workers,
        "checkpoints.num_workers": args.num_workers,
    }
    if args.eval_protocol is not None:
        for key in val_keys(recipe):
            out[f"{key}.init_args.transform.init_args.protocol"] = args.eval_protocol
    out.update({k: v for k, v in simple.items() if v is not None})
    if args.encoder is not None and args.encoder != init.get("encoder"):
        notes.append(
            f"encoder {args.encoder}: not the recipe's {init.get('encoder')} (nor its "
            "initial weights)"
        )
    if args.eval_size is not None:
        if len(val_keys(recipe)) > 1:
            raise SystemExit(
                "--eval-size sets one size; this recipe has several validation sets of different "
                "sizes: edit their transforms in the data layer instead"
            )
        for key in (*val_keys(recipe), "checkpoints.unlabelled"):
            out[f"{key}.init_args.transform.init_args.resize"] = list(args.eval_size)
    weights_overrides(args, init, out)
    if args.fda_beta is not None:
        if method != "fda":
            raise SystemExit(f"--fda-beta applies to --method fda, not {method}")
        out[f"{model}.fda_beta"] = args.fda_beta
    if args.class_stats is not None:
        if not get(recipe, f"{_DATA}.rare_class_sampling"):
            raise SystemExit(f"--class-stats: {method}'s recipe has no rare-class sampling")
        out[f"{_DATA}.rare_class_sampling.stats_file"] = args.class_stats
    if args.monitor_pseudo_labels:  # target labels for monitoring only (never trained on)
        out[f"{_DATA}.target.init_args.return_mask"] = True
        out[f"{_DATA}.target_monitor_labels"] = True
    if args.data_root is not None:  # each dataset's folder under the root, by its class
        for key in dataset_keys(recipe):
            name = str(get(recipe, f"{key}.class_path", "")).rsplit(".", 1)[-1]
            if name in DATA_FOLDERS:
                out[f"{key}.init_args.root"] = str(args.data_root / DATA_FOLDERS[name])
            parts = get(recipe, f"{key}.init_args.datasets", None)
            if isinstance(parts, list):  # a ConcatSegmentation: the list with each part's root
                out[f"{key}.init_args.datasets"] = [_rooted(p, args.data_root) for p in parts]
    run = f"{source}2{target}-{method}"
    logger = {"save_dir": str(args.output), "name": run}
    if args.logger == "wandb":
        require("wandb", extra="wandb", feature="--logger wandb")
        logger = {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {**logger, "project": args.project},
        }
        out["trainer.logger"] = logger
    else:
        out.update({f"trainer.logger.init_args.{k}": v for k, v in logger.items()})
    out["checkpoints.dirpath"] = str(args.output / run / "checkpoints")
    # where Lightning writes the SLURM requeue checkpoint and a requeued job finds it
    out["trainer.default_root_dir"] = str(args.output / run)
    return {k: v for k, v in out.items() if get(recipe, k, _MISSING) != v}, notes


_MISSING = object()


def _rooted(dataset: Any, data_root: Path) -> Any:
    """A dataset node (``class_path``/``init_args``) with ``root`` under ``data_root`` by its
    class (:data:`DATA_FOLDERS`); other nodes unchanged."""
    if not isinstance(dataset, dict):
        return dataset
    name = str(dataset.get("class_path", "")).rsplit(".", 1)[-1]
    if name not in DATA_FOLDERS:
        return dataset
    init = {**dataset.get("init_args", {}), "root": str(data_root / DATA_FOLDERS[name])}
    return {**dataset, "init_args": init}


def _split_global_batch(global_batch: int, devices: int, nodes: int, least: int) -> int:
    """Images per device when ``global_batch`` splits over ``devices × nodes`` processes into
    batches of at least ``least``; otherwise exit naming the flags and the counts that work."""
    world = devices * nodes
    if global_batch % world == 0 and global_batch // world >= least:
        return global_batch // world
    fits = [n for n in range(1, global_batch + 1) if global_batch % (n * devices) == 0]
    fits = [n for n in fits if global_batch // (n * devices) >= least]
    raise SystemExit(
        f"--global-batch {global_batch} does not split over --num-nodes {nodes} × --devices "
        f"{devices} = {world} processes"
        + (f" into batches of at least {least}" if least > 1 else "")
        + ": choose --num-nodes "
        + (f"among {fits}" if fits else "with fewer --devices")
        + f" for {devices} devices per node, a --global-batch that is a multiple of {world}"
        + (f" × {least}" if least > 1 else "")
        + ", or leave --global-batch out (the linear scaling rule then keeps the recipe's "
        "per-device batch)"
    )


def selection_line(recipe: dict[str, Any], method: str) -> str:
    """How the run keeps its best checkpoint, and how the paper chose the model it reports."""
    chosen, paper = get(recipe, "checkpoints.select_by"), get(recipe, "checkpoints.paper_select_by")
    resolved = paper if chosen == "paper" else chosen
    line = f"model selection: {chosen}" + (f" = {paper}" if chosen == "paper" else "")
    images = get(recipe, "checkpoints.unlabelled_images")
    line += {
        "val/mIoU": " (labelled target val: target supervision)",
        "last": "",
        None: " (refused: the paper states no rule)",
    }.get(resolved, f" (label-free, on {images} unlabelled target train images)")
    said = {"val/mIoU": "its best snapshot by mIoU on the labelled target val (val/mIoU)"}
    said = {**said, "last": "its final model (last)"}.get(paper, "no selection rule")
    return f"{line}; the {method} paper reports {said}: --select-by paper"


def learning_rate_lines(recipe: dict[str, Any]) -> list[str]:
    """``# lr <group>: <rate>`` for each parameter group of the resolved recipe's segmentor
    (layer-wise groups for the ViT recipes, else backbone and head)."""
    from lightning_uda.models.vit import dinov2_depth
    from lightning_uda.optim import layer_lr_multipliers

    init = get(recipe, "model.init_args", {})
    lr = float(init.get("lr", 2.5e-4))
    if "layer_decay" in init and init.get("arch") == "vfm":
        depth = dinov2_depth(init["encoder"])
        mults = layer_lr_multipliers(depth, init.get("encoder_lr_mult", 0.1), init["layer_decay"])
        rates = {name: lr * mult for name, mult in mults.items()}
        if init.get("distill_source_weight", 0) or init.get("distill_target_weight", 0):
            rates["distill_head"] = lr
    else:
        rates = {"backbone": lr, "head": lr * float(init.get("head_lr_mult", 10.0))}
    return [f"# lr {name}: {rate:.4g}" for name, rate in rates.items()]


def resume_checkpoint(directory: Path) -> str:
    """``directory/last.ckpt``, or exit naming ``directory`` when there is none to resume."""
    last = directory / "last.ckpt"
    if not last.is_file():
        found = sorted(p.name for p in directory.glob("*.ckpt")) if directory.is_dir() else []
        sys.exit(
            f"--resume: no last.ckpt in {directory} "
            f"({'it holds ' + ', '.join(found) if found else 'no checkpoint there'}). Pass the "
            "folder of the run to resume (or its --output and --method), or start without --resume."
        )
    return str(last)


def run(
    args: argparse.Namespace, source: str, target: str = "cityscapes", method_dir: str = "methods"
) -> None:
    """Resolve the recipe for the flags, print its notes, then print it or train it."""
    files = recipe_files(source, args.method, target=target, method_dir=method_dir)
    recipe = load_recipe(files)
    values, notes = overrides(args, source, recipe, target=target)
    for key, value in values.items():  # the resolved recipe, for the checks below
        recipe = merge(recipe, _nested(key, value))
    # `lightning-uda fit`: the layers, then one --key=value per override
    command = ["fit", *(a for f in files for a in ("--config", str(f)))]
    command += [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    command += getattr(args, "recipe_overrides", [])
    if args.resume is not None:
        folder = (
            Path(get(recipe, "checkpoints.dirpath")) if args.resume is True else Path(args.resume)
        )
        command.append(f"--ckpt_path={resume_checkpoint(folder)}")
    header = [line for line in files[2].read_text().splitlines() if line.startswith("#")]
    if args.from_scratch and starts_from_random_weights(recipe):
        notes.append(FROM_SCRATCH_NOTE)
    header += [f"# note: {n}" for n in notes]
    header += [f"# {selection_line(recipe, args.method)}"]
    if args.print_recipe:  # each parameter group's learning rate
        header += learning_rate_lines(recipe)
    header += ["# the same run: lightning-uda " + shlex.join(command)]
    if args.print_recipe:
        print("\n".join(header), flush=True)
        try:
            _cli([*command, "--print_config"])
        except SystemExit as done:  # jsonargparse exits after printing
            if done.code not in (0, None):
                raise
        return
    refuse_random_init(args.method, recipe, args.from_scratch)
    _cli(command, preamble="\n".join(header))  # printed by global rank 0 only


def _cli(command: list[str], preamble: str | None = None) -> None:
    """``lightning-uda`` with ``command``. ``sys.argv`` keeps the front's own flags: with
    ``--devices N`` Lightning starts the other processes by re-running this script with them."""
    main(command, preamble=preamble)


def _nested(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
