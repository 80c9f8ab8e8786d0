"""Domain generalisation: train on GTA5 only, evaluate unchanged on Cityscapes, BDD100K, Mapillary.

    python examples/gta_to_many.py --print-recipe
    python examples/gta_to_many.py --data-root /data --logger wandb

A front over ``examples/recipes/base.yaml``, ``data/gta5_dg.yaml`` and
``dg/source_only_daformer.yaml``: SourceOnly on MiT-B5 + DAFormer head with DAFormer's
augmentations and schedule, no target data, evaluated on three targets each on its own
(``val/cityscapes/mIoU``, ``val/bdd100k/mIoU``, ``val/mapillary/mIoU``; ``val/mIoU`` is
Cityscapes'). Expects ``/data/{gta5,cityscapes,bdd100k,mapillary}`` (see the data layer).

The domain-generalisation results published with VFM-UDA++ use DINOv2 ViTs (and also report
WildDash2, not included here); this recipe is the MiT-B5 source-only reference point.
"""

from __future__ import annotations

from _common import parse_args, run

METHODS = ("source_only_daformer",)

if __name__ == "__main__":
    run(
        parse_args(__doc__.splitlines()[0], methods=METHODS),
        source="gta5",
        target="dg",
        method_dir="dg",
    )
