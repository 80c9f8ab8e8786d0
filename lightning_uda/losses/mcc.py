"""Minimum Class Confusion (MCC) loss (Jin et al., ECCV 2020), and a pixel-sampling wrapper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MinimumClassConfusionLoss", "minimum_class_confusion"]


def minimum_class_confusion(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """MCC loss over ``N`` samples.

    ``Ŷ = softmax(Z / T)``; ``H_i = -Σ_j Ŷ_ij log Ŷ_ij``;
    ``w_i = N (1 + e^{-H_i}) / Σ_k (1 + e^{-H_k})`` (detached);
    ``C = Ŷᵀ diag(w) Ŷ`` (K×K); ``C̃`` = C with each row divided by its sum;
    ``L = (Σ_jj' C̃_jj' − tr C̃) / K``. As every row of ``C̃`` sums to 1, ``L = 1 − tr(C̃) / K``,
    in ``[0, 1)``.

    Args:
        logits: ``N×K`` scores.
        temperature: ``T`` (2.5 in the paper).

    Returns:
        Scalar loss.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected N×K logits, got {tuple(logits.shape)}")
    num_samples, num_classes = logits.shape
    probs = F.softmax(logits / temperature, dim=1)
    with torch.no_grad():
        tiny = torch.finfo(probs.dtype).tiny
        sample_entropy = -(probs * probs.clamp_min(tiny).log()).sum(dim=1)
        certainty = 1.0 + torch.exp(-sample_entropy)
        sample_weight = num_samples * certainty / certainty.sum()
    confusion = (probs * sample_weight[:, None]).t() @ probs  # K×K
    # A class no sample touches has a (near-)zero row; clamp keeps it 0 instead of NaN.
    row_sum = confusion.sum(dim=1, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
    confusion = confusion / row_sum
    return (confusion.sum() - confusion.trace()) / num_classes


class MinimumClassConfusionLoss(nn.Module):
    """MCC for segmentation: pixels are the samples, a fixed number is drawn per batch.

    Drawing ``num_pixels`` pixels (uniformly, without replacement, among the valid ones of the
    whole batch; all of them when there are fewer) keeps the cost at ``num_pixels × K`` memory
    whatever the image size.

    Args:
        temperature: softmax temperature ``T``.
        num_pixels: number of pixels sampled per call.
    """

    def __init__(self, temperature: float = 2.5, num_pixels: int = 4096) -> None:
        super().__init__()
        if num_pixels < 1:
            raise ValueError(f"num_pixels must be >= 1, got {num_pixels}")
        self.temperature = temperature
        self.num_pixels = num_pixels

    def sample_pixels(
        self,
        logits: Tensor,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Pick at most ``num_pixels`` valid pixels of the batch.

        Args:
            logits: ``B×K×H×W`` scores.
            valid: optional ``B×H×W`` bool mask of usable pixels (same size as the logits).
            generator: random source (CPU or on any device); the global RNG when None.

        Returns:
            ``N×K`` logits of the chosen pixels, ``N = min(num_pixels, #valid)``.
        """
        if logits.dim() != 4:
            raise ValueError(f"expected B×K×H×W logits, got {tuple(logits.shape)}")
        batch, num_classes, height, width = logits.shape
        if valid is None:
            candidates = torch.arange(batch * height * width, device=logits.device)
        else:
            if valid.shape != (batch, height, width):
                raise ValueError(
                    f"valid must be B×H×W like the logits ({batch}×{height}×{width}), got "
                    f"{tuple(valid.shape)}; upsample the logits (losses.upsample_logits) or "
                    "resize the mask first"
                )
            candidates = valid.reshape(-1).nonzero().squeeze(1).to(logits.device)
        if candidates.numel() > self.num_pixels:
            device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(candidates.numel(), generator=generator, device=device)
            candidates = candidates[order[: self.num_pixels].to(candidates.device)]
        image_index = candidates // (height * width)
        pixel_index = candidates % (height * width)
        # Advanced indices separated by a slice put the sample dim first: N×K.
        return logits.flatten(2)[image_index, :, pixel_index]

    def forward(
        self,
        logits: Tensor,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """MCC loss on sampled pixels.

        Args:
            logits: ``B×K×H×W`` target-domain scores.
            valid: optional ``B×H×W`` bool mask of usable pixels.
            generator: random source for the pixel draw.

        Returns:
            Scalar loss; 0 (attached to the graph) when no pixel is valid.
        """
        samples = self.sample_pixels(logits, valid=valid, generator=generator)
        if samples.shape[0] == 0:
            return logits.sum() * 0.0
        return minimum_class_confusion(samples, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, num_pixels={self.num_pixels}"
