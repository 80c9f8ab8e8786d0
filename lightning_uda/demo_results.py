"""The demo's results: one run (:class:`DemoResult`), a method over its seeds
(:class:`MethodSummary`), and how they are printed (lines, the Markdown table) and drawn
(:func:`demo_figure`). :mod:`lightning_uda.demo` trains the runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_uda.data.demo import DEMO_CLASSES, DEMO_PALETTE, demo_datasets
from lightning_uda.normalization import IMAGENET

if TYPE_CHECKING:
    from PIL import Image

    from lightning_uda.figures import FigureLayout


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
