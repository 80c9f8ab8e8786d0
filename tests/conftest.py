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


#: Markers of tests in modules that other work is rewriting now; move each into its module
#: (``@pytest.mark.fit``) and delete it here. ``trainer_guard`` names any still missing.
_PENDING_MARKS: dict[str, dict[str, tuple[str, ...]]] = {
    "tests/test_demo.py": {
        "test_demo_command_prints_the_table_and_writes_json": ("fit",),
        "test_several_seeds_print_and_save_mean_and_std": ("fit",),
        "test_single_seed_option_still_works": ("fit",),
        "test_figure_has_one_column_per_requested_method": ("fit",),
        "test_predictions_leave_training_unchanged": ("fit",),
        "test_demo_hides_lightning_noise_and_restores_logging_and_warnings": ("fit",),
        # trains in a subprocess, where the guard cannot see it
        "test_command_prints_each_result_before_the_table_and_no_noise": ("fit",),
        "test_source_only_learns_the_source_task": ("fit",),
        "test_self_training_clearly_beats_source_only_on_the_target": ("fit",),
        "test_alignment_matches_or_beats_source_only_on_the_target": ("fit",),
        "test_oracle_is_the_upper_bound": ("fit",),
    },
    "tests/test_cli.py": {
        "test_fit_from_the_demo_recipe_chooses_method_and_data_by_class_path": ("fit",),
        "test_fit_ranks_checkpoints_by_the_selected_signal": ("fit",),
    },
    "tests/test_examples.py": {
        "test_custom_method_zeroes_border_weights_and_trains": ("fit",),
        "test_gta_example_trains_and_validates_on_real_format_files": ("fit",),
    },
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        pending = _PENDING_MARKS.get(item.nodeid.split("::")[0], {})
        for name in pending.get(getattr(item, "originalname", item.name), ()):
            item.add_marker(name)
