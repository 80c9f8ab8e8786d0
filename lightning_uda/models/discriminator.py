"""AdvEnt's fully-convolutional domain discriminator (Vu et al., CVPR 2019)."""

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


__all__ = ["Discriminator"]
