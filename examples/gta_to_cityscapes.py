"""GTA5 → Cityscapes with the papers' recipes (19 classes).

    python examples/gta_to_cityscapes.py --method dacs --devices 4 --print-recipe
    python examples/gta_to_cityscapes.py --data-root /data --method dacs --devices 4 \\
        --checkpoint pretrained/resnet101COCO-41f33a49.pth --logger wandb

A front over the recipe layers in ``examples/recipes/`` (``base.yaml``,
``data/gta5_cityscapes.yaml``, ``methods/<method>.yaml``): the flags become overrides of those
files' keys and the run is ``lightning-uda fit`` on them (``--print-recipe`` prints the resolved
config and the equivalent command). Expects ``/data/gta5/{images,labels}`` and
``/data/cityscapes/{leftImg8bit,gtFine}``; the papers' initial weights are local files, by
default ``pretrained/<file>`` as each method layer names it (``--checkpoint`` for another place).
The README has the recipe-vs-paper tables; docs/recipes.md the layers.
"""

from __future__ import annotations

from _common import parse_args, run

if __name__ == "__main__":
    run(parse_args(__doc__.splitlines()[0]), source="gta5")
