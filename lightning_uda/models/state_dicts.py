"""State-dict files for :func:`~lightning_uda.models.checkpoints.load_checkpoint`: reading them,
comparing their keys with a module, the :class:`CheckpointReport` it returns, and the library's
own layout (whole model or encoder, behind optional wrapper prefixes).

The papers' layouts (DeepLab-v2, MiT) and the loader that tries them all live in
:mod:`lightning_uda.models.checkpoints`.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

#: Wrapper prefixes tried, in order, when matching checkpoint keys to the model
#: (Lightning modules store the segmentor as ``model.``; DDP / DataParallel add ``module.``).
CHECKPOINT_PREFIXES = ("", "model.", "module.", "model.module.", "module.model.")

#: How many key names an error message shows.
_SHOW_KEYS = 5

_LOGGER = logging.getLogger("lightning_uda")


def _read_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[dict, str]:
    """Load ``checkpoint`` and return ``(flat state dict, description for messages)``."""
    if isinstance(checkpoint, Mapping):
        obj: Any = checkpoint
        where = "the given state dict"
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint file not found: {path} (expected a local file written by "
                "torch.save holding a state dict, plain or under 'state_dict' or 'model')"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise RuntimeError(
                f"{path} holds objects other than tensors and plain containers, which "
                "torch.load(weights_only=True) refuses. If you trust the file, load it yourself "
                "(torch.load(path, weights_only=False)) and pass the state dict as checkpoint="
            ) from error
        except (EOFError, RuntimeError) as error:  # empty, truncated or not a torch file
            size = path.stat().st_size
            raise RuntimeError(
                f"cannot read checkpoint {path} ({size} bytes): {type(error).__name__}: {error}. "
                "The file is empty, truncated or not written by torch.save; copy it again."
            ) from error
        where = str(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        found = list(obj)[:_SHOW_KEYS] if isinstance(obj, Mapping) else type(obj).__name__
        raise RuntimeError(
            f"{where} does not hold a state dict (a non-empty mapping of names to tensors, plain "
            f"or under 'state_dict' or 'model'); found {found}"
        )
    return dict(obj), where


def _compare(candidate: Mapping[str, Tensor], target: Mapping[str, Tensor], encoder: bool) -> dict:
    """Missing / unexpected / shape-mismatched keys of ``candidate`` against ``target``."""
    # Old checkpoints may lack BatchNorm's step counter; it does not affect the outputs.
    missing = [k for k in target if k not in candidate and not k.endswith("num_batches_tracked")]
    # An ImageNet classifier file carries its `fc` head; the encoder has no use for it.
    unexpected = [k for k in candidate if k not in target and not (encoder and k.startswith("fc."))]
    mismatched = [
        f"{k}: checkpoint {tuple(candidate[k].shape)} vs model {tuple(target[k].shape)}"
        for k in candidate
        if k in target and candidate[k].shape != target[k].shape
    ]
    matched = sum(1 for k in candidate if k in target) - len(mismatched)
    return {
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
        "matched": matched,
    }


@dataclass(frozen=True)
class CheckpointReport:
    """What :func:`load_checkpoint` loaded (it also logs this at INFO level).

    Attributes:
        source: the file's path, or ``"the given state dict"``.
        layout: the recognised layout, a
            :data:`~lightning_uda.models.checkpoints.CHECKPOINT_LAYOUTS` name.
        target: ``"model"`` when every tensor of the model (but BatchNorm's step counters) was
            set from the file, ``"encoder"`` when the backbone was and the head kept (at least
            part of) its initialisation; ``heads`` names the head modules that were loaded.
        heads: head modules set from the file besides the encoder (``"classifier"``,
            ``"aux_classifier"``); with ``target="model"`` every head module was.
        loaded: the model's state-dict keys that were set.
        skipped: file key -> why it was not loaded (reference classifiers that do not fit,
            an ImageNet file's ``fc.*``). Keys outside a library file's wrapper prefix (a
            Lightning checkpoint's ``teacher.*``, ``discriminator.*``) are not listed.
    """

    source: str
    layout: str
    target: Literal["model", "encoder"]
    heads: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)


def _show_keys(keys: Sequence[str]) -> str:
    """``"N [first keys], ... (M more)"`` for messages."""
    more = f", ... ({len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
    return f"{len(keys)} {list(keys[:_SHOW_KEYS])}{more}"


def _log_skipped(skipped: Mapping[str, str]) -> None:
    """One INFO line per distinct reason, naming the first keys it applies to."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        _LOGGER.info("load_checkpoint: skipped %s: %s", _show_keys(keys), reason)


def _load_tensors(module: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """``module.load_state_dict(tensors, strict=False)``, past subclasses' overrides.

    smp's MiT encoder overrides ``load_state_dict`` without a ``strict`` argument; the callers
    have already checked the keys (a missing ``num_batches_tracked`` is the only gap allowed).
    """
    nn.Module.load_state_dict(module, tensors, strict=False)


def _load_library(
    model: nn.Module, state_dict: Mapping[str, Tensor], where: str
) -> tuple[CheckpointReport | None, dict[str, Any]]:
    """Try the library layout: ``(report, _)`` when it loaded, ``(None, closest miss)`` if not."""
    encoder = getattr(model, "encoder", None)
    targets: list[tuple[Literal["model", "encoder"], nn.Module]] = [("model", model)]
    if isinstance(encoder, nn.Module):
        targets.append(("encoder", encoder))
    best: dict[str, Any] | None = None
    for prefix in CHECKPOINT_PREFIXES:
        candidate = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not candidate:
            continue
        for target_name, target in targets:
            target_state = target.state_dict()
            comparison = _compare(candidate, target_state, encoder=target_name == "encoder")
            if not (comparison["missing"] or comparison["unexpected"] or comparison["mismatched"]):
                loadable = {k: v for k, v in candidate.items() if k in target_state}
                _load_tensors(target, loadable)
                key_prefix = "" if target_name == "model" else "encoder."
                skipped = {
                    prefix + k: "an ImageNet classifier's fc layer; the encoder has none"
                    for k in candidate
                    if k not in target_state
                }
                report = CheckpointReport(
                    source=where,
                    layout="library",
                    target=target_name,
                    loaded=tuple(key_prefix + k for k in loadable),
                    skipped=skipped,
                )
                _LOGGER.info(
                    "load_checkpoint: loaded %d tensors from %s into the %s (library layout, "
                    "key prefix %r stripped)",
                    len(loadable),
                    where,
                    target_name,
                    prefix,
                )
                _log_skipped(skipped)
                return report, {}
            if best is None or comparison["matched"] > best["matched"]:
                best = {**comparison, "target": target_name, "prefix": prefix}
    assert best is not None  # the state dict is non-empty, so prefix "" gave a candidate
    return None, best


__all__ = ["CHECKPOINT_PREFIXES", "CheckpointReport"]
