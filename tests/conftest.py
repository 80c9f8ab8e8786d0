"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The shared real-format test data: the repository is cloned with ``shared/`` beside it.
FIXTURES_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """``../shared/fixtures`` (real-format test data); skips the test if it is absent."""
    if not (FIXTURES_ROOT / "cityscapes_mini").is_dir():
        pytest.skip(
            f"test fixtures not found at {FIXTURES_ROOT.resolve()} "
            "(CI clones the repository with shared/ beside it)"
        )
    return FIXTURES_ROOT.resolve()
