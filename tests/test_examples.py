"""The shipped examples import and their custom method trains."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from .methods.helpers import cpu_trainer, tiny_module_kwargs, toy_datamodule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_custom_method_zeroes_border_weights_and_trains(tmp_path):
    example = _load("custom_method")
    module = example.BorderMaskedDACS(border=2, **tiny_module_kwargs())
    images = torch.randn(2, 3, 16, 16)
    _, weights = module.pseudo_label(images)
    assert torch.all(weights[:, :2] == 0) and torch.all(weights[:, :, -2:] == 0)
    # a per-batch mask: the same classes are pasted into every image
    labels = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    mask = module.mix_mask(labels)
    chosen = [set(labels[b][mask[b]].tolist()) for b in range(2)]
    assert chosen[0] == chosen[1] and len(chosen[0]) == 2  # ceil(3/2) of the batch's classes
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=toy_datamodule())
    assert torch.isfinite(trainer.callback_metrics["train/loss_mixed"])


def test_gta_and_synthia_examples_import():
    for name in ("gta_to_cityscapes", "synthia_to_cityscapes"):
        assert hasattr(_load(name), "run")


def test_every_paper_recipe_builds_its_module():
    common = _load("_common")
    for name, (module_cls, extra, dilations, batch_size, _) in common.METHODS.items():
        recipe = {**common.SGD_RECIPE, "encoder": "resnet18"}  # resnet101 is slow to build
        module = module_cls(
            num_classes=19, model_kwargs={"dilations": dilations}, **recipe, **extra
        )
        assert module.model.classifier is not None, name
        assert batch_size in (1, 2)
