"""Load the scripts of ``examples/`` as modules, and lay out tiny GTA5 + Cityscapes folders."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: The one Cityscapes frame of ``tests/fixtures/cityscapes_mini``.
FRAME = "frankfurt_000000_000294"


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as module ``name`` (its sibling files importable)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def gta_and_cityscapes(root: Path, fixtures: Path) -> None:
    """``root/cityscapes`` (2 train, 2 val frames) and ``root/gta5`` (2 images) made of the
    fixture frame, in the folder layouts of the real data sets."""
    mini = fixtures / "cityscapes_mini"
    city = root / "cityscapes"
    for split in ("train", "val"):
        for kind, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
            folder = city / kind / split / "frankfurt"
            folder.mkdir(parents=True)
            for i in range(2):
                shutil.copy(
                    mini / kind / "val" / "frankfurt" / f"{FRAME}_{suffix}.png",
                    folder / f"frankfurt_000000_00000{i}_{suffix}.png",
                )
    ids = np.array(Image.open(mini / "gtFine/val/frankfurt" / f"{FRAME}_gtFine_labelIds.png"))
    (root / "gta5" / "images").mkdir(parents=True)
    (root / "gta5" / "labels").mkdir()
    for i in range(2):
        shutil.copy(
            mini / "leftImg8bit/val/frankfurt" / f"{FRAME}_leftImg8bit.png",
            root / "gta5" / "images" / f"0000{i}.png",
        )
        # a paletted PNG whose indices are the ids (saved without a palette, Pillow would
        # rewrite the indices: the label check caught exactly that here)
        label = Image.fromarray(ids)
        label.putpalette([(v * 37) % 256 for v in range(768)])
        label.save(root / "gta5" / "labels" / f"0000{i}.png")
