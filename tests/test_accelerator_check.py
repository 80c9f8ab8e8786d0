"""The accelerator check (benchmarks/accelerator_check.py) in its tiny CPU form: every variant
trains through the same code path, the faster modes give the fp32 losses up to bf16 rounding,
missing architectures are skipped, and one JSON holds it all. Nothing here is timed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("accelerator_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["accelerator_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_gpu_cases_are_the_issues_recipes(check):
    by_name = {case.name: case for case in check.CASES}
    assert (by_name["dacs"].arch, by_name["dacs"].encoder) == ("deeplabv2", "resnet101")
    assert (by_name["daformer"].arch, by_name["daformer"].encoder) == ("daformer", "mit_b5")
    assert by_name["dacs"].size == by_name["daformer"].size == 512
    assert by_name["dacs"].batch == by_name["daformer"].batch == 2
    assert check.VARIANTS["bf16+cl"] == ("bf16-mixed", True, False)


@pytest.mark.fit
def test_tiny_check_runs_every_variant_and_skips_missing_archs(check, tmp_path):
    missing = check.Case("nope", "DACSModule", "no_such_arch", None, 32, 1)
    rows = check.main(
        ["--tiny", "--cases", "dacs", "--json", str(tmp_path / "check.json"), "--steps", "1"]
    )
    rows += check.run_check([missing], ["fp32"], "cpu", warmup=1, steps=1)
    by_variant = {r["variant"]: r for r in rows if r["case"] == "dacs"}
    assert set(by_variant) == {"fp32", "bf16", "bf16+cl"}  # compile left out on a CPU
    for row in by_variant.values():
        assert row["status"] == "ok" and len(row["losses"]) == 2  # 1 warm-up + 1 timed step
        assert all(math.isfinite(x) for x in row["losses"]) and row["step_s"] > 0
    fp32, bf16, cl = (by_variant[v]["losses"] for v in ("fp32", "bf16", "bf16+cl"))
    assert fp32 != bf16  # bf16 really ran in reduced precision ...
    assert check.relative_loss_difference(bf16, fp32) < 2e-2  # ... of the same computation
    assert check.relative_loss_difference(cl, bf16) < 2e-2  # memory format changes no maths
    skipped = rows[-1]
    assert (
        skipped["status"] == "skipped" and "'no_such_arch' is not registered" in skipped["reason"]
    )
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["device"] == "cpu" and len(report["rows"]) == 3
    assert "| dacs | bf16+cl |" in check.table(rows) and "skipped" in check.table(rows)
