"""``lightning-uda demo``: every method on the embedded offline domain shift, as a table.

Each method trains from the same seed for the same number of steps on the demo data of
:mod:`lightning_uda.data.demo` (digits on plain backgrounds → digits on photographs), then the
*student* is evaluated on the labelled source val and target val splits. ``oracle`` is SourceOnly
trained on the labelled target train split: the upper bound.

    lightning-uda demo [--methods M ... | --methods all] [--steps N] [--seed S | --seeds S ...]
                       [--json PATH] [--figure PATH.png | --no-figure] [--figure-rows R]
                       [--no-progress-bar] [--print-recipe]

Without ``--methods`` the demo runs :data:`~lightning_uda.recipes.demo.DEFAULT_METHODS` (one row
per family and the two bounds, SourceOnly first so that a first result comes within a minute);
``--methods all`` runs every row.

The rows' settings are the demo recipe, :mod:`lightning_uda.recipes.demo` (a base layer and one
method layer per row, in LightningCLI's layout); ``--print-recipe`` prints each as a config that
``lightning-uda fit --config`` runs.

Each run prints one line as soon as it is evaluated; with several seeds (``--seeds 0 1 2``) each
method's mean ± sample standard deviation follows its last seed, and the table and the JSON hold
both the means and the per-seed values. The figure (``--figure``, default
``lightning-uda-demo.png`` in the current folder, its path printed; ``--no-figure`` skips it)
draws the first target-val scenes with each method's prediction (models of the first seed) in
the dataset's palette and a bar chart of target-val mIoU (mean over the seeds), see
:func:`lightning_uda.figures.segmentation_figure`. Each run shows one progress bar, in training
steps with the time left (:class:`~lightning_uda.callbacks.progress.RunProgressBar`).

Lightning's start-up banners and tips, third-party deprecation warnings and the progress bar of
the rare-class statistics are silenced while a demo run trains (:func:`quiet_lightning`); the
logger levels and warning filters are restored afterwards, so a user's own ``Trainer`` is not
affected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from lightning_uda.callbacks.progress import RunProgressBar
from lightning_uda.data.demo import (
    DigitScenes,
    demo_datamodule,
    demo_datasets,
)
from lightning_uda.data.rcs import RareClassSampling
from lightning_uda.demo_results import (  # noqa: F401 (re-exported)
    DemoResult,
    MethodSummary,
    demo_figure,
    format_result,
    format_summary,
    format_table,
    summarize,
)
from lightning_uda.methods import UDAModule
from lightning_uda.recipes.demo import (  # noqa: F401 (DEMO_BATCH_SIZE, DEMO_RECIPE re-exported)
    DEFAULT_METHODS,
    DEMO_BATCH_SIZE,
    DEMO_METHODS,
    DEMO_RECIPE,
    DEMO_STEPS,
    demo_config,
)

if TYPE_CHECKING:
    pass

#: Scenes (rows) in the ``--figure`` grid by default.
FIGURE_ROWS = 4
#: Where the figure goes without ``--figure`` (the current folder).
DEFAULT_FIGURE = Path("lightning-uda-demo.png")

#: Loggers whose INFO records (device banners, "💡 Tip: ...", "`Trainer.fit` stopped") the demo
#: hides; warnings and errors still show.
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
#: Messages (regular expressions, matched from the start) of warnings that say nothing about the
#: demo: Lightning's hints for larger jobs, and CUDA's notice that ``deterministic="warn"`` cannot
#: make bilinear upsampling's backward deterministic (see :func:`run_method`).
_QUIET_MESSAGES = (
    r"Found \d+ module\(s\) in eval mode",
    r".*does not have many workers",
    r".*does not have a deterministic implementation",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banners and tips and third-party deprecation noise, then restore.

    Inside the block, the ``lightning.pytorch`` and ``lightning.fabric`` loggers show WARNING
    and above only (no device banners, "💡 Tip" lines or "`Trainer.fit` stopped"), and these
    warnings are ignored: ``DeprecationWarning`` and ``FutureWarning`` raised outside
    ``lightning_uda`` (e.g. torch's ``isinstance(treespec, LeafSpec)`` notice from inside
    Lightning), Lightning's "Found N module(s) in eval mode" and "does not have many workers"
    hints, and CUDA's "does not have a deterministic implementation" notice. On exit the logger
    levels and the warning filters are exactly as before (:class:`warnings.catch_warnings`),
    also when the block raises.
    """
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
                # inserted in front: the library's own deprecations still show
                warnings.filterwarnings("default", category=category, module=r"lightning_uda\b")
            for message in _QUIET_MESSAGES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _evaluate(module: UDAModule, loader: DataLoader) -> torch.Tensor:
    """Per-class IoU (percent) of the student on ``loader``."""
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, dataloaders=loader, verbose=False)
    return module.last_iou["val"]


@torch.no_grad()
def _predict(module: UDAModule, dataset: DigitScenes, count: int) -> np.ndarray:
    """The student's label maps (``count × H × W`` uint8) of the first ``count`` scenes."""
    was_training = module.training
    module.eval()
    try:
        images = dataset.images[:count].to(module.device)
        return module.segment(images).argmax(dim=1).to(torch.uint8).cpu().numpy()
    finally:
        module.train(was_training)


def run_method(
    name: str,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    progress_bar: bool = True,
    overrides: dict[str, Any] | None = None,
    num_predictions: int = 0,
    quiet: bool = True,
    callbacks: Sequence[Callback] = (),
) -> DemoResult:
    """Train method ``name`` of :data:`DEMO_METHODS` on the demo shift and evaluate it.

    Args:
        name: the :data:`DEMO_METHODS` row.
        steps: training steps.
        seed: seed of data, model and sampling.
        progress_bar: show the training progress bar (labelled with the method and seed).
        overrides: replaces module arguments of the demo recipe (e.g. ``{"teacher_bn":
            "eval"}``) for ablations; the table rows use none.
        num_predictions: also keep the trained student's label maps of the first
            ``num_predictions`` target-val scenes in ``target_val_predictions`` (computed after
            the evaluation; training and scores are the same either way).
        quiet: silence Lightning's banners, tips and third-party deprecation warnings, and the
            rare-class statistics' progress bar, during the run (:func:`quiet_lightning`;
            logging and warning settings are restored on return).
        callbacks: more Lightning callbacks for the training run (e.g. measurements at
            intermediate steps, as ``benchmarks/selection.py`` does); they must not change the
            training for the result to be the demo's.

    Returns:
        The run's :class:`DemoResult`.

    Raises:
        ValueError: an unknown method or a negative ``num_predictions``.
    """
    if name not in DEMO_METHODS:
        raise ValueError(f"unknown demo method {name!r}; choose from {sorted(DEMO_METHODS)}")
    if num_predictions < 0:
        raise ValueError(f"num_predictions must be >= 0, got {num_predictions}")
    with quiet_lightning() if quiet else contextlib.nullcontext():
        return _run_method(
            name, steps, seed, progress_bar, overrides, num_predictions, quiet, callbacks
        )


def _run_method(
    name: str,
    steps: int,
    seed: int,
    progress_bar: bool,
    overrides: dict[str, Any] | None,
    num_predictions: int,
    quiet: bool,
    callbacks: Sequence[Callback],
) -> DemoResult:
    module_cls, module_kwargs, data_kwargs = demo_row(name, steps=steps, seed=seed)
    seed_everything(seed, workers=True, verbose=False)
    datasets = demo_datasets(seed=seed)
    datamodule = demo_datamodule(seed=seed, datasets=datasets, **data_kwargs)
    if quiet and datamodule.rare_class_sampling is not None:
        # The rare-class statistics are counted (with a tqdm bar on stderr) once per datamodule
        # and kept; counting them here, with the bar sent nowhere, leaves training unchanged.
        with contextlib.redirect_stderr(io.StringIO()):
            datamodule.class_pixel_counts()
    module = module_cls(
        class_names=datamodule.classes,
        **{**module_kwargs, "num_classes": datamodule.num_classes, **(overrides or {})},
    )
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        callbacks=[
            *([RunProgressBar(description=f"{name}, seed {seed}")] if progress_bar else []),
            *callbacks,
        ],
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic="warn",  # exact on CPU; CUDA has no deterministic bilinear backward
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - start
    names = datamodule.classes
    source_iou = _evaluate(module, DataLoader(datasets["source_val"], batch_size=200))
    target_iou = _evaluate(module, DataLoader(datasets["target_val"], batch_size=200))
    predictions = None
    if num_predictions:
        predictions = _predict(module, datasets["target_val"], num_predictions)
    return DemoResult(
        method=name,
        source_val_miou=float(torch.nanmean(source_iou)),
        target_val_miou=float(torch.nanmean(target_iou)),
        target_val_iou={n: float(v) for n, v in zip(names, target_iou, strict=True)},
        wall_time_s=wall,
        seed=seed,
        target_val_predictions=predictions,
    )


def demo_row(
    name: str, steps: int = DEMO_STEPS, seed: int = 0
) -> tuple[type[UDAModule], dict[str, Any], dict[str, Any]]:
    """Row ``name`` of the demo recipe (:func:`lightning_uda.recipes.demo.demo_config`) as
    ``(module class, module arguments, demo_datamodule arguments)``.

    The datamodule arguments are ``oracle`` (the source is the labelled target train split),
    ``batch_size`` and, for the rows that have it, ``rare_class_sampling``.
    """
    config = demo_config(name, steps=steps, seed=seed)
    model, data = config["model"], config["data"]["init_args"]
    module_path, _, class_name = model["class_path"].rpartition(".")
    module_cls = getattr(importlib.import_module(module_path), class_name)
    data_kwargs: dict[str, Any] = {
        "oracle": data["source"]["init_args"]["domain"] == "target",
        "batch_size": data["batch_size"],
    }
    if "rare_class_sampling" in data:
        data_kwargs["rare_class_sampling"] = RareClassSampling(**data["rare_class_sampling"])
    return module_cls, dict(model["init_args"]), data_kwargs


def print_recipes(methods: Sequence[str], steps: int = DEMO_STEPS, seed: int = 0) -> None:
    """Print each method's demo config (YAML documents, one per method; the training of the
    table rows themselves runs without checkpoints or logger, see :func:`run_method`)."""
    import yaml

    def plain(value: Any) -> Any:  # tuples as YAML lists
        if isinstance(value, dict):  # class_path before its init_args
            keys = sorted(value, key=lambda k: k != "class_path")
            return {k: plain(value[k]) for k in keys}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    for name in methods:
        print(f"# lightning-uda demo --methods {name}: lightning-uda fit --config THIS_FILE")
        print(yaml.safe_dump(plain(demo_config(name, steps=steps, seed=seed)), sort_keys=False))
        print("---" if name != methods[-1] else "", end="\n" if name != methods[-1] else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-uda demo",
        description="Train UDA methods on the embedded offline digits→photos shift (CPU is fine).",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=[*DEMO_METHODS, "all"],
        metavar="METHOD",
        help=f"methods to run, of: {', '.join(DEMO_METHODS)}; 'all' for every row (default: "
        f"{' '.join(DEFAULT_METHODS)}, about 7 minutes on two cores)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        metavar="N",
        help=f"training steps per method (default: {DEMO_STEPS})",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, metavar="S", help="one seed (default: 0)")
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="several seeds: each method runs once per seed; mean ± std are reported",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON"
    )
    figure = parser.add_mutually_exclusive_group()
    figure.add_argument(
        "--figure",
        type=Path,
        default=DEFAULT_FIGURE,
        metavar="PATH",
        help="draw target-val scenes, each method's predictions and a target mIoU bar chart "
        f"into this image (PNG; default: {DEFAULT_FIGURE})",
    )
    figure.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    parser.add_argument(
        "--figure-rows",
        type=int,
        default=FIGURE_ROWS,
        metavar="R",
        help=f"target-val scenes in the figure (default: {FIGURE_ROWS})",
    )
    parser.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--print-recipe",
        action="store_true",
        help="print each method's recipe as a config for `lightning-uda fit --config` and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[DemoResult]:
    """Parse ``lightning-uda demo`` arguments, run the methods, print (and save) the results.

    Returns:
        Every run, method by method and, within a method, in seed order.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds must be distinct, got {seeds}")
    if "all" in args.methods:
        args.methods = list(DEMO_METHODS)
    methods = list(dict.fromkeys(args.methods))  # a repeated method runs once
    if args.no_figure:
        args.figure = None
    if args.print_recipe:
        print_recipes(methods, steps=args.steps, seed=seeds[0])
        return []
    if args.figure is not None:
        from PIL import Image

        if args.figure.suffix.lower() not in Image.registered_extensions():
            parser.error(f"--figure: unknown image format {args.figure.suffix!r}; use .png")
        if args.figure_rows < 1:
            parser.error(f"--figure-rows must be >= 1, got {args.figure_rows}")

    width = max(len(m) for m in methods)
    print(
        f"lightning-uda demo: {len(methods)} method(s) × {len(seeds)} seed(s), "
        f"{args.steps} steps each: {', '.join(methods)}"
        + (
            f" (the default rows; --methods all runs all {len(DEMO_METHODS)})"
            if methods == list(DEFAULT_METHODS)
            else ""
        ),
        flush=True,
    )
    results: list[DemoResult] = []
    for name in methods:
        runs = []
        for seed in seeds:
            result = run_method(
                name,
                steps=args.steps,
                seed=seed,
                progress_bar=not args.no_progress_bar,
                num_predictions=args.figure_rows if args.figure and seed == seeds[0] else 0,
            )
            print(format_result(result, width), flush=True)
            runs.append(result)
        if len(seeds) > 1:
            print(format_summary(MethodSummary(name, runs), width), flush=True)
        results.extend(runs)
    print()
    print(format_table(results))
    if args.json is not None:
        payload = {
            "steps": args.steps,
            "seed": seeds[0],
            "seeds": seeds,
            "results": {s.method: s.to_dict() for s in summarize(results)},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    if args.figure is not None:
        image, _ = demo_figure(results)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.figure)
        print(f"wrote the figure to {args.figure.resolve()}")
    return results
