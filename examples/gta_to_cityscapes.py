"""GTA5 → Cityscapes with the papers' recipes (DeepLabV2-ResNet101, 19 classes).

    python examples/gta_to_cityscapes.py --data-root /data --method dacs --devices 4 --logger wandb

Expects ``/data/gta5/{images,labels}`` and ``/data/cityscapes/{leftImg8bit,gtFine}``. Published
mIoU for reference: source-only ≈36.6, MinEnt 42.3, AdvEnt 43.8, DACS 52.1.
"""

from __future__ import annotations

from _common import parse_args, run

from lightning_uda.data import GTA5

if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    run(
        args,
        source_factory=lambda root, transform: GTA5(root / "gta5", transform=transform),
        source_preset="gta5_train",
        source_name="gta5",
    )
