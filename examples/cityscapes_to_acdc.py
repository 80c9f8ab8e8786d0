"""Cityscapes → ACDC (fog, night, rain, snow) with DAFormer, HRDA and MIC, as MIC's settings.

    python examples/cityscapes_to_acdc.py --method mic_hrda --print-recipe
    python examples/cityscapes_to_acdc.py --data-root /data --method mic_hrda --logger wandb

A front over the recipe layers in ``examples/recipes/`` (``base.yaml``,
``data/cityscapes_acdc.yaml``, ``methods/<method>.yaml`` and the adjustments
``data/cityscapes_acdc.<method>.yaml``); ``--print-recipe`` prints the resolved config, the
equivalent ``lightning-uda fit`` command and the published figures. Expects
``/data/cityscapes/{leftImg8bit,gtFine}`` and ``/data/acdc/{rgb_anon,gt}``; the initial weights
are ``pretrained/mit_b5.pth`` (``--checkpoint`` for another place).

Published Cityscapes → ACDC test mIoU (19 classes, from the benchmark server): MIC (HRDA) 70.4,
HRDA 68.0, DAFormer 55.4 (MIC paper, Table 2), Refign-HRDA 72.1. The run validates on ACDC val
(406 frames, all four conditions); the test score comes from submitting the test predictions
(train-id PNGs, ``BenchmarkPredictionWriter(benchmark="acdc")``).
"""

from __future__ import annotations

from _common import parse_args, run

#: The recipes MIC's code runs for this benchmark (DAFormer-resolution ones and HRDA's).
METHODS = ("daformer", "mic", "hrda", "mic_hrda")
PUBLISHED = (
    "# published Cityscapes → ACDC (test): MIC (HRDA) 70.4, HRDA 68.0, DAFormer 55.4; "
    "Refign-HRDA 72.1"
)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, print the published figures with ``--print-recipe``, run the recipe."""
    args = parse_args(__doc__.splitlines()[0], argv, methods=METHODS)
    if args.print_recipe:
        print(PUBLISHED, flush=True)
    run(args, source="cityscapes", target="acdc")


if __name__ == "__main__":
    main()
