"""GTA5 → Cityscapes with the papers' recipes (DeepLabV2-ResNet101, 19 classes).

    python examples/gta_to_cityscapes.py --method dacs --devices 4 --print-recipe
    python examples/gta_to_cityscapes.py --data-root /data --method dacs --devices 4 \\
        --checkpoint pretrained/resnet101COCO-41f33a49.pth --logger wandb

Expects ``/data/gta5/{images,labels}`` and ``/data/cityscapes/{leftImg8bit,gtFine}``. Each method
runs its paper's recipe (``--print-recipe`` shows it, resolved for ``--devices``); the papers'
initial weights are local files passed with ``--checkpoint`` (DACS/ClassMix: the COCO
``resnet101COCO-41f33a49.pth``; source-only, MinEnt, AdvEnt, MCC: the ImageNet
``DeepLab_resnet_pretrained_imagenet.pth``). Published GTA5→Cityscapes mIoU, each under its own
recipe and evaluation: AdvEnt's source-only baseline 36.6 (whole frames, ImageNet init), MinEnt
42.3, AdvEnt 43.8, DACS 52.1 (DACS' 1024×512-label evaluation). The README has the recipe-vs-paper
tables.
"""

from __future__ import annotations

from _common import parse_args, run

from lightning_uda.data import GTA5

if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    run(
        args,
        source_factory=lambda root, **kwargs: GTA5(root / "gta5", **kwargs),
        source_name="gta5",
    )
