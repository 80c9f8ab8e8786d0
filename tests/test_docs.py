"""The code in docs/extending.md runs as written, from a file outside the package, and changes
DACS' behaviour as documented."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.methods import cpu_trainer, tiny_module_kwargs, toy_datamodule

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _load_variant(tmp_path: Path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/extending.md should hold one python block"
    assert len(blocks[0].strip().splitlines()) <= 35  # "a variant in 30 lines"
    path = tmp_path / "user_project" / "confident_dacs.py"
    path.parent.mkdir()
    path.write_text(blocks[0])
    spec = importlib.util.spec_from_file_location("confident_dacs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["confident_dacs"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.fit
def test_the_documented_variant_masks_unconfident_pseudo_labels(tmp_path):
    variant = _load_variant(tmp_path)
    torch.manual_seed(0)
    module = variant.ConfidentDACS(**tiny_module_kwargs(), min_confidence=0.5)
    fractions = variant.TrainedFraction()
    trainer = cpu_trainer(tmp_path, max_steps=3, callbacks=[fractions])
    trainer.fit(module, datamodule=toy_datamodule())
    assert len(fractions.fractions) == 3 and all(0 <= f <= 1 for f in fractions.fractions)
    assert module.last_mix["image"].shape == (4, 3, 16, 16)

    # against the teacher's softmax computed here: weight 0 exactly where confidence < 0.5,
    # DACS' own weights elsewhere (fresh modules with the trained teacher, outside fit;
    # eval-mode teacher BatchNorm so that the teacher's forward here is the same function)
    images = torch.randn(4, 3, 16, 16) * 3
    ours = variant.ConfidentDACS(**tiny_module_kwargs(), min_confidence=0.5, teacher_bn="eval")
    plain = variant.DACSModule(**tiny_module_kwargs(), teacher_bn="eval")
    for copy in (ours, plain):
        copy.teacher.load_state_dict(module.teacher.state_dict())
    labels, weights = ours.pseudo_label(images)
    plain_labels, plain_weights = plain.pseudo_label(images)
    with torch.no_grad():
        confidence = module.teacher.eval()(images).softmax(dim=1).amax(dim=1)
    unsure = confidence < 0.5
    assert unsure.any() and (~unsure).any()  # the case distinguishes the two
    assert torch.equal(labels, plain_labels)
    assert torch.all(weights[unsure] == 0)
    assert torch.equal(weights[~unsure], plain_weights[~unsure])
