"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

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
