"""What a training run prints: the library's own lines, not the libraries' advertising and noise.

:func:`quiet_run` wraps ``lightning-uda fit|validate|...`` (and so the example fronts, which run
the same command). Inside it:

- Lightning's advertising tips ("💡 Tip: ... litlogger", "... litmodels") are dropped, and its
  informational lines ("Seed set to N", "Initializing distributed: GLOBAL_RANK: 1 ...") are
  printed by global rank 0 only, not once per process (warnings and errors of every rank show);
- these warnings, raised inside Lightning and PyTorch and not actionable by a user of this
  library, are ignored, each matched by its message *and* the module that raises it (all other
  warnings, including every deprecation of this library's own API, still show):

  ==========================================  ==============================================
  raised by                                   why it is hidden
  ==========================================  ==============================================
  ``lightning.pytorch.cli``                   jsonargparse deprecations of calls inside
                                              LightningCLI itself, and the notice that the
                                              fronts pass ``args`` while ``sys.argv`` holds
                                              their own flags (kept: Lightning re-runs the
                                              script with them to start the other processes)
  ``lightning.pytorch.utilities._pytree``     torch's ``LeafSpec`` deprecation, in Lightning
  ``lightning.fabric.utilities.distributed``  torch's ``all_gather`` deprecation, in
                                              Lightning's ``all_gather`` (exact resume gathers
                                              every rank's RNG state through it)
  ``lightning.pytorch.loops.fit_loop``        "number of training batches is smaller than the
                                              logging interval": runs here are iteration-based
                                              and Lightning counts the logging interval in
                                              steps across epochs, so nothing is lost
  ``lightning.pytorch.loops.fit_loop``        "Found N module(s) in eval mode": the EMA teacher
                                              and frozen feature encoders (DAFormer's ImageNet
                                              encoder) stay in eval mode by design (README,
                                              "What a run prints")
  ==========================================  ==============================================

Everything is restored when the block ends (:class:`warnings.catch_warnings` and the logging
filters removed), so a user's own code after a run is unaffected.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from lightning.fabric.utilities.rank_zero import rank_zero_only

__all__ = ["HIDDEN_WARNINGS", "quiet_run"]

#: ``(message regular expression, module regular expression)`` of the warnings :func:`quiet_run`
#: ignores (``warnings.filterwarnings`` semantics: the message matched from its start).
HIDDEN_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"\s*(By default only one JsonargparseDeprecationWarning|.* was deprecated in v\d)",
     r"lightning\.pytorch\.cli"),
    (r"LightningCLI's args parameter is intended", r"lightning\.pytorch\.cli"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     r"lightning\.pytorch\.utilities\._pytree"),
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
     r"lightning\.fabric\.utilities\.distributed"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval",
     r"lightning\.pytorch\.loops\.fit_loop"),
    (r"Found \d+ module\(s\) in eval mode at the start of training",
     r"lightning\.pytorch\.loops\.fit_loop"),
)  # fmt: skip

#: Loggers whose records :class:`_DropNoise` inspects.
_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning.fabric.utilities.distributed",
)


class _DropNoise(logging.Filter):
    """Drops Lightning's "💡 Tip" advertising, and informational lines of ranks other than 0."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip"):
            return False
        if record.levelno < logging.WARNING:
            # the rank in the message: "Seed set to" is logged before the Trainer sets the rank
            prefix = message.startswith("[rank:") and not message.startswith("[rank: 0]")
            return rank_zero_only.rank == 0 and not prefix
        return True


@contextlib.contextmanager
def quiet_run() -> Iterator[None]:
    """Hide Lightning's advertising, per-rank seed lines and the warnings of
    :data:`HIDDEN_WARNINGS` inside the block; restore logging and warning filters on exit."""
    import lightning_utilities.core.rank_zero as utilities_rank_zero

    noise = _DropNoise()
    loggers = {logging.getLogger(name) for name in _LOGGERS}
    loggers.add(utilities_rank_zero.log)  # the logger rank_zero_info writes to
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            for message, module in HIDDEN_WARNINGS:
                warnings.filterwarnings("ignore", message=message, module=module)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
