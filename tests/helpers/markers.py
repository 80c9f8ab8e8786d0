"""The ``fit`` and ``ddp`` markers, enforced: a test that runs a Trainer without declaring it
fails (``tests/conftest.py`` applies ``guard_trainer`` to every test).

``fit``: the test runs ``Trainer.fit``/``validate``/``test``/``predict``. ``ddp``: it runs one in
more than one process (``devices=2``, gloo); a ddp test is also a fit test. ``-m "not fit"``
then selects the fast tests, and the markers cannot go stale: an unmarked run is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection

import pytest
from lightning.pytorch import Trainer

ENTRY_POINTS = ("fit", "validate", "test", "predict")


def guard_trainer(monkeypatch: pytest.MonkeyPatch, test: str, marks: Collection[str]) -> list[str]:
    """Patch ``Trainer``'s entry points so that ``test`` (a node id) can run only what its
    ``marks`` declare; a run it does not declare raises ``AssertionError``.

    Returns the list the violations are also appended to, so that the caller can fail the test
    even when the test caught the error (``pytest.raises(Exception)``).
    """
    if "ddp" in marks and "fit" not in marks:
        pytest.fail(
            f"{test} is marked ddp but not fit: a ddp test is also a fit test, "
            "mark it @pytest.mark.fit too",
            pytrace=False,
        )
    violations: list[str] = []
    if "ddp" in marks:
        return violations
    for name in ENTRY_POINTS:
        original = getattr(Trainer, name)
        guarded = _guarded(original, name, test, "fit" in marks, violations)
        monkeypatch.setattr(Trainer, name, guarded)
    return violations


def _guarded(
    original: Callable, name: str, test: str, fit: bool, violations: list[str]
) -> Callable:
    @functools.wraps(original)
    def guarded(trainer: Trainer, *args, **kwargs):
        if not fit:
            message = f"{test} runs Trainer.{name}: mark it @pytest.mark.fit"
        elif trainer.world_size > 1:
            message = (
                f"{test} runs Trainer.{name} in {trainer.world_size} processes: "
                "mark it @pytest.mark.ddp"
            )
        else:
            return original(trainer, *args, **kwargs)
        violations.append(message)
        raise AssertionError(message)

    return guarded
