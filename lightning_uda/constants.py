"""Constants shared across the package (no dependencies, so every layer may import them)."""

from __future__ import annotations

#: Label value for void / ignored pixels, everywhere (never 250).
IGNORE_INDEX = 255

#: ImageNet statistics used to normalise images (RGB, values in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
