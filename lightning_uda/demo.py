"""``lightning-uda demo``: every method on the embedded offline domain shift, as a table.

Each method trains from the same seed for the same number of steps on the demo data of
:mod:`lightning_uda.data.demo` (digits on plain backgrounds → digits on photographs), then the
*student* is evaluated on the labelled source val and target val splits. ``oracle`` is SourceOnly
trained on the labelled target train split: the upper bound.

    lightning-uda demo [--methods M ...] [--steps N] [--seed S | --seeds S ...] [--json PATH]
                       [--figure PATH.png] [--figure-rows R] [--no-progress-bar] [--print-recipe]

The rows' settings are the demo recipe, :mod:`lightning_uda.recipes.demo` (a base layer and one
method layer per row, in LightningCLI's layout); ``--print-recipe`` prints each as a config that
``lightning-uda fit --config`` runs.

Each run prints one line as soon as it is evaluated; with several seeds (``--seeds 0 1 2``) each
method's mean ± sample standard deviation follows its last seed, and the table and the JSON hold
both the means and the per-seed values. ``--figure`` draws the first target-val scenes with each
method's prediction (models of the first seed) and a bar chart of target-val mIoU (mean over the
seeds), see :func:`lightning_uda.figures.segmentation_figure`.

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
import math
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from torch.utils.data import DataLoader

from lightning_uda.data.demo import (
    DEMO_CLASSES,
    DEMO_PALETTE,
    DigitScenes,
    demo_datamodule,
    demo_datasets,
)
from lightning_uda.data.rcs import RareClassSampling
from lightning_uda.methods import UDAModule
from lightning_uda.normalization import IMAGENET
from lightning_uda.recipes.demo import (  # noqa: F401 (DEMO_BATCH_SIZE, DEMO_RECIPE re-exported)
    DEMO_BATCH_SIZE,
    DEMO_METHODS,
    DEMO_RECIPE,
    DEMO_STEPS,
    demo_config,
)

if TYPE_CHECKING:
    from PIL import Image

    from lightning_uda.figures import FigureLayout

#: Scenes (rows) in the ``--figure`` grid by default.
FIGURE_ROWS = 4

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


class _DemoProgressBar(TQDMProgressBar):
    """Lightning's training bar, labelled with the run (``"dacs, seed 0"``) instead of "Epoch 0"."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    @property
    def train_description(self) -> str:
        return self.label

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        # TQDMProgressBar's, without drawing "Epoch 0" first (the demo trains in one epoch)
        bar = self.train_progress_bar
        bar.set_description(self.label, refresh=False)
        bar.reset(total=convert_inf(self.total_train_batches))


@dataclass
class DemoResult:
    """One run of the demo: a method trained from one seed (mIoU in percent).

    Attributes:
        method: the :data:`DEMO_METHODS` row.
        source_val_miou: student mIoU on the labelled source val split.
        target_val_miou: student mIoU on the labelled target val split.
        target_val_iou: class name → target-val IoU.
        wall_time_s: training time (without evaluation).
        seed: the seed of data, model and sampling.
        target_val_predictions: the student's label maps of the first target-val scenes,
            ``N × H × W`` uint8, when :func:`run_method` was asked for them (``num_predictions``);
            not part of :meth:`to_dict`.
    """

    method: str
    source_val_miou: float
    target_val_miou: float
    target_val_iou: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    seed: int = 0
    target_val_predictions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (everything but the predictions)."""
        row = asdict(self)
        del row["target_val_predictions"]
        return row


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value) of the non-NaN values."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


@dataclass
class MethodSummary:
    """A method's runs over seeds: means and sample standard deviations (n − 1) in percent.

    Attributes:
        method: the :data:`DEMO_METHODS` row.
        runs: one :class:`DemoResult` per seed, in the order run.
    """

    method: str
    runs: list[DemoResult]

    @property
    def seeds(self) -> list[int]:
        """The runs' seeds."""
        return [r.seed for r in self.runs]

    @property
    def source_val_miou(self) -> float:
        """Mean source-val mIoU over the seeds."""
        return _mean_std([r.source_val_miou for r in self.runs])[0]

    @property
    def source_val_miou_std(self) -> float:
        """Sample standard deviation of source-val mIoU over the seeds (0 for one seed)."""
        return _mean_std([r.source_val_miou for r in self.runs])[1]

    @property
    def target_val_miou(self) -> float:
        """Mean target-val mIoU over the seeds."""
        return _mean_std([r.target_val_miou for r in self.runs])[0]

    @property
    def target_val_miou_std(self) -> float:
        """Sample standard deviation of target-val mIoU over the seeds (0 for one seed)."""
        return _mean_std([r.target_val_miou for r in self.runs])[1]

    @property
    def target_val_iou(self) -> dict[str, float]:
        """Class name → mean target-val IoU over the seeds (NaN runs left out)."""
        names = self.runs[0].target_val_iou
        return {n: _mean_std([r.target_val_iou[n] for r in self.runs])[0] for n in names}

    @property
    def wall_time_s(self) -> float:
        """Mean training time over the seeds."""
        return statistics.fmean(r.wall_time_s for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: the means (named as a :class:`DemoResult`'s), the standard deviations
        (``*_std``), ``seeds`` and ``per_seed`` (each run's :meth:`DemoResult.to_dict`)."""
        return {
            "method": self.method,
            "seeds": self.seeds,
            "source_val_miou": self.source_val_miou,
            "source_val_miou_std": self.source_val_miou_std,
            "target_val_miou": self.target_val_miou,
            "target_val_miou_std": self.target_val_miou_std,
            "target_val_iou": self.target_val_iou,
            "wall_time_s": self.wall_time_s,
            "per_seed": [r.to_dict() for r in self.runs],
        }


def summarize(results: Sequence[DemoResult]) -> list[MethodSummary]:
    """Group runs by method, in order of first appearance."""
    groups: dict[str, list[DemoResult]] = {}
    for r in results:
        groups.setdefault(r.method, []).append(r)
    return [MethodSummary(method, runs) for method, runs in groups.items()]


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
            *([_DemoProgressBar(f"{name}, seed {seed}")] if progress_bar else []),
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


def format_result(result: DemoResult, width: int = 0) -> str:
    """One run as a line: method (padded to ``width``), seed, both mIoUs and the training time."""
    return (
        f"{result.method:<{width}}  seed {result.seed}: source-val mIoU "
        f"{result.source_val_miou:5.1f}  target-val mIoU {result.target_val_miou:5.1f}  "
        f"({result.wall_time_s:.0f} s)"
    )


def format_summary(summary: MethodSummary, width: int = 0) -> str:
    """A method's mean ± std over its seeds as a line (method padded to ``width``)."""
    seeds = ", ".join(str(s) for s in summary.seeds)
    return (
        f"{summary.method:<{width}}  mean ± std over seeds {seeds}: source-val mIoU "
        f"{summary.source_val_miou:.1f} ± {summary.source_val_miou_std:.1f}  target-val mIoU "
        f"{summary.target_val_miou:.1f} ± {summary.target_val_miou_std:.1f}"
    )


def format_table(results: Sequence[DemoResult]) -> str:
    """Markdown table of the results (mIoU in percent), one row per method.

    With one seed per method the cells are that run's values; with several, mean ± sample
    standard deviation, plus a column of the per-seed target-val mIoU.
    """
    summaries = summarize(results)
    if all(len(s.runs) == 1 for s in summaries):
        lines = [
            "| method | source-val mIoU | target-val mIoU | train time (s) |",
            "|---|---:|---:|---:|",
        ]
        for r in results:
            lines.append(
                f"| {r.method} | {r.source_val_miou:.1f} | {r.target_val_miou:.1f} | "
                f"{r.wall_time_s:.0f} |"
            )
        return "\n".join(lines)
    lines = [
        "| method | seeds | source-val mIoU | target-val mIoU | target-val mIoU per seed "
        "| train time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        per_seed = " / ".join(f"{r.target_val_miou:.1f}" for r in s.runs)
        lines.append(
            f"| {s.method} | {', '.join(str(seed) for seed in s.seeds)} | "
            f"{s.source_val_miou:.1f} ± {s.source_val_miou_std:.1f} | "
            f"{s.target_val_miou:.1f} ± {s.target_val_miou_std:.1f} | {per_seed} | "
            f"{s.wall_time_s:.0f} |"
        )
    return "\n".join(lines)


def demo_figure(results: Sequence[DemoResult]) -> tuple[Image.Image, FigureLayout]:
    """The ``--figure`` picture: target-val scenes, ground truth and each method's prediction.

    Rows are the first target-val scenes of the first run's seed, as many as that run's
    ``target_val_predictions``; one prediction column per method, from its run with that seed;
    the bar chart shows each method's target-val mIoU, mean ± std over all its seeds.

    Args:
        results: runs made with ``num_predictions`` > 0 for the first seed of each method.

    Returns:
        ``(image, layout)`` of :func:`lightning_uda.figures.segmentation_figure`.

    Raises:
        ValueError: no results, or a method without predictions for the first run's seed.
    """
    from lightning_uda.figures import segmentation_figure

    if not results:
        raise ValueError("demo_figure: no results")
    seed = results[0].seed
    summaries = summarize(results)
    predictions: dict[str, np.ndarray] = {}
    for s in summaries:
        run = next((r for r in s.runs if r.seed == seed), None)
        if run is None or run.target_val_predictions is None:
            raise ValueError(
                f"demo_figure: {s.method} has no target-val predictions for seed {seed} "
                "(run it with num_predictions > 0)"
            )
        predictions[s.method] = run.target_val_predictions
    rows = min(len(p) for p in predictions.values())
    scenes = demo_datasets(seed=seed)["target_val"]
    several = any(len(s.runs) > 1 for s in summaries)
    seeds = sorted({r.seed for r in results})
    label = (
        f"target-val mIoU (%), mean ± std over seeds {', '.join(map(str, seeds))}"
        if several
        else f"target-val mIoU (%), seed {seed}"
    )
    return segmentation_figure(
        IMAGENET.to_uint8(scenes.images[:rows]),
        scenes.masks[:rows].numpy(),
        {method: p[:rows] for method, p in predictions.items()},
        palette=DEMO_PALETTE,
        class_names=DEMO_CLASSES,
        scores={s.method: s.target_val_miou for s in summaries},
        score_stds={s.method: s.target_val_miou_std for s in summaries} if several else None,
        score_label=f"{label}; predictions: seed {seed}",
    )


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
        default=list(DEMO_METHODS),
        choices=list(DEMO_METHODS),
        metavar="METHOD",
        help=f"methods to run, of: {', '.join(DEMO_METHODS)} (default: all)",
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
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        metavar="PATH",
        help="also draw target-val scenes, each method's predictions and a target mIoU bar "
        "chart into this image (PNG)",
    )
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
    methods = list(dict.fromkeys(args.methods))  # a repeated method runs once
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
        f"{args.steps} steps each",
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
        print(f"wrote {args.figure}")
    return results
