"""What a run prints: quiet_run's narrow filters, and the example's output with --devices 2."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import warnings

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from lightning_uda.quiet import HIDDEN_WARNINGS, quiet_run
from tests.helpers.examples import EXAMPLES, gta_and_cityscapes, load_example

#: A message each entry of HIDDEN_WARNINGS matches, in the same order.
_RAISED = (
    "\n    ``instantiate_classes`` was deprecated in v4.49.0 and will be removed in v5.0.0.",
    "LightningCLI's args parameter is intended to run from within Python like if it were ...",
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
    "torch.distributed.nn.functional.all_gather is deprecated, use ...",
    "The number of training batches (3) is smaller than the logging interval "
    "Trainer(log_every_n_steps=50).",
    "Found 290 module(s) in eval mode at the start of training. This may lead to ...",
)


def _warn(message: str, module: str, category: type[Warning] = UserWarning) -> None:
    warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)


def _shown(message: str, module: str) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_run():
            _warn(message, module)
    return [str(w.message) for w in seen]


@pytest.mark.parametrize(("index", "message"), enumerate(_RAISED))
def test_each_hidden_warning_is_matched_by_message_and_module(index, message):
    _, module_pattern = HIDDEN_WARNINGS[index]
    module = module_pattern.replace("\\", "")
    assert _shown(message, module) == []
    # the same message raised elsewhere (e.g. by this library) still shows
    assert _shown(message, "lightning_uda.methods.base") == [message]


def test_other_warnings_and_the_librarys_own_deprecations_still_show():
    assert _shown("something else", "lightning.pytorch.loops.fit_loop") == ["something else"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_run():
            _warn("old argument", "lightning_uda.methods.lsd_seg", DeprecationWarning)
    assert [str(w.message) for w in seen] == ["old argument"]


def test_filters_are_restored_after_the_run():
    before = list(warnings.filters)
    with quiet_run():
        assert len(warnings.filters) == len(before) + len(HIDDEN_WARNINGS)
    assert warnings.filters == before


def test_tips_and_other_ranks_seed_lines_are_dropped(caplog, monkeypatch):
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    tips_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO), quiet_run():
        tips_log.info("💡 Tip: For seamless cloud logging and experiment tracking, try ...")
        seed_log.info("[rank: 1] Seed set to 0")
        seed_log.info("[rank: 0] Seed set to 0")
        tips_log.info("Trainer.fit stopped")
        monkeypatch.setattr(rank_zero_only, "rank", 1)  # once the Trainer knows the ranks
        seed_log.info("Seed set to 0")
        logging.getLogger("lightning.fabric.utilities.distributed").info(
            "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"
        )
        tips_log.warning("a warning of rank 1")
    assert [r.getMessage() for r in caplog.records] == [
        "[rank: 0] Seed set to 0",
        "Trainer.fit stopped",
        "a warning of rank 1",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tips_log.info("💡 Tip: shown again outside a run")
    assert len(caplog.records) == 1


def test_from_scratch_says_what_it_implies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = load_example("_common")

    def header(*argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            common.run(
                common.parse_args("x", ["--method", "dacs", *argv, "--print-recipe"]), "gta5"
            )
        return "\n".join(ln for ln in out.getvalue().splitlines() if ln.startswith("#"))

    said = header("--from-scratch")
    assert "--from-scratch: the encoder starts from random weights" in said
    assert "training loss typically rises" in said
    # ImageNet encoder weights: not random, nothing to say
    assert "random weights" not in header("--from-scratch", "--encoder-weights", "imagenet")


# ------------------------------------------------------------------ the example, 2 processes
#: Small crops and evaluation size, so that two CPU processes train DeepLab-v2 in seconds.
_SMALL = [
    f"--data.init_args.{split}.init_args.transform.init_args.{key}={value}"
    for split in ("source", "target")
    for key, value in (("resize", "[128,256]"), ("crop", "[64,64]"))
]


@pytest.mark.fit
@pytest.mark.ddp
@pytest.mark.slow
def test_example_with_two_devices_prints_the_recipe_once_quietly(tmp_path, fixtures_root):
    gta_and_cityscapes(tmp_path / "data", fixtures_root)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "gta_to_cityscapes.py"), "--data-root",
         str(tmp_path / "data"), "--method", "dacs", "--devices", "2", "--accelerator", "cpu",
         "--max-steps", "2", "--from-scratch", "--num-workers", "0", "--encoder", "resnet18",
         "--eval-size", "64", "128", "--output", str(tmp_path / "out"), *_SMALL],
        capture_output=True, text=True, cwd=tmp_path, timeout=500,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # the recipe once (rank 0), with its scaling note
    assert out.count("# DACS (Tranheden et al.") == 1, out[:3000]
    assert out.count("the same run: lightning-uda fit") == 1
    assert "1 + 1 per device × 2 devices" in out
    # no advertising, no per-rank seed line, nothing the library's own code warns about
    assert "💡" not in out and "[rank: 1]" not in out
    lines = out.replace("\r", "\n").splitlines()
    ours = [ln for ln in lines if "Warning" in ln and "lightning_uda" in ln]
    assert ours == [], ours
    # Lightning's advice to sync the validation metrics (the metrics are synchronised: issue 20)
    assert "sync_dist=True" not in out, [ln for ln in lines if "sync_dist" in ln][:3]
    for hidden in ("module(s) in eval mode", "smaller than the logging interval", "LeafSpec"):
        assert hidden not in out, hidden
    # the final validation (step 2 < the recipe's interval) and its scored checkpoint
    final = [ln for ln in lines if ln.startswith("validation at step 2/2: val/mIoU ")]
    assert len(final) == 1, out[-3000:]
    checkpoints = tmp_path / "out" / "gta52cityscapes-dacs" / "checkpoints"
    assert [p.name for p in checkpoints.glob("step2-entropy*-miou*.ckpt")]
