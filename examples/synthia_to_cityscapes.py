"""SYNTHIA-RAND-CITYSCAPES → Cityscapes (mIoU over 16 classes, mIoU13 reported too).

    python examples/synthia_to_cityscapes.py --method dacs --devices 4 --print-recipe
    python examples/synthia_to_cityscapes.py --data-root /data --method dacs --devices 4 \\
        --checkpoint pretrained/resnet101COCO-41f33a49.pth

A front over the recipe layers in ``examples/recipes/`` (``base.yaml``,
``data/synthia_cityscapes.yaml``, ``methods/<method>.yaml``), as ``gta_to_cityscapes.py``.
Expects ``/data/synthia/{RGB,GT/LABELS}`` and ``/data/cityscapes``. The model predicts the 19
train ids; the metrics average the evaluated subsets.
"""

from __future__ import annotations

from _common import parse_args, run

if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]), source="synthia")
