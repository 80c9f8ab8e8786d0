"""The demo runner (`lightning-uda demo`) and the adaptation-beats-source-only checks."""

from __future__ import annotations

import json

import pytest

from lightning_uda.demo import DEMO_METHODS, main, run_method

#: Target-val mIoU points by which an alignment method may trail SourceOnly and still "match"
#: (about the seed-to-seed spread of SourceOnly on the demo, see the README's 3-seed table).
MATCH_TOLERANCE = 1.0
#: Self-training must clearly beat SourceOnly (the issue aims for +10; measured +10 to +15).
SELF_TRAINING_MARGIN = 5.0


def test_demo_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    results = main(["--methods", "source_only", "--steps", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| source_only |" in printed and "target-val mIoU" in printed
    payload = json.loads(out.read_text())
    row = payload["results"]["source_only"]
    assert payload["steps"] == 3
    assert set(row) >= {"source_val_miou", "target_val_miou", "target_val_iou", "wall_time_s"}
    assert len(row["target_val_iou"]) == 11
    assert row["target_val_miou"] == pytest.approx(results[0].target_val_miou)


def test_unknown_method_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="choose from"):
        run_method("fixmatch", steps=1)


def test_source_only_learns_the_source_task():
    # 11 classes: a model predicting only background scores ≈ 80/11 ≈ 7 mIoU, a uniform guess
    # less. After 300 steps (measured: 37) it must be far above that; after the full 1,000 ≈ 89.
    result = run_method("source_only", steps=300, progress_bar=False)
    assert result.source_val_miou > 25.0, result
    assert result.target_val_miou < result.source_val_miou  # the shift hurts


@pytest.fixture(scope="module")
def source_only_result():
    return run_method("source_only", progress_bar=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dacs", "classmix"])
def test_self_training_clearly_beats_source_only_on_the_target(method, source_only_result):
    adapted = run_method(method, progress_bar=False)
    gain = adapted.target_val_miou - source_only_result.target_val_miou
    assert gain >= SELF_TRAINING_MARGIN, (adapted, source_only_result)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minent", "advent", "mcc"])
def test_alignment_matches_or_beats_source_only_on_the_target(method, source_only_result):
    adapted = run_method(method, progress_bar=False)
    assert adapted.target_val_miou >= source_only_result.target_val_miou - MATCH_TOLERANCE, (
        adapted,
        source_only_result,
    )


@pytest.mark.slow
def test_oracle_is_the_upper_bound(source_only_result):
    oracle = run_method("oracle", progress_bar=False)
    assert oracle.target_val_miou > source_only_result.target_val_miou + 10.0
    assert set(DEMO_METHODS) >= {"source_only", "dacs", "classmix", "minent", "advent", "mcc"}
