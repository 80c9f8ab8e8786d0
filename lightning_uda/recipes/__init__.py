"""Recipes in LightningCLI's config layout (``class_path`` / ``init_args``), and how layers merge.

The demo's recipe ships inside the package (:mod:`lightning_uda.recipes.demo`); the papers'
recipes for real data are YAML layers in the repository's ``examples/recipes/`` (see
``docs/recipes.md``). :func:`merge` and :func:`lookup` read layered configs as LightningCLI does.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["lookup", "merge"]


def merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``layer`` as LightningCLI merges config files: mappings merge key by
    key, a different ``class_path`` replaces its ``init_args`` (a first one keeps them), other
    values replace. Copies.

    Example:
        >>> merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
        {'a': {'x': 1, 'y': 3}}
    """
    out = copy.deepcopy(base)
    for key, value in layer.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            before = old.get("class_path")
            replaced = before is not None and value.get("class_path", before) != before
            out[key] = copy.deepcopy(value) if replaced else merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def lookup(config: dict[str, Any], key: str, default: Any = None) -> Any:
    """The value of a dotted key (``"model.init_args.lr"``) of a config, else ``default``."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
