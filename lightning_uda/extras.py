"""Optional dependencies: packages that only one feature needs are extras of the package.

- ``cityscapes``: ``cityscapesscripts``, the official Cityscapes evaluation
  (``lightning-uda evaluate --official``);
- ``wandb``: Weights & Biases, for ``WandbLogger`` and the :class:`SegmentationPanels` panels.

``pip install 'lightning_uda[dev]'`` installs both (the tests use them).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: Extra name → the packages it installs.
EXTRAS = {"cityscapes": ("cityscapesscripts",), "wandb": ("wandb",)}


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or fail with a message naming the extra that installs it.

    Raises:
        ImportError: ``module`` is not installed; the message says which ``feature`` needs it
            and the ``pip install 'lightning_uda[<extra>]'`` command.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'lightning_uda[{extra}]' (or {' '.join(EXTRAS[extra])}) "
            f"[{type(error).__name__}: {error}]"
        ) from None
