"""Label-free model-selection signals for domain-adaptive segmentation.

In unsupervised domain adaptation the target labels are not available to pick a checkpoint or
tune a loss weight; selecting by ``val/mIoU`` on labelled target images is target supervision.
These functions score a model from its predictions on *unlabelled* target images instead, as
the validators of pytorch-adapt do for classification (Musgrave et al., "Three New Validators
and a Large-Scale Benchmark Ranking for Unsupervised Domain Adaptation", 2022). None of them is
guaranteed to rank checkpoints as the target mIoU would; they are what is left when the labels
are not there. :class:`~lightning_uda.callbacks.UnsupervisedValidation` computes them during
training over a whole unlabelled split.

The functions take probability maps ``B×K×H×W`` (softmax outputs) and an optional boolean
``valid`` mask ``B×H×W`` of the pixels to count (padding or ignored pixels are ``False``); each
returns a 0-d float tensor (NaN when no pixel is valid). :data:`SIGNALS` names every signal with
its direction (``"min"``: lower is better, ``"max"``: higher is better), the ``mode`` to give a
``ModelCheckpoint`` monitoring it.

The helpers :func:`information_maximization_from_statistics`, :func:`histogram_kl`,
:func:`miou_from_confusion` and :func:`snd_of_rows` compute the signals from accumulated
statistics, so a split can be scored batch by batch with the same result as one call on all of
it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SIGNALS",
    "class_distribution_kl",
    "confident_fraction",
    "confusion_matrix",
    "histogram_kl",
    "information_maximization",
    "information_maximization_from_statistics",
    "mean_entropy",
    "miou_from_confusion",
    "pixel_entropy",
    "prediction_agreement",
    "sample_pixels",
    "snd_of_rows",
    "soft_neighbourhood_density",
]

#: Signal name → ``(mode, description)``; ``mode`` is ``"min"`` when lower is better and
#: ``"max"`` when higher is better (``ModelCheckpoint(monitor="val_unsup/<name>", mode=mode)``).
SIGNALS: dict[str, tuple[str, str]] = {
    "entropy": (
        "min",
        "mean normalised prediction entropy -sum p log p / log K over pixels "
        "(0 one-hot, 1 uniform)",
    ),
    "im": (
        "max",
        "information maximisation H(mean prediction) - mean H(prediction), natural log "
        "(confident and diverse predictions; at most log K)",
    ),
    "confident_fraction": (
        "max",
        "fraction of pixels whose largest probability reaches the threshold (0.968)",
    ),
    "class_kl": (
        "min",
        "KL(predicted class distribution || source label distribution), natural log "
        "(histogram of the argmax)",
    ),
    "agreement": (
        "max",
        "mIoU (percent) between the student's and the EMA teacher's argmax maps "
        "(self-training methods only)",
    ),
    "snd": (
        "max",
        "soft neighbourhood density (Saito et al., ICCV 2021): mean entropy of each sampled "
        "pixel's softmax similarity to the others",
    ),
}


# ------------------------------------------------------------------ input checks
def _check_probs(name: str, probs: Tensor, valid: Tensor | None) -> None:
    if not isinstance(probs, Tensor) or probs.dim() != 4 or not probs.is_floating_point():
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"{name}: probs must be a float B×K×H×W tensor, got {shape}")
    if probs.shape[1] < 2:
        raise ValueError(f"{name}: probs must have K >= 2 classes, got K = {probs.shape[1]}")
    _check_valid(name, valid, (probs.shape[0], *probs.shape[2:]))


def _check_valid(name: str, valid: Tensor | None, shape: tuple[int, ...]) -> None:
    if valid is None:
        return
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != shape:
        got = (
            f"{tuple(valid.shape)} {valid.dtype}"
            if isinstance(valid, Tensor)
            else type(valid).__name__
        )
        raise ValueError(f"{name}: valid must be a bool tensor of shape {shape}, got {got}")


def _rows(probs: Tensor, valid: Tensor | None) -> Tensor:
    """``N×K`` class probabilities of the valid pixels of ``B×K×H×W`` maps."""
    rows = probs.movedim(1, -1)
    return rows[valid] if valid is not None else rows.reshape(-1, probs.shape[1])


def pixel_entropy(probs: Tensor) -> Tensor:
    """Per-pixel entropy ``-Σ_k p_k log p_k`` (natural log, ``0 log 0 = 0``) of ``B×K×H×W``
    probabilities: ``B×H×W``, in float32 or the input's wider precision."""
    p = probs if probs.dtype == torch.float64 else probs.float()
    return -torch.special.xlogy(p, p).sum(dim=1)


# ------------------------------------------------------------------ entropy, IM, confidence
def mean_entropy(probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean normalised entropy of the predictions. **Lower is better** (mode ``"min"``).

    ``(1/N) Σ_i −Σ_k p_ik log p_ik / log K`` over the N valid pixels: 1 for uniform predictions,
    0 for one-hot ones. The signal minimised by entropy minimisation (MinEnt, AdvEnt); low
    entropy alone also rewards confidently wrong predictions.

    Args:
        probs: ``B×K×H×W`` softmax probabilities (K >= 2).
        valid: optional ``B×H×W`` bool mask of the pixels to count.
    """
    _check_probs("mean_entropy", probs, valid)
    entropy = pixel_entropy(probs) / math.log(probs.shape[1])
    return (entropy[valid] if valid is not None else entropy).mean()


def information_maximization_from_statistics(
    mean_prediction: Tensor, mean_pixel_entropy: Tensor
) -> Tensor:
    """IM from dataset-level statistics: ``H(mean_prediction) − mean_pixel_entropy``.

    Args:
        mean_prediction: ``K`` mean class probabilities over all pixels.
        mean_pixel_entropy: the mean per-pixel entropy (natural log, not normalised).
    """
    p = mean_prediction / mean_prediction.sum()
    return -torch.special.xlogy(p, p).sum() - mean_pixel_entropy


def information_maximization(probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Information maximisation (IM). **Higher is better** (mode ``"max"``).

    ``IM = H(p̄) − (1/N) Σ_i H(p_i)`` with ``p̄ = (1/N) Σ_i p_i`` the mean prediction over the N
    valid pixels and ``H(p) = −Σ_k p_k log p_k`` (natural log, not normalised). The second term
    rewards confident pixels, the first diverse predictions over the split (pytorch-adapt's
    ``IMValidator``, entropy plus diversity, computed on ``layer="preds"``: its default
    ``layer="logits"`` takes the diversity term from the softmax of the *mean logits* instead of
    the mean probability). A balanced confident map over K classes gives ``log K`` (the
    maximum); a uniform map and a confident map predicting one class give 0. The mean
    prediction is a split-level quantity: the IM of a split is not the mean of its batches' IM.

    Args:
        probs: ``B×K×H×W`` softmax probabilities (K >= 2).
        valid: optional ``B×H×W`` bool mask of the pixels to count.
    """
    _check_probs("information_maximization", probs, valid)
    rows = _rows(probs, valid)
    rows = rows if rows.dtype == torch.float64 else rows.float()
    if rows.shape[0] == 0:
        return torch.tensor(float("nan"), device=probs.device)
    entropy = -torch.special.xlogy(rows, rows).sum(dim=1).mean()
    return information_maximization_from_statistics(rows.mean(dim=0), entropy)


def confident_fraction(
    probs: Tensor, threshold: float = 0.968, valid: Tensor | None = None
) -> Tensor:
    """Fraction of pixels predicted with confidence ``max_k p_k >= threshold``. **Higher is
    better** (mode ``"max"``).

    DACS' pseudo-label quality weight ``q`` with its threshold τ = 0.968, over a split.

    Args:
        probs: ``B×K×H×W`` softmax probabilities (K >= 2).
        threshold: τ in [0, 1].
        valid: optional ``B×H×W`` bool mask of the pixels to count.
    """
    _check_probs("confident_fraction", probs, valid)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confident_fraction: threshold must be in [0, 1], got {threshold}")
    confident = (probs.amax(dim=1) >= threshold).float()
    return (confident[valid] if valid is not None else confident).mean()


# ------------------------------------------------------------------ class distribution
def histogram_kl(histogram: Tensor, source_frequencies: Tensor, eps: float = 1e-6) -> Tensor:
    """``KL(q ‖ s)`` between a class histogram (counts) and source class frequencies.

    Both are normalised to sum to 1 and smoothed, ``(x + eps) / (1 + K·eps)``, so that a class
    absent from one of them gives a large but finite term; natural log. Equal distributions give
    0. NaN for an empty histogram.

    Args:
        histogram: ``K`` counts (or frequencies) of the predicted classes.
        source_frequencies: ``K`` source label frequencies (any non-negative weights).
        eps: smoothing added to every class.
    """
    q = histogram.double()
    s = torch.as_tensor(source_frequencies, dtype=torch.float64, device=q.device)
    if q.shape != s.shape or q.dim() != 1:
        raise ValueError(
            f"histogram_kl: histogram and source_frequencies must both have K entries, got "
            f"{tuple(q.shape)} and {tuple(s.shape)}"
        )
    if bool((s < 0).any()) or float(s.sum()) <= 0:
        raise ValueError("histogram_kl: source_frequencies must be >= 0 with a positive sum")
    if eps < 0:
        raise ValueError(f"histogram_kl: eps must be >= 0, got {eps}")
    total = q.sum()
    if float(total) <= 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=q.device)
    k = q.numel()
    q = (q / total + eps) / (1.0 + k * eps)
    s = (s / s.sum() + eps) / (1.0 + k * eps)
    return (torch.special.xlogy(q, q) - torch.special.xlogy(q, s)).sum()


def class_distribution_kl(
    probs: Tensor,
    source_frequencies: Tensor | list[float],
    valid: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """KL divergence of the predicted class distribution from the source label distribution.
    **Lower is better** (mode ``"min"``).

    ``KL(q ‖ s) = Σ_k q_k log(q_k / s_k)`` (natural log) with ``q`` the histogram of the
    *argmax* predictions over the valid pixels (hard counts, not the mean probability: it is the
    class mix of the segmentation the model would output) and ``s`` the source label frequencies
    (e.g. ``class_frequencies(class_pixel_counts(source, K))`` of
    :mod:`lightning_uda.data.rcs`); both smoothed with ``eps`` (:func:`histogram_kl`). Matching
    distributions give 0. It assumes the target class mix resembles the source's (true for
    GTA5/SYNTHIA → Cityscapes road scenes to first order) and penalises collapse onto a few
    classes.

    Args:
        probs: ``B×K×H×W`` softmax probabilities (K >= 2).
        source_frequencies: ``K`` source class frequencies.
        valid: optional ``B×H×W`` bool mask of the pixels to count.
        eps: smoothing of both distributions.
    """
    _check_probs("class_distribution_kl", probs, valid)
    labels = probs.argmax(dim=1)
    labels = labels[valid] if valid is not None else labels.reshape(-1)
    histogram = torch.bincount(labels, minlength=probs.shape[1])
    return histogram_kl(histogram, torch.as_tensor(source_frequencies), eps)


# ------------------------------------------------------------------ agreement
def confusion_matrix(a: Tensor, b: Tensor, num_classes: int, valid: Tensor | None = None) -> Tensor:
    """``K×K`` int64 counts of pixels with label ``i`` in ``a`` and ``j`` in ``b``.

    Pixels outside ``valid`` or with a label outside ``[0, K)`` in either map (e.g. the ignore
    label 255) are not counted.
    """
    if a.shape != b.shape:
        raise ValueError(f"confusion_matrix: maps of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.is_floating_point() or b.is_floating_point():
        raise ValueError("confusion_matrix: the maps must hold integer class ids (argmax maps)")
    if num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    _check_valid("confusion_matrix", valid, tuple(a.shape))
    a, b = a.long(), b.long()
    keep = (a >= 0) & (a < num_classes) & (b >= 0) & (b < num_classes)
    if valid is not None:
        keep &= valid
    pairs = a[keep] * num_classes + b[keep]
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou_from_confusion(confusion: Tensor) -> Tensor:
    """Mean IoU in percent from a ``K×K`` confusion matrix; classes absent from both maps (no
    pixel in row or column) are left out; NaN when none is present."""
    c = confusion.double()
    inter = c.diagonal()
    union = c.sum(dim=0) + c.sum(dim=1) - inter
    present = union > 0
    if not bool(present.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=c.device)
    return 100.0 * (inter[present] / union[present]).mean()


def prediction_agreement(
    a: Tensor, b: Tensor, num_classes: int, valid: Tensor | None = None
) -> Tensor:
    """Agreement of two label maps as their mIoU in percent. **Higher is better** (mode
    ``"max"``).

    ``(100/|C|) Σ_{c∈C} |a=c ∧ b=c| / |a=c ∨ b=c|`` over the classes C present in either map
    (classes absent from both are left out, as in the evaluation). For self-training methods
    ``a`` is the student's argmax and ``b`` the EMA teacher's: a student that agrees with its
    slowly moving teacher is stable. Identical maps give 100.

    Args:
        a: ``B×H×W`` integer class ids.
        b: ``B×H×W`` integer class ids.
        num_classes: K; labels outside ``[0, K)`` are not counted.
        valid: optional ``B×H×W`` bool mask of the pixels to count.
    """
    return miou_from_confusion(confusion_matrix(a, b, num_classes, valid))


# ------------------------------------------------------------------ soft neighbourhood density
def sample_pixels(rows: Tensor, max_pixels: int | None, seed: int = 0) -> Tensor:
    """At most ``max_pixels`` of the ``N`` rows of ``rows``, drawn uniformly without replacement.

    Each row gets a key from ``torch.rand`` of a CPU generator seeded with ``seed`` and the
    ``max_pixels`` smallest keys are kept (all rows, in order, when ``N <= max_pixels`` or
    ``max_pixels`` is ``None``). Keeping the smallest keys is mergeable: the sample of a split
    read batch by batch is the union's smallest keys, which is how
    :class:`~lightning_uda.callbacks.UnsupervisedValidation` samples across batches and ranks.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"sample_pixels: max_pixels must be >= 1, got {max_pixels}")
    n = rows.shape[0]
    if max_pixels is None or n <= max_pixels:
        return rows
    keys = torch.rand(n, generator=torch.Generator().manual_seed(int(seed)))
    index = keys.topk(max_pixels, largest=False, sorted=False).indices
    return rows[index.to(rows.device)]


def snd_of_rows(rows: Tensor, temperature: float = 0.05, chunk: int = 1024) -> Tensor:
    """SND of the ``N×C`` rows (``N >= 2``), without sampling (see
    :func:`soft_neighbourhood_density`); rows are processed ``chunk`` at a time, so memory is
    ``chunk × N``."""
    if temperature <= 0:
        raise ValueError(f"soft_neighbourhood_density: temperature must be > 0, got {temperature}")
    if rows.dim() != 2 or rows.shape[0] < 2:
        raise ValueError(
            f"soft_neighbourhood_density: needs N >= 2 rows of features, got {tuple(rows.shape)}"
        )
    x = rows if rows.dtype == torch.float64 else rows.float()
    x = F.normalize(x, p=2, dim=1)
    n = x.shape[0]
    entropies = []
    for start in range(0, n, chunk):
        block = x[start : start + chunk] @ x.T / temperature
        index = torch.arange(block.shape[0], device=x.device)
        # the similarity of a row to itself is left out of its softmax (pytorch-adapt removes it)
        block[index, index + start] = float("-inf")
        p = torch.softmax(block, dim=1)
        entropies.append(-torch.special.xlogy(p, p).sum(dim=1))
    return torch.cat(entropies).mean()


def soft_neighbourhood_density(
    features: Tensor,
    temperature: float = 0.05,
    valid: Tensor | None = None,
    max_pixels: int | None = 2048,
    seed: int = 0,
) -> Tensor:
    """Soft neighbourhood density (SND; Saito et al., "Tune it the Right Way", ICCV 2021).
    **Higher is better** (mode ``"max"``).

    For N sampled pixels with feature rows ``f_i`` (the softmax probabilities by default in the
    callback, pytorch-adapt's ``layer="preds"``): ``f̂_i = f_i / ‖f_i‖``, ``s_ij = f̂_i · f̂_j``,
    ``P_ij = exp(s_ij / τ) / Σ_{k≠i} exp(s_ik / τ)`` for ``j ≠ i``, and
    ``SND = (1/N) Σ_i −Σ_{j≠i} P_ij log P_ij`` (natural log). Points in dense, well-separated
    clusters have many near-equal neighbours (high entropy); scattered points have one nearest
    neighbour (low entropy).

    This is pytorch-adapt's ``SNDValidator`` (cosine similarity, diagonal removed, softmax with
    τ = 0.05, mean row entropy) except for: the rows are a uniform sample of at most
    ``max_pixels`` pixels (:func:`sample_pixels`; pytorch-adapt uses every target sample, which
    for segmentation would be an N² matrix over millions of pixels), so the value depends on the
    budget (it is at most ``log(N − 1)``) and is comparable only between runs with the same
    budget; and ``0 log 0`` is taken as 0 instead of adding the dtype's smallest normal number
    inside the log.

    Args:
        features: ``N×C`` rows, or ``B×C×H×W`` maps whose pixels are the rows.
        temperature: τ (0.05 as in the paper and pytorch-adapt).
        valid: for maps, an optional ``B×H×W`` bool mask of the pixels to use.
        max_pixels: pixel budget (``None``: all rows; mind the ``N×N`` similarity matrix).
        seed: seed of the pixel sample.
    """
    if features.dim() == 4:
        _check_valid("soft_neighbourhood_density", valid, (features.shape[0], *features.shape[2:]))
        rows = _rows(features, valid)
    elif features.dim() == 2:
        if valid is not None:
            raise ValueError("soft_neighbourhood_density: valid applies to B×C×H×W maps only")
        rows = features
    else:
        raise ValueError(
            "soft_neighbourhood_density: features must be N×C rows or B×C×H×W maps, got "
            f"{tuple(features.shape)}"
        )
    return snd_of_rows(sample_pixels(rows, max_pixels, seed), temperature)
