"""Label-free selection signals: closed forms, hand-computed cases, SND against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_uda.selection import (
    SIGNALS,
    class_distribution_kl,
    confident_fraction,
    histogram_kl,
    information_maximization,
    mean_entropy,
    miou_from_confusion,
    prediction_agreement,
    sample_pixels,
    snd_of_rows,
    soft_neighbourhood_density,
)


def one_hot_maps(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``B×H×W`` labels → ``B×K×H×W`` one-hot probabilities."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def uniform_maps(b: int, k: int, h: int, w: int) -> torch.Tensor:
    return torch.full((b, k, h, w), 1.0 / k)


# ------------------------------------------------------------------ entropy
@pytest.mark.parametrize("k", [2, 5, 19])
def test_entropy_is_one_for_uniform_and_zero_for_one_hot(k):
    assert mean_entropy(uniform_maps(2, k, 3, 4)).item() == pytest.approx(1.0)
    labels = torch.randint(0, k, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    assert mean_entropy(one_hot_maps(labels, k)).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_counts_valid_pixels_only():
    probs = torch.cat([uniform_maps(1, 4, 2, 2), one_hot_maps(torch.zeros(1, 2, 2).long(), 4)])
    assert mean_entropy(probs).item() == pytest.approx(0.5)
    valid = torch.zeros(2, 2, 2, dtype=torch.bool)
    valid[1] = True  # only the one-hot image
    assert mean_entropy(probs, valid).item() == pytest.approx(0.0, abs=1e-7)
    valid[0, 0, 0] = True  # one uniform pixel among five
    assert mean_entropy(probs, valid).item() == pytest.approx(0.2)


# ------------------------------------------------------------------ IM
@pytest.mark.parametrize("k", [2, 3, 19])
def test_im_closed_forms(k):
    # balanced and confident: every class predicted on the same number of pixels
    labels = torch.arange(k).repeat(4).reshape(1, 4, k)
    assert information_maximization(one_hot_maps(labels, k)).item() == pytest.approx(math.log(k))
    # uniform: H(mean) = log K = mean H
    assert information_maximization(uniform_maps(2, k, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)
    # confident but always the same class: no diversity
    same = torch.full((2, 3, 3), k - 1)
    assert information_maximization(one_hot_maps(same, k)).item() == pytest.approx(0.0, abs=1e-7)


def test_im_hand_computed_and_split_level():
    # two pixels: one-hot class 0 and (0.5, 0.5): mean (0.75, 0.25)
    probs = torch.tensor([[1.0, 0.5], [0.0, 0.5]]).reshape(1, 2, 1, 2)
    h_mean = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = h_mean - 0.5 * math.log(2)
    assert information_maximization(probs).item() == pytest.approx(expected)
    # IM needs the split's mean prediction: two one-class halves are 0 each, log 2 together
    zeros, ones = torch.zeros(1, 2, 2).long(), torch.ones(1, 2, 2).long()
    halves = [information_maximization(one_hot_maps(x, 2)).item() for x in (zeros, ones)]
    both = information_maximization(one_hot_maps(torch.cat([zeros, ones]), 2)).item()
    assert halves == pytest.approx([0.0, 0.0], abs=1e-7) and both == pytest.approx(math.log(2))


# ------------------------------------------------------------------ confident fraction
def test_confident_fraction_by_hand():
    top = torch.tensor([0.99, 0.968, 0.9, 0.5])  # max probability of 4 pixels
    probs = torch.stack([top, 1 - top]).reshape(1, 2, 2, 2)
    assert confident_fraction(probs).item() == pytest.approx(0.5)  # 0.99 and 0.968 (>=)
    assert confident_fraction(probs, threshold=0.95).item() == pytest.approx(0.5)
    assert confident_fraction(probs, threshold=0.6).item() == pytest.approx(0.75)
    valid = torch.tensor([[[True, False], [True, False]]])
    assert confident_fraction(probs, valid=valid).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        confident_fraction(probs, threshold=1.5)


# ------------------------------------------------------------------ class KL
def test_class_kl_of_matching_distributions_is_zero():
    labels = torch.tensor([[[0, 0, 1, 2]]])  # argmax histogram (0.5, 0.25, 0.25)
    probs = one_hot_maps(labels, 3) * 0.8 + 0.2 / 3  # soft, same argmax
    assert class_distribution_kl(probs, [0.5, 0.25, 0.25]).item() == pytest.approx(0.0, abs=1e-9)
    # frequencies need not be normalised
    assert class_distribution_kl(probs, [2.0, 1.0, 1.0]).item() == pytest.approx(0.0, abs=1e-9)


def test_class_kl_two_classes_by_hand():
    labels = torch.tensor([[[0, 1]]])  # predicted (0.5, 0.5)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.5 log(4/3)
    value = class_distribution_kl(one_hot_maps(labels, 2), [0.75, 0.25], eps=0.0).item()
    assert value == pytest.approx(expected)
    smoothed = class_distribution_kl(one_hot_maps(labels, 2), [0.75, 0.25]).item()
    assert smoothed == pytest.approx(expected, abs=1e-5)
    # a class the source never shows: large but finite thanks to the smoothing
    assert math.isfinite(class_distribution_kl(one_hot_maps(labels, 2), [1.0, 0.0]).item())


def test_class_kl_rejects_bad_frequencies():
    probs = uniform_maps(1, 3, 2, 2)
    with pytest.raises(ValueError, match="K entries"):
        class_distribution_kl(probs, [0.5, 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        histogram_kl(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 2.0]))


# ------------------------------------------------------------------ agreement
def test_agreement_of_identical_maps_is_100():
    labels = torch.randint(0, 5, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    assert prediction_agreement(labels, labels, 5).item() == pytest.approx(100.0)


def test_agreement_by_hand():
    a = torch.tensor([[[0, 0, 1, 1]]])
    b = torch.tensor([[[0, 1, 1, 1]]])
    # class 0: 1 / 2; class 1: 2 / 3; class 2 absent from both: left out
    expected = 100.0 * (0.5 + 2.0 / 3.0) / 2
    assert prediction_agreement(a, b, 3).item() == pytest.approx(expected)
    # ignored pixels (255, or outside valid) are not counted
    a2 = torch.tensor([[[0, 0, 1, 1, 255]]])
    b2 = torch.tensor([[[0, 1, 1, 1, 2]]])
    assert prediction_agreement(a2, b2, 3).item() == pytest.approx(expected)
    valid = torch.tensor([[[True, False, True, True]]])
    assert prediction_agreement(a, b, 3, valid).item() == pytest.approx(100.0)
    assert math.isnan(miou_from_confusion(torch.zeros(3, 3)).item())
    with pytest.raises(ValueError, match="integer"):
        prediction_agreement(a.float(), b.float(), 3)


# ------------------------------------------------------------------ SND
def snd_numpy(x: np.ndarray, t: float) -> float:
    """SND written out as in pytorch-adapt's SNDValidator (float64)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    n = len(x)
    entropies = []
    for i in range(n):
        row = np.delete(sim[i], i) / t
        p = np.exp(row - row.max())
        p /= p.sum()
        entropies.append(-(p * np.log(p)).sum())
    return float(np.mean(entropies))


def test_snd_matches_numpy():
    x = torch.rand(30, 4, generator=torch.Generator().manual_seed(0)).double()
    for t in (0.05, 0.5):
        expected = snd_numpy(x.numpy(), t)
        assert soft_neighbourhood_density(x, t, max_pixels=None).item() == pytest.approx(expected)
        # rows processed in chunks give the same value
        assert snd_of_rows(x, t, chunk=7).item() == pytest.approx(expected)
    # float32 input, maps with a valid mask: the valid pixels are the rows
    maps = x[:24].float().T.reshape(1, 4, 4, 6)
    valid = torch.ones(1, 4, 6, dtype=torch.bool)
    valid[0, 0, :2] = False
    rows = maps.movedim(1, -1)[valid].double().numpy()
    value = soft_neighbourhood_density(maps, 0.05, valid=valid, max_pixels=None).item()
    assert value == pytest.approx(snd_numpy(rows, 0.05), rel=1e-5)


def test_snd_is_higher_for_tight_clusters_than_for_spread_points():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4)
    clusters = centres.repeat_interleave(10, dim=0) + 0.01 * torch.randn(40, 4, generator=g)
    spread = torch.randn(40, 4, generator=g)
    tight = soft_neighbourhood_density(clusters, max_pixels=None).item()
    loose = soft_neighbourhood_density(spread, max_pixels=None).item()
    assert tight > loose
    assert tight == pytest.approx(math.log(9), abs=0.1)  # ~ uniform over the 9 cluster mates


def test_snd_pixel_budget():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(torch.randn(2, 5, 16, 16, generator=g), dim=1)  # 512 pixels
    rows = maps.movedim(1, -1).reshape(-1, 5)
    sample = sample_pixels(rows, 100, seed=3)
    assert sample.shape == (100, 5)
    # drawn without replacement: 100 distinct pixels of the map
    assert len({tuple(r.tolist()) for r in sample}) == 100
    assert all(bool((rows == r).all(dim=1).any()) for r in sample)
    # the budgeted SND is the SND of exactly that sample, and is seeded
    budgeted = soft_neighbourhood_density(maps, max_pixels=100, seed=3)
    assert budgeted.item() == pytest.approx(snd_of_rows(sample).item())
    assert budgeted.item() == soft_neighbourhood_density(maps, max_pixels=100, seed=3).item()
    assert budgeted.item() != soft_neighbourhood_density(maps, max_pixels=100, seed=4).item()
    assert budgeted.item() <= math.log(99)
    assert sample_pixels(rows, 1000).shape == rows.shape  # small enough: every pixel
    with pytest.raises(ValueError, match="N >= 2"):
        soft_neighbourhood_density(rows[:1])
    with pytest.raises(ValueError, match="temperature"):
        soft_neighbourhood_density(rows, temperature=0.0)


# ------------------------------------------------------------------ registry and checks
def test_registry_modes():
    assert set(SIGNALS) == {"entropy", "im", "confident_fraction", "class_kl", "agreement", "snd"}
    modes = {name: mode for name, (mode, _) in SIGNALS.items()}
    assert modes == {
        "entropy": "min",
        "im": "max",
        "confident_fraction": "max",
        "class_kl": "min",
        "agreement": "max",
        "snd": "max",
    }
    assert all(isinstance(text, str) and text for _, text in SIGNALS.values())


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="B×K×H×W"):
        mean_entropy(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="K >= 2"):
        information_maximization(torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="valid"):
        mean_entropy(uniform_maps(1, 3, 2, 2), valid=torch.ones(1, 2, 2))  # not bool
    with pytest.raises(ValueError, match="shapes"):
        prediction_agreement(torch.zeros(1, 2, 2).long(), torch.zeros(1, 2, 3).long(), 2)
