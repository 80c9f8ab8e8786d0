"""Domain discriminators: AdvEnt's fully-convolutional one (Vu et al., CVPR 2019) and DANN's
per-position domain classifier (Ganin & Lempitsky, ICML 2015)."""

from __future__ import annotations

from torch import Tensor, nn


class Discriminator(nn.Module):
    """Fully-convolutional discriminator: 5 convs (kernel 4, stride 2, padding 1), no norm.

    Channels ``in_channels → ndf → 2·ndf → 4·ndf → 8·ndf → 1`` (64→128→256→512→1 by default),
    ``LeakyReLU(0.2)`` after every conv but the last, convs with bias, PyTorch default init,
    exactly as AdvEnt's ``get_fc_discriminator``. In AdvEnt the input is the weighted
    self-information map of the segmentor output (``in_channels = num_classes``).

    Args:
        in_channels: channels of the input map (K for AdvEnt).
        ndf: width of the first conv.

    Shape:
        - input: ``B×in_channels×H×W``.
        - output: domain logits ``B×1×H/32×W/32`` (each conv maps ``n`` to ``⌊n/2⌋``, so
          ``⌊H/32⌋`` in general): 512×512 -> 16×16. Use with ``BCEWithLogits``
          (AdvEnt: source label 0, target label 1).

    Example:
        >>> import torch
        >>> Discriminator(in_channels=19)(torch.zeros(2, 19, 64, 64)).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, in_channels: int, ndf: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or ndf < 1:
            raise ValueError(f"in_channels and ndf must be >= 1, got {in_channels}, {ndf}")
        channels = [in_channels, ndf, ndf * 2, ndf * 4, ndf * 8, 1]
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            if index < len(channels) - 2:
                layers.append(nn.LeakyReLU(negative_slope=0.2, inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` -> ``B×1×⌊H/32⌋×⌊W/32⌋`` logits."""
        return self.layers(x)


class PixelDomainClassifier(nn.Sequential):
    """Per-position domain classifier: 1×1 convs ``in → hidden → hidden → 1`` with ReLU.

    The fully convolutional equivalent of the MLP domain discriminator of DANN: tllib's
    ``DomainDiscriminator`` is ``Linear(in, 1024) → BN → ReLU → Linear(1024, 1024) → BN → ReLU →
    Linear(1024, 1) → Sigmoid`` on one pooled feature vector per image; a 1×1 convolution is
    that ``Linear`` applied at every position of a feature map. Differences:

    - no BatchNorm: the source and target features go through ``D`` in separate calls (their
      crops may differ in size), and BatchNorm over a single-domain batch would normalise away
      the very statistics that tell the domains apart (tllib's BN sees the concatenated batch);
    - a logit instead of a sigmoid probability (the loss is BCE-with-logits, stable under AMP);
    - ``hidden`` defaults to 256 rather than 1024 (one hidden vector per position of a stride-8
      map is far more activations than one per image).

    Args:
        in_channels: channels of the feature map.
        hidden: width of the two hidden layers.

    Shape:
        - input ``B×in_channels×h×w``; output ``B×1×h×w`` domain logits (> 0: target).
    """

    def __init__(self, in_channels: int, hidden: int = 256) -> None:
        if in_channels < 1 or hidden < 1:
            raise ValueError(f"in_channels and hidden must be >= 1, got {in_channels}, {hidden}")
        super().__init__(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )


__all__ = ["Discriminator", "PixelDomainClassifier"]
