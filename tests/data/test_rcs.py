"""Rare-class sampling against closed forms and sampling statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_uda.data.rcs import (
    RareClassSampler,
    class_frequencies,
    class_pixel_counts,
    load_or_compute_class_stats,
    rare_class_probabilities,
)


def test_probabilities_closed_form():
    # f = (0.7, 0.2, 0.1), T = 0.1: P ∝ exp((1 - f)/T) = exp(3), exp(8), exp(9)
    p = rare_class_probabilities([0.7, 0.2, 0.1], temperature=0.1)
    e = np.exp([3.0, 8.0, 9.0])
    np.testing.assert_allclose(p, e / e.sum())
    np.testing.assert_allclose(rare_class_probabilities([0.25] * 4), [0.25] * 4)
    assert rare_class_probabilities([0.5, 0.3, 0.2], 1e-4)[2] == pytest.approx(1.0)
    assert rare_class_probabilities([0.6, 0.0, 0.4])[1] == 0.0  # absent classes are never drawn


def _synthetic_counts() -> np.ndarray:
    # 60 images × 3 classes; class 2 is rare and only in images 0..9
    counts = np.zeros((60, 3), dtype=np.int64)
    counts[:, 0] = 9000
    counts[:30, 1] = 4000
    counts[:10, 2] = 3500
    counts[10:12, 2] = 100  # present but below min_pixels
    return counts


def test_sampling_frequencies_match_the_probabilities():
    counts = _synthetic_counts()
    sampler = RareClassSampler(counts, temperature=0.1, min_pixels=3000, seed=0)
    expected = rare_class_probabilities(class_frequencies(counts), 0.1)
    n = 20_000
    drawn = np.array([sampler.draw(k) for k in range(n)])
    for c in range(3):
        share = np.mean(drawn[:, 1] == c)
        sigma = math.sqrt(expected[c] * (1 - expected[c]) / n)
        assert abs(share - expected[c]) < 4 * sigma + 1e-9, (c, share, expected[c])
    rare_images = drawn[drawn[:, 1] == 2, 0]
    assert set(rare_images) <= set(range(10))  # images 10, 11 hold < min_pixels of class 2


def test_draws_are_a_pure_function_of_seed_and_position():
    counts = _synthetic_counts()
    a, b = RareClassSampler(counts, seed=3), RareClassSampler(counts, seed=3)
    assert [a.draw(k) for k in range(50)] == [b.draw(k) for k in range(50)]
    assert a.draw(41) == b.draw(41)  # resumable: no state
    other = RareClassSampler(counts, seed=4)
    assert [a.draw(k) for k in range(50)] != [other.draw(k) for k in range(50)]


class _Masks:
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {"mask": self.masks[i]}


def test_counts_and_cache(tmp_path):
    masks = [np.array([[0, 1], [255, 1]]), np.array([[2, 2], [2, 255]])]
    counts = class_pixel_counts(_Masks(masks), num_classes=3, progress=False)
    np.testing.assert_array_equal(counts, [[1, 2, 0], [0, 0, 3]])
    np.testing.assert_allclose(class_frequencies(counts), [1 / 6, 2 / 6, 3 / 6])
    cache = tmp_path / "stats.npz"
    first = load_or_compute_class_stats(_Masks(masks), cache, 3, progress=False)
    assert cache.is_file()
    np.testing.assert_array_equal(load_or_compute_class_stats(_Masks(masks), cache, 3), first)
    with pytest.warns(UserWarning, match="recomputing"):
        load_or_compute_class_stats(_Masks(masks[:1]), cache, 3, progress=False)
