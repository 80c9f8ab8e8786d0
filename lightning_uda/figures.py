"""Figures drawn with Pillow from plain arrays: images, label maps and per-method scores.

:func:`segmentation_figure` lays out a grid of a few images — one row per image; columns: the
input, the ground truth and one prediction per method, label maps in class colours — with a
legend of the classes on the right and, below the grid, a bar chart of one score per method (e.g.
target mIoU, optionally ± a standard deviation), each bar under its method's column. It needs
no trained model (``lightning-uda demo --figure`` feeds it the demo's predictions) and returns the
layout it drew, so that tests and callers can find every part of the picture.

Example:
    >>> import numpy as np
    >>> images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    >>> labels = np.zeros((2, 8, 8), dtype=np.int64)
    >>> image, layout = segmentation_figure(
    ...     images, labels, {"a": labels, "b": labels}, palette=[(0, 0, 0), (255, 0, 0)],
    ...     class_names=["background", "object"], scores={"a": 50.0, "b": 75.0}, scale=8,
    ... )
    >>> image.size == layout.size, layout.columns
    (True, ('input', 'ground truth', 'a', 'b'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lightning_uda.constants import IGNORE_INDEX
from lightning_uda.data.labels import colorize

__all__ = ["Box", "FigureLayout", "segmentation_figure"]

MARGIN = 12  # around the figure and between its parts
GAP = 4  # between grid tiles
SWATCH = 12  # side of a legend colour square
CHART_HEIGHT = 120  # pixels of a 100% bar
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
AXIS = (96, 96, 96)
BAR = (70, 110, 170)
WHISKER = (40, 40, 40)
#: Colour of ignored ground-truth pixels (label ``ignore_index``).
IGNORE_COLOR = (128, 128, 128)


class Box(NamedTuple):
    """A pixel rectangle ``[x0, x1) × [y0, y1)`` of the figure."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        """``x1 − x0``."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """``y1 − y0``."""
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[int, int]:
        """``(x, y)`` of the middle pixel."""
        return (self.x0 + self.x1) // 2, (self.y0 + self.y1) // 2


@dataclass(frozen=True)
class FigureLayout:
    """Where :func:`segmentation_figure` put each part (pixel coordinates of the image).

    Attributes:
        size: ``(width, height)`` of the figure.
        tile: ``(width, height)`` of one grid tile (the image size times ``scale``).
        column_width: horizontal pitch of the grid columns (tile width + gap): each added method
            widens the figure by exactly this much.
        columns: column titles: ``"input"``, ``"ground truth"``, then the method names.
        cells: ``rows × columns`` tile boxes.
        legend: the legend's box.
        swatches: colour square of each legend entry: the classes in order, then ``"ignore"``
            when the ground truth has ignored pixels.
        chart: the bar chart's plot area (bars grow up from its bottom edge; its height is
            ``chart_scale`` of the score axis), or ``None`` without scores.
        bars: method → its bar (zero height for a score of 0; absent for NaN).
        chart_scale: the score at the top of the plot area (a bar of that score fills it).
    """

    size: tuple[int, int]
    tile: tuple[int, int]
    column_width: int
    columns: tuple[str, ...]
    cells: tuple[tuple[Box, ...], ...]
    legend: Box
    swatches: tuple[Box, ...]
    chart: Box | None = None
    bars: dict[str, Box] = field(default_factory=dict)
    chart_scale: float = 100.0


def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` pixels (a scalable one from Pillow 10.1 on)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _text(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: Any, anchor: str
) -> None:
    """Draw ``text`` with its ``anchor`` (horizontal ``l|m|r``, vertical ``t|m|d``) at ``xy``.

    Placed from the text's bounding box rather than Pillow's anchors, which bitmap fonts lack.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    dx = {"l": 0.0, "m": 0.5, "r": 1.0}[anchor[0]] * (right - left)
    dy = {"t": 0.0, "m": 0.5, "d": 1.0}[anchor[1]] * (bottom - top)
    draw.text((round(xy[0] - left - dx), round(xy[1] - top - dy)), text, fill=fill, font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, shortened with "…" until it is at most ``width`` pixels wide."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while len(text) > 1 and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def _upscale(array: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(np.repeat(np.repeat(array, scale, axis=0), scale, axis=1))


def _colour_labels(
    labels: np.ndarray, palette: np.ndarray, ignore_index: int, ignore_color: Sequence[int]
) -> np.ndarray:
    rgb = colorize(labels, palette)
    rgb[labels == ignore_index] = ignore_color
    return rgb


def segmentation_figure(
    images: Any,
    ground_truth: Any,
    predictions: Mapping[str, Any],
    palette: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    scores: Mapping[str, float] | None = None,
    score_stds: Mapping[str, float] | None = None,
    score_label: str = "target-val mIoU (%)",
    score_max: float = 100.0,
    scale: int = 4,
    ignore_index: int = IGNORE_INDEX,
    ignore_color: Sequence[int] = IGNORE_COLOR,
    font_size: int = 12,
) -> tuple[Image.Image, FigureLayout]:
    """Draw inputs, ground truth and each method's prediction, a class legend and a bar chart.

    Label maps are drawn in ``palette`` colours (ignored ground-truth pixels in
    ``ignore_color``), every tile enlarged ``scale`` times by pixel repetition, so each label
    pixel becomes a ``scale × scale`` square of exactly its class colour.

    Args:
        images: ``N × H × W × 3`` uint8 RGB inputs (one grid row each).
        ground_truth: ``N × H × W`` integer label maps.
        predictions: method name → ``N × H × W`` integer label maps; one column per method, in
            the mapping's order.
        palette: ``C × 3`` RGB colours of the classes.
        class_names: the ``C`` class names, in the legend.
        scores: method name → score (e.g. target mIoU in percent) for the bar chart; ``None``
            leaves the chart out. Methods without a score (or with NaN) get no bar.
        score_stds: method name → standard deviation of the score, drawn as a whisker and in the
            bar's label (``"45.2 ± 1.3"``).
        score_label: the chart's title.
        score_max: the score at the top of the chart (scores are clipped to ``[0, score_max]``).
        scale: tile enlargement (integer ≥ 1).
        ignore_index: label value of ignored pixels.
        ignore_color: RGB colour of ignored pixels (a legend entry when the ground truth has any).
        font_size: text size in pixels.

    Returns:
        ``(image, layout)``: the RGB :class:`PIL.Image.Image` and the :class:`FigureLayout` of
        its parts.

    Raises:
        ValueError: mismatched shapes, images that are not ``N × H × W × 3`` uint8, a palette
            and class names of different lengths, or ``scale < 1``.
    """
    images = np.asarray(images)
    ground_truth = np.asarray(ground_truth)
    preds = {name: np.asarray(p) for name, p in predictions.items()}
    colours = np.asarray(palette, dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"segmentation_figure: images must be N×H×W×3 uint8, got {images.shape} {images.dtype}"
        )
    if ground_truth.shape != images.shape[:3]:
        raise ValueError(
            f"segmentation_figure: ground_truth must be N×H×W = {images.shape[:3]}, got "
            f"{ground_truth.shape}"
        )
    for name, pred in preds.items():
        if pred.shape != images.shape[:3]:
            raise ValueError(
                f"segmentation_figure: prediction {name!r} must be N×H×W = {images.shape[:3]}, "
                f"got {pred.shape}"
            )
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) != len(class_names):
        raise ValueError(
            f"segmentation_figure: palette must be C×3 with C = {len(class_names)} class names, "
            f"got {colours.shape}"
        )
    if scale < 1:
        raise ValueError(f"segmentation_figure: scale must be >= 1, got {scale}")

    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(probe, "Ag0±", font)[1] + 6
    rows, height, width = images.shape[:3]
    columns = ("input", "ground truth", *preds)
    tile_w, tile_h = width * scale, height * scale
    pitch_x, pitch_y = tile_w + GAP, tile_h + GAP
    grid = Box(MARGIN, MARGIN + line, 0, 0)
    grid = grid._replace(
        x1=grid.x0 + len(columns) * pitch_x - GAP, y1=grid.y0 + rows * pitch_y - GAP
    )
    cells = tuple(
        tuple(
            Box(
                grid.x0 + c * pitch_x,
                grid.y0 + r * pitch_y,
                grid.x0 + c * pitch_x + tile_w,
                grid.y0 + r * pitch_y + tile_h,
            )
            for c in range(len(columns))
        )
        for r in range(rows)
    )

    has_ignore = bool((ground_truth == ignore_index).any())
    legend_names = [*class_names, *(["ignore"] if has_ignore else [])]
    legend_colours = [tuple(int(v) for v in c) for c in colours]
    legend_colours += [tuple(ignore_color)] if has_ignore else []
    entry = max(line, SWATCH + 4)
    text_w = max(_text_size(probe, name, font)[0] for name in [*legend_names, "classes"])
    legend = Box(grid.x1 + MARGIN, grid.y0, grid.x1 + MARGIN + SWATCH + 6 + text_w, 0)
    legend = legend._replace(y1=legend.y0 + line + entry * len(legend_names))
    swatches = tuple(
        Box(
            legend.x0,
            legend.y0 + line + i * entry,
            legend.x0 + SWATCH,
            legend.y0 + line + i * entry + SWATCH,
        )
        for i in range(len(legend_names))
    )

    chart = None
    bars: dict[str, Box] = {}
    bottom = max(grid.y1, legend.y1)
    if scores is not None:
        # title line, a label line above the tallest bar, the plot, the names under the axis
        top = grid.y1 + MARGIN + 2 * line
        chart = Box(grid.x0, top, grid.x1, top + CHART_HEIGHT)
        for c, name in enumerate(preds, start=2):
            score = scores.get(name, math.nan)
            if score is None or math.isnan(score):
                continue
            filled = round(min(max(score, 0.0), score_max) / score_max * CHART_HEIGHT)
            column = cells[0][c]
            half = max(1, round(tile_w * 0.3))
            x_mid = (column.x0 + column.x1) // 2
            bars[name] = Box(x_mid - half, chart.y1 - filled, x_mid + half, chart.y1)
        bottom = max(bottom, chart.y1 + line)

    size = (legend.x1 + MARGIN, bottom + MARGIN)
    figure = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(figure)

    # column titles and tiles
    for c, title in enumerate(columns):
        text = _fit(draw, title, font, tile_w)
        x_mid = (cells[0][c].x0 + cells[0][c].x1) // 2
        _text(draw, (x_mid, grid.y0 - 3), text, font, INK, "md")
    for r in range(rows):
        maps = [ground_truth[r], *(p[r] for p in preds.values())]
        tiles = [images[r]] + [_colour_labels(m, colours, ignore_index, ignore_color) for m in maps]
        for c, tile in enumerate(tiles):
            figure.paste(_upscale(tile, scale), cells[r][c][:2])

    # legend
    _text(draw, (legend.x0, legend.y0), "classes", font, INK, "lt")
    for box, name, colour in zip(swatches, legend_names, legend_colours, strict=True):
        draw.rectangle((box.x0, box.y0, box.x1 - 1, box.y1 - 1), fill=colour)
        _text(draw, (box.x1 + 6, box.center[1]), name, font, INK, "lm")

    # bar chart
    if chart is not None:
        assert scores is not None
        title = _fit(draw, score_label, font, legend.x1 - chart.x0)
        _text(draw, (chart.x0, chart.y0 - 2 * line), title, font, INK, "lt")
        axis_x = cells[0][2].x0 - GAP if len(columns) > 2 else chart.x1
        draw.line((axis_x, chart.y1, chart.x1, chart.y1), fill=AXIS)
        draw.line((axis_x, chart.y0, axis_x, chart.y1), fill=AXIS)
        for k in range(5):
            y = chart.y1 - round(k / 4 * CHART_HEIGHT)
            draw.line((axis_x - 4, y, axis_x, y), fill=AXIS)
            _text(draw, (axis_x - 7, y), f"{k / 4 * score_max:g}", font, AXIS, "rm")
        for name, bar in bars.items():
            if bar.height > 0:
                draw.rectangle((bar.x0, bar.y0, bar.x1 - 1, bar.y1 - 1), fill=BAR)
            score, std = scores[name], (score_stds or {}).get(name)
            label, label_y = f"{score:.1f}", bar.y0
            if std is not None and not math.isnan(std) and std > 0:
                span = round(std / score_max * CHART_HEIGHT)
                x_mid = bar.center[0]
                hi, lo = max(chart.y0, bar.y0 - span), min(chart.y1, bar.y0 + span)
                draw.line((x_mid, hi, x_mid, lo), fill=WHISKER)
                draw.line((x_mid - 3, hi, x_mid + 3, hi), fill=WHISKER)
                draw.line((x_mid - 3, lo, x_mid + 3, lo), fill=WHISKER)
                label, label_y = f"{score:.1f} ± {std:.1f}", hi
            label = _fit(draw, label, font, tile_w)
            _text(draw, (bar.center[0], label_y - 2), label, font, INK, "md")
        for c, name in enumerate(preds, start=2):
            column = cells[0][c]
            text = _fit(draw, name, font, tile_w)
            x_mid = (column.x0 + column.x1) // 2
            _text(draw, (x_mid, chart.y1 + 3), text, font, INK, "mt")

    layout = FigureLayout(
        size=size,
        tile=(tile_w, tile_h),
        column_width=pitch_x,
        columns=columns,
        cells=cells,
        legend=legend,
        swatches=swatches,
        chart=chart,
        bars=bars,
        chart_scale=score_max,
    )
    return figure, layout
