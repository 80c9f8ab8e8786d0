"""LSD-seg's image generator and ACGAN patch discriminator (Sankaranarayanan et al., CVPR 2018).

The generator reconstructs the input image from the segmentor's multi-level features (the
features of :func:`lightning_uda.models.forward_with_features`); the discriminator scores patches
of real and reconstructed images with a 4-way domain map (source-real, source-fake, target-real,
target-fake) and a per-patch class map. :class:`~lightning_uda.methods.LSDSegModule` trains them.

**Pixel space.** Both networks work on **RGB in [0, 1]**, as the reference does ("we pass the
unnormalized data to the discriminator, so the GANs produce images without data normalization"):
the generator ends in a sigmoid, and the method feeds the discriminator real images de-normalised
with the run's input space (:meth:`~lightning_uda.normalization.InputNormalization.denormalize`).
So the L1 reconstruction loss and the discriminator see the same scale whatever the input space
(ImageNet-normalised or Caffe 0-255 BGR); ``normalization.normalize(generator(...))`` is the
reconstruction in the segmentor's input space.

**Sizes.** The reference generator reads FCN8s-VGG16's fc7 (4096 channels, stride 32), pool4
(512, stride 16) and pool3 (256, stride 8); here it reads the deepest ``len(in_channels)``
features of any segmentor, so its input widths come from the segmentor (the method probes them)
and its spatial steps from the features' sizes (bilinear resize, then convolution: the
"resize convolution" variant the reference code also carries, instead of transposed convolutions
whose geometry is tied to FCN8s' padding of 100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_uda.models.segmentor import forward_with_features

__all__ = [
    "LSDDiscriminator",
    "LSDGenerator",
    "PatchOutputs",
    "ResidualBlock",
    "generator_features",
    "init_gan_weights",
    "FeatureProbe",
    "probe_generator_features",
]


def init_gan_weights(module: nn.Module) -> None:
    """The reference's ``weights_init``: every (transposed) conv weight ~ N(0, 0.02), its bias
    ~ U(-0.01, 0.01). Apply with ``network.apply(init_gan_weights)``."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.01, 0.01)


class ResidualBlock(nn.Module):
    """``x + dropout(act(InstanceNorm(conv3×3(x))))``: the reference's ``ResnetBlock``.

    Args:
        channels: input = output channels.
        bias: whether the convolution has a bias (generator: no, discriminator: yes).
        leaky: LeakyReLU(0.2) (discriminator) instead of ReLU (generator).
        dropout: element-wise dropout probability on the residual branch (0.5 in the reference).
    """

    def __init__(
        self, channels: int, *, bias: bool = False, leaky: bool = False, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)
        self.norm = nn.InstanceNorm2d(channels)
        self.act = nn.LeakyReLU(0.2) if leaky else nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` -> ``B×C×H×W``."""
        return x + self.dropout(self.act(self.norm(self.conv(x))))


def _stage(in_channels: int, out_channels: int, blocks: int, dropout: float) -> nn.Sequential:
    """``conv 1×1 → InstanceNorm → ReLU → blocks × ResidualBlock`` (a generator stage)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(),
    ]
    layers += [ResidualBlock(out_channels, dropout=dropout) for _ in range(blocks)]
    return nn.Sequential(*layers)


class LSDGenerator(nn.Module):
    """Reconstructs an RGB image in [0, 1] from a segmentor's multi-level features.

    Deep to shallow, one stage per feature level (the reference ``_netG``): the stage input is the
    feature, concatenated with the previous stage's output resized to the feature's size (from the
    second stage on) and with ``noise_channels`` channels of N(0, 1) noise (none by default, as the
    reference's ``nz = 0``); a 1×1 convolution, InstanceNorm and ReLU bring it to the stage width,
    then ``blocks`` residual blocks. Stage widths halve from deep to shallow and end at
    ``2 · width``: ``8w, 4w, 2w`` for three levels (512, 256, 128 with the default ``width=64``,
    the reference's). A refinement stage at half the input resolution (``width`` channels,
    ``blocks`` residual blocks, the reference's last 64-channel stage at stride 2) and a 3×3
    convolution + sigmoid at the input resolution give the image.

    The entry convolutions are 1×1 (the reference's are transposed 7×7/3×3/5×5 on FCN8s' small
    stride-32 map): with DeepLabV2 the deepest feature is 2048 channels at stride 8, where a 3×3
    entry would cost 9 times more.

    Args:
        in_channels: channels of the features the generator reads, **shallow → deep** (the order
            of ``forward_with_features``), e.g. ``(256, 512, 4096)`` for the reference's pool3,
            pool4 and fc7, or :func:`probe_generator_features` of a segmentor.
        width: channels of the refinement stage (the reference's ``ngf = 64``).
        noise_channels: noise channels concatenated to every stage's input (0: none).
        blocks: residual blocks per stage (2, as the reference).
        dropout: dropout of the residual blocks (0.5, as the reference).

    Shape:
        - features: list of ``B×in_channels[i]×h_i×w_i`` (any sizes; each stage resizes to its
          own feature).
        - output: ``B×3×H×W`` RGB in [0, 1] at the requested ``size``.

    Example:
        >>> import torch
        >>> g = LSDGenerator((8, 16), width=4)
        >>> feats = [torch.zeros(2, 8, 8, 8), torch.zeros(2, 16, 4, 4)]
        >>> g(feats, size=(32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        width: int = 64,
        noise_channels: int = 0,
        blocks: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if not in_channels or min(in_channels) < 1:
            raise ValueError(
                f"LSDGenerator: in_channels needs at least one positive entry, got {in_channels}"
            )
        if width < 1 or noise_channels < 0 or blocks < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                "LSDGenerator: need width >= 1, noise_channels >= 0, blocks >= 0 and dropout in "
                f"[0, 1); got width={width}, noise_channels={noise_channels}, blocks={blocks}, "
                f"dropout={dropout}"
            )
        self.in_channels = in_channels
        self.noise_channels = int(noise_channels)
        levels = len(in_channels)
        #: Stage widths, deep → shallow: ``width · 2**levels, ..., width · 2``.
        self.stage_channels = tuple(width * 2 ** (levels - i) for i in range(levels))
        stages = []
        previous = 0
        for feature, out in zip(reversed(in_channels), self.stage_channels, strict=True):
            stages.append(_stage(feature + previous + noise_channels, out, blocks, dropout))
            previous = out
        self.stages = nn.ModuleList(stages)
        refine: list[nn.Module] = [
            nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(width),
            nn.ReLU(),
        ]
        refine += [ResidualBlock(width, dropout=dropout) for _ in range(blocks)]
        self.refine = nn.Sequential(*refine)
        self.to_rgb = nn.Conv2d(width, 3, kernel_size=3, padding=1)
        self.apply(init_gan_weights)

    def noise_shapes(self, features: Sequence[Tensor]) -> list[tuple[int, ...]]:
        """Shapes of the noise tensors of each stage (deep → shallow) for these features; empty
        without noise channels."""
        if self.noise_channels == 0:
            return []
        return [(f.shape[0], self.noise_channels, *f.shape[-2:]) for f in reversed(list(features))]

    def sample_noise(
        self, features: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> list[Tensor] | None:
        """N(0, 1) noise for each stage (deep → shallow), drawn on the CPU from ``generator``
        (reproducible and resumable with the method's own generator) and moved to the features'
        device; ``None`` without noise channels."""
        if self.noise_channels == 0:
            return None
        like = features[-1]
        return [
            torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)
            for shape in self.noise_shapes(features)
        ]

    def forward(
        self,
        features: Sequence[Tensor],
        size: tuple[int, int] | torch.Size,
        noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Features (shallow → deep) -> ``B×3×H×W`` RGB in [0, 1] at ``size = (H, W)``.

        Args:
            features: one map per entry of ``in_channels``, shallow → deep.
            size: the output (input image) size.
            noise: per stage (deep → shallow), from :meth:`sample_noise`; drawn from torch's
                global generator when ``None`` and the generator has noise channels.
        """
        features = list(features)
        if len(features) != len(self.in_channels) or any(
            f.dim() != 4 or f.shape[1] != c
            for f, c in zip(features, self.in_channels, strict=False)
        ):
            raise ValueError(
                f"LSDGenerator expects {len(self.in_channels)} feature maps B×C×h×w with C = "
                f"{self.in_channels} (shallow → deep); got "
                f"{[tuple(f.shape) for f in features]}"
            )
        if self.noise_channels and noise is None:
            noise = [
                torch.randn(s, device=features[-1].device) for s in self.noise_shapes(features)
            ]
        x: Tensor | None = None
        for index, (stage, feature) in enumerate(zip(self.stages, reversed(features), strict=True)):
            parts = [feature]
            if x is not None:
                parts.append(_resize(x, feature.shape[-2:]))
            if noise is not None and self.noise_channels:
                parts.append(noise[index].to(feature.dtype))
            x = stage(torch.cat(parts, dim=1) if len(parts) > 1 else feature)
        height, width = int(size[0]), int(size[1])
        x = self.refine(_resize(x, ((height + 1) // 2, (width + 1) // 2)))
        return torch.sigmoid(self.to_rgb(_resize(x, (height, width))))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``); the identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(int(s) for s in size):
        return x
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


class PatchOutputs(NamedTuple):
    """The two maps of :class:`LSDDiscriminator`, at the same patch resolution."""

    #: ``B×4×h×w`` domain logits: source-real 0, source-fake 1, target-real 2, target-fake 3.
    domain: Tensor
    #: ``B×K×h×w`` class logits of each patch.
    classes: Tensor


class LSDDiscriminator(nn.Module):
    """ACGAN-style patch discriminator: a 4-way domain map and a K-way class map.

    The reference ``_netD``: conv 4×4 stride 2 padding 2 (with bias) → InstanceNorm → LeakyReLU
    (0.2), then three groups of ``blocks`` residual blocks (LeakyReLU, bias) separated by 2×2
    max-pools, all at ``width`` channels; two 3×3 convolutions give the domain logits (4) and the
    class logits (``num_classes``). Output stride about 8: an ``H×W`` image gives
    ``⌊⌊(H/2 + 1)⌋/2⌋/2``-sided maps (:meth:`output_size`; 320×640 -> 40×80, 512×512 -> 64×64).

    Args:
        num_classes: K of the class map.
        in_channels: image channels (3).
        width: channels of every layer (128, the reference's ``2 · ndf``).
        blocks: residual blocks per resolution (3, as the reference: 9 in all).
        dropout: dropout of the residual blocks (0.5, as the reference).

    Shape:
        - input: ``B×3×H×W`` RGB in [0, 1]; at least 16×16 (:data:`MIN_INPUT`) so that the
          InstanceNorm of the last resolution sees more than one value.
        - output: :class:`PatchOutputs` ``(domain B×4×h×w, classes B×K×h×w)``.

    Example:
        >>> import torch
        >>> d = LSDDiscriminator(num_classes=5, width=8)
        >>> out = d(torch.zeros(2, 3, 32, 32))
        >>> out.domain.shape, out.classes.shape
        (torch.Size([2, 4, 4, 4]), torch.Size([2, 5, 4, 4]))
    """

    #: Smallest image side the discriminator accepts in training (16 -> 2×2 patch maps).
    MIN_INPUT = 16

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 128,
        blocks: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1 or blocks < 0:
            raise ValueError(
                "LSDDiscriminator: need num_classes, in_channels, width >= 1 and blocks >= 0; "
                f"got {num_classes}, {in_channels}, {width}, {blocks}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LSDDiscriminator: dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=2),
            nn.InstanceNorm2d(width),
            nn.LeakyReLU(0.2),
        ]
        for group in range(3):
            if group:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [
                ResidualBlock(width, bias=True, leaky=True, dropout=dropout) for _ in range(blocks)
            ]
        self.features = nn.Sequential(*layers)
        self.domain_head = nn.Conv2d(width, 4, kernel_size=3, padding=1)
        self.class_head = nn.Conv2d(width, num_classes, kernel_size=3, padding=1)
        self.num_classes = num_classes
        self.apply(init_gan_weights)

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        """Patch-map size for an ``height×width`` input."""
        return tuple((side // 2 + 1) // 2 // 2 for side in (int(height), int(width)))  # type: ignore[return-value]

    def forward(self, images: Tensor) -> PatchOutputs:
        """``B×3×H×W`` -> ``PatchOutputs(domain B×4×h×w, classes B×K×h×w)``."""
        x = self.features(images)
        return PatchOutputs(self.domain_head(x), self.class_head(x))


def generator_features(
    features: Sequence[Tensor], images: Tensor, levels: int | None = None
) -> list[Tensor]:
    """The features the generator reads: the deepest ``levels`` of ``features`` (all if
    ``None`` or fewer), shallow → deep, leaving out the input image itself.

    smp encoders return the input as their first "feature"; a generator reading it would copy the
    image instead of reconstructing it from what the segmentor computed.
    """
    usable = [f for f in features if f is not images]
    if not usable:
        raise ValueError("the segmentor returned no feature maps besides the input image")
    return usable if levels is None else usable[-levels:]


class FeatureProbe(NamedTuple):
    """What :func:`probe_generator_features` measured."""

    #: Channels of the features the generator reads, shallow → deep.
    channels: tuple[int, ...]
    #: Largest stride among them (input side / feature side), e.g. 8 for TinyUNet's stride-8
    #: map, 32 for a ResNet encoder's last stage.
    stride: float


@torch.no_grad()
def probe_generator_features(
    model: nn.Module, levels: int | None = None, size: int = 64
) -> FeatureProbe:
    """Channels and largest stride of :func:`generator_features` of ``model``, from one forward
    of a ``size²`` zero image in eval mode (no BatchNorm statistics change; the model's mode is
    restored).

    Raises:
        TypeError: the model does not expose its features (see ``forward_with_features``).
    """
    was_training = model.training
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else None
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    images = torch.zeros(1, 3, size, size, device=device, dtype=dtype)
    model.eval()
    try:
        _, features = forward_with_features(model, images)
    finally:
        model.train(was_training)
    used = generator_features(features, images, levels)
    return FeatureProbe(
        channels=tuple(int(f.shape[1]) for f in used),
        stride=max(size / min(int(f.shape[-2]), int(f.shape[-1])) for f in used),
    )
