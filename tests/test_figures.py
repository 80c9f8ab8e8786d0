"""segmentation_figure on synthetic arrays: layout, class colours, legend and bar chart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_uda.figures import BAR, CHART_HEIGHT, GAP, IGNORE_COLOR, segmentation_figure

PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)]
CLASSES = ["background", "red", "green", "blue"]
SCALE = 4


def _arrays(rows: int = 3, size: int = 8, methods: tuple[str, ...] = ("a", "b")):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8)
    truth = rng.integers(0, len(PALETTE), (rows, size, size))
    truth[:, 0, :] = 255  # an ignored rim
    predictions = {m: rng.integers(0, len(PALETTE), (rows, size, size)) for m in methods}
    return images, truth, predictions


def _tile(figure: np.ndarray, box) -> np.ndarray:
    return figure[box.y0 : box.y1, box.x0 : box.x1]


def _upscaled(array: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(array, SCALE, axis=0), SCALE, axis=1)


def test_size_and_layout_one_column_per_method():
    images, truth, predictions = _arrays()
    figure, layout = segmentation_figure(
        images, truth, predictions, PALETTE, CLASSES, scores={"a": 10.0, "b": 20.0}, scale=SCALE
    )
    assert figure.size == layout.size and figure.mode == "RGB"
    assert layout.columns == ("input", "ground truth", "a", "b")
    assert layout.tile == (8 * SCALE, 8 * SCALE)
    assert layout.column_width == 8 * SCALE + GAP
    assert len(layout.cells) == 3 and all(len(row) == 4 for row in layout.cells)
    for row in layout.cells:
        for left, right in zip(row, row[1:], strict=False):
            assert right.x0 - left.x0 == layout.column_width
        assert all((box.width, box.height) == layout.tile for box in row)
    # every part lies inside the picture
    width, height = layout.size
    for box in [*(b for row in layout.cells for b in row), layout.legend, layout.chart]:
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height

    _, three = segmentation_figure(
        images,
        truth,
        {**predictions, "c": predictions["a"]},
        PALETTE,
        CLASSES,
        scores={"a": 10.0, "b": 20.0, "c": 30.0},
        scale=SCALE,
    )
    assert len(three.columns) == 5
    assert three.size == (layout.size[0] + layout.column_width, layout.size[1])


def test_tiles_hold_the_input_and_exact_class_colours():
    images, truth, predictions = _arrays()
    truth[1, 3, 5] = 2  # a known pixel: "green" in the ground truth of row 1
    predictions["b"][2, 4, 6] = 3  # and "blue" in method b's prediction of row 2
    figure, layout = segmentation_figure(images, truth, predictions, PALETTE, CLASSES, scale=SCALE)
    pixels = np.asarray(figure)
    palette = np.asarray(PALETTE, dtype=np.uint8)

    cell = layout.cells[1][1]
    y, x = cell.y0 + 3 * SCALE, cell.x0 + 5 * SCALE
    assert (pixels[y : y + SCALE, x : x + SCALE] == PALETTE[2]).all()
    cell = layout.cells[2][3]
    y, x = cell.y0 + 4 * SCALE, cell.x0 + 6 * SCALE
    assert (pixels[y : y + SCALE, x : x + SCALE] == PALETTE[3]).all()

    for r in range(3):
        np.testing.assert_array_equal(_tile(pixels, layout.cells[r][0]), _upscaled(images[r]))
        expected_truth = palette[np.where(truth[r] == 255, 0, truth[r])]
        expected_truth[truth[r] == 255] = IGNORE_COLOR
        np.testing.assert_array_equal(_tile(pixels, layout.cells[r][1]), _upscaled(expected_truth))
        for c, name in enumerate(("a", "b"), start=2):
            np.testing.assert_array_equal(
                _tile(pixels, layout.cells[r][c]), _upscaled(palette[predictions[name][r]])
            )


def test_legend_shows_every_class_colour_and_ignore():
    images, truth, predictions = _arrays()
    figure, layout = segmentation_figure(images, truth, predictions, PALETTE, CLASSES)
    pixels = np.asarray(figure)
    assert len(layout.swatches) == len(PALETTE) + 1  # the classes, then "ignore"
    for box, colour in zip(layout.swatches, [*PALETTE, IGNORE_COLOR], strict=True):
        assert layout.legend.x0 <= box.x0 and box.y1 <= layout.legend.y1
        assert (_tile(pixels, box) == colour).all()
    # the legend sits right of the grid
    assert layout.legend.x0 > layout.cells[0][-1].x1

    truth[truth == 255] = 0  # no ignored pixels: no "ignore" entry
    _, plain = segmentation_figure(images, truth, predictions, PALETTE, CLASSES)
    assert len(plain.swatches) == len(PALETTE)


def test_bar_heights_are_proportional_to_the_scores():
    images, truth, predictions = _arrays(methods=("a", "b", "c", "d"))
    scores = {"a": 25.0, "b": 50.0, "c": 100.0, "d": 0.0}
    figure, layout = segmentation_figure(
        images, truth, predictions, PALETTE, CLASSES, scores=scores, score_stds={"b": 5.0}
    )
    pixels = np.asarray(figure)
    chart = layout.chart
    assert chart is not None and chart.height == CHART_HEIGHT
    assert layout.chart_scale == 100.0
    for name, score in scores.items():
        bar = layout.bars[name]
        assert bar.height == round(score / 100.0 * CHART_HEIGHT)
        assert bar.y1 == chart.y1  # bars stand on the axis
        column = layout.cells[0][layout.columns.index(name)]
        assert column.x0 <= bar.x0 < bar.x1 <= column.x1  # under the method's column
        if bar.height and name != "b":  # b's whisker crosses its bar's top
            assert (_tile(pixels, bar) == BAR).all()
    assert layout.bars["c"].height == 2 * layout.bars["b"].height == 4 * layout.bars["a"].height
    # below the grid
    assert chart.y0 > layout.cells[-1][0].y1


def test_missing_scores_give_no_bar_or_no_chart():
    images, truth, predictions = _arrays()
    _, layout = segmentation_figure(
        images, truth, predictions, PALETTE, CLASSES, scores={"a": math.nan}
    )
    assert layout.chart is not None and layout.bars == {}
    figure, without = segmentation_figure(images, truth, predictions, PALETTE, CLASSES)
    assert without.chart is None and figure.size[1] < layout.size[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((3, 8, 8, 3), dtype=np.float32)}, "uint8"),
        ({"ground_truth": np.zeros((3, 8, 7), dtype=np.int64)}, "ground_truth"),
        ({"predictions": {"a": np.zeros((2, 8, 8), dtype=np.int64)}}, "prediction 'a'"),
        ({"class_names": CLASSES[:3]}, "palette"),
        ({"scale": 0}, "scale"),
    ],
)
def test_bad_inputs_are_rejected(change, message):
    images, truth, predictions = _arrays()
    kwargs = {
        "images": images,
        "ground_truth": truth,
        "predictions": predictions,
        "palette": PALETTE,
        "class_names": CLASSES,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        segmentation_figure(**kwargs)
