"""The ``fit`` and ``ddp`` markers are enforced (tests/helpers/markers.py, tests/conftest.py)."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from tests.helpers.markers import ENTRY_POINTS, guard_trainer


def _trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, **kwargs)


def test_a_test_without_the_fit_marker_cannot_run_a_trainer(trainer_guard):
    trainer = _trainer()
    for name in ENTRY_POINTS:
        with pytest.raises(
            AssertionError, match=rf"runs Trainer\.{name}: mark it @pytest\.mark\.fit"
        ):
            getattr(trainer, name)(BoringModel())
    # even caught, each one would fail the test when the guard's fixture ends
    assert len(trainer_guard) == len(ENTRY_POINTS)
    trainer_guard.clear()


@pytest.mark.fit
def test_a_fit_test_without_the_ddp_marker_cannot_start_processes(trainer_guard):
    trainer = _trainer(devices=2, strategy="ddp_fork")
    with pytest.raises(AssertionError, match=r"in 2 processes: mark it @pytest\.mark\.ddp"):
        trainer.fit(BoringModel())  # refused before any process starts
    assert len(trainer_guard) == 1
    trainer_guard.clear()


def test_a_ddp_test_must_also_be_marked_fit():
    with pytest.MonkeyPatch.context() as monkeypatch:
        with pytest.raises(pytest.fail.Exception, match="a ddp test is also a fit test"):
            guard_trainer(monkeypatch, "t", {"ddp"})
        entry_points = [getattr(Trainer, name) for name in ENTRY_POINTS]
        guard_trainer(monkeypatch, "t", {"fit", "ddp"})  # marked both: nothing to guard
        assert [getattr(Trainer, name) for name in ENTRY_POINTS] == entry_points
