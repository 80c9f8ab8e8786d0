"""SYNTHIA-RAND-CITYSCAPES → Cityscapes (mIoU over 16 classes, mIoU13 reported too).

    python examples/synthia_to_cityscapes.py --method dacs --devices 4 --print-recipe
    python examples/synthia_to_cityscapes.py --data-root /data --method dacs --devices 4 \\
        --checkpoint pretrained/resnet101COCO-41f33a49.pth

Expects ``/data/synthia/{RGB,GT/LABELS}`` and ``/data/cityscapes``. Published DACS: mIoU16 48.3,
mIoU13 54.8 (DACS' 1024×512-label evaluation). The model predicts the 19 train ids; the metrics
average the evaluated subsets. The README has the recipe-vs-paper tables.
"""

from __future__ import annotations

from _common import parse_args, run

from lightning_uda.data import SYNTHIA

if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    run(
        args,
        source_factory=lambda root, **kwargs: SYNTHIA(root / "synthia", **kwargs),
        source_name="synthia",
    )
