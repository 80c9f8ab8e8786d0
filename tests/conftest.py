"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.markers import guard_trainer

# The 2-process DDP tests fork the test process (ddp_fork: fast, no re-import). A forked child
# deadlocks in its first parallel op if the parent has started OpenMP worker threads (GNU OpenMP
# is not fork-safe; e.g. one adaptive_avg_pool2d on 2 threads is enough). The tests' tensors are
# tiny, so one intra-op thread costs little and keeps every fork safe, whatever ran before.
torch.set_num_threads(1)

#: Real-format test data shipped inside the repository (see tests/fixtures/README.md).
FIXTURES_ROOT = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """``tests/fixtures`` (real-format test data). A missing fixture fails the test: the data
    ship with the repository, so a clone that lacks them is broken, not a reason to skip."""
    if not (FIXTURES_ROOT / "cityscapes_mini").is_dir():
        pytest.fail(
            f"test fixtures missing: {FIXTURES_ROOT / 'cityscapes_mini'} should be part of the "
            "repository (restore it with `git checkout -- tests/fixtures`)",
            pytrace=False,
        )
    return FIXTURES_ROOT


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Library caches (rare-class statistics) go to a temporary folder, not ``~/.cache``."""
    monkeypatch.setenv("LIGHTNING_UDA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def trainer_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Enforces the ``fit`` and ``ddp`` markers (tests/helpers/markers.py): a test without
    ``fit`` cannot run a Trainer, one without ``ddp`` cannot run it in several processes. A
    violation the test caught still fails it here. Yields the violations seen so far."""
    marks = {mark.name for mark in request.node.iter_markers()}
    violations = guard_trainer(monkeypatch, request.node.nodeid, marks)
    yield violations
    if violations:
        pytest.fail("\n".join(violations), pytrace=False)
